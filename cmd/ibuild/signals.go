package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// echoWindow is how soon after the first signal another one counts as
// the same: run by an unprivileged user, ibuild is two processes (see
// enterUserNamespace), and one Ctrl-C reaches the inner one twice, from
// the terminal and forwarded by the outer one.
const echoWindow = 250 * time.Millisecond

// interrupted is the cause of the command's context when a signal
// cancelled it.
type interrupted struct{ sig syscall.Signal }

func (i *interrupted) Error() string { return "interrupted by " + unix.SignalName(i.sig) }

// exitCode is the status a command stopped by sig exits with, as a shell
// reports a process killed by it.
func (i *interrupted) exitCode() int { return 128 + int(i.sig) }

// stopOnSignals returns a context the first signal received on sigs
// cancels, with an *interrupted cause: every phase of a command watches
// it, stops, removes its temporary files and returns, and the command
// exits with 128+signal. A second signal (echoWindow or more later) does
// not wait for that: it calls exit(128+signal) at once, as docker and
// buildah do. What is on
// disk stays consistent either way (the store writes every file under a
// temporary name and renames it into place, the kernel drops the store
// lock, and RUN steps die with their sandbox); a forced exit leaves its
// temporary files in ROOT/tmp for `ibuild prune`.
//
// Messages go to w without ever blocking the handling of signals: with
// standard error a pipe nobody reads, the second signal must still end
// the process.
func stopOnSignals(parent context.Context, sigs <-chan os.Signal, w io.Writer, exit func(int)) context.Context {
	ctx, cancel := context.WithCancelCause(parent)
	go func() {
		s, ok := <-sigs
		if !ok {
			return
		}
		first := &interrupted{sig: toSyscall(s)}
		say(w, fmt.Sprintf("ibuild: %s received, stopping (send it again to exit at once)\n", unix.SignalName(first.sig)))
		cancel(first)
		echo := time.Now().Add(echoWindow)
		for {
			if s, ok = <-sigs; !ok {
				return
			}
			if !time.Now().Before(echo) {
				break
			}
		}
		again := &interrupted{sig: toSyscall(s)}
		say(w, fmt.Sprintf("ibuild: %s received again, exiting now; temporary files left in the store are removed by ibuild prune\n", unix.SignalName(again.sig)))
		exit(again.exitCode())
	}()
	return ctx
}

func toSyscall(s os.Signal) syscall.Signal {
	if n, ok := s.(syscall.Signal); ok {
		return n
	}
	return syscall.SIGINT
}

// say writes msg to w, waiting at most 100ms for the write.
func say(w io.Writer, msg string) {
	done := make(chan struct{})
	go func() {
		io.WriteString(w, msg)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(100 * time.Millisecond):
	}
}

// Package sandbox runs one RUN step: a process in new mount, pid, uts and
// ipc namespaces (and a network namespace with only lo for --network=none)
// whose root is an overlay of the image's layers (or a directory holding
// the unpacked root file system, changed in place), entered with
// pivot_root and the old root detached, so no path leads back to the
// host's files. The root is mounted nodev. The step gets /proc with runc's
// masked and read-only paths, a minimal /dev, a read-only /sys, and
// /etc/hosts, /etc/resolv.conf and /etc/hostname written to a private
// tmpfs. The overlay's upper directory is what the step changed.
//
// The step holds docker's default capabilities (DefaultCapabilities, or
// the set the caller computed with Capabilities) in its bounding,
// permitted and effective sets, none inheritable or ambient, and runs
// under docker's default seccomp profile for that set.
//
// RUN --mount mounts (binds, read-only or throwaway overlays, tmpfs, and
// files such as secrets written to a private tmpfs) are made in the same
// mount namespace, nodev, so they never reach the upper directory. With
// the "chroot" isolation only the mount namespace is new (the root is
// still entered with pivot_root). With the "none" isolation nothing is
// new and nothing is mounted: the step runs chrooted into Merged, a plain
// directory the caller unpacked, which needs only CAP_SYS_CHROOT (for
// unprivileged CI pods that allow neither user namespaces nor mounts);
// that is no security boundary.
//
// The step's processes are the children of a re-executed ibuild (pid 1 of
// the new pid namespace, undumpable so the step cannot open its /proc
// entries); when it exits, the kernel kills whatever the step left
// running and tears down every mount with the mount namespace, so a
// killed build leaves no process and no mount behind.
//
// It needs to run as root: the real root, or the root of a user namespace
// the caller entered (ibuild's command re-executes itself into one, as
// buildah does). In a user namespace the overlays get the userxattr option
// and remounts keep the flags the kernel locked.
package sandbox

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"go.podman.io/storage/pkg/reexec"
)

// reexecName is the name the sandbox's child registers under.
const reexecName = "ibuild-sandbox"

func init() {
	reexec.Register(reexecName, childMain)
}

// Spec describes one step.
type Spec struct {
	// Lowers are the overlay lower directories, bottom to top (at least
	// one; an empty directory for an empty image).
	Lowers []string `json:"lowers"`
	// Upper and Work are the overlay's upper and work directories; Merged
	// is where the overlay is mounted. All three exist and are empty.
	// When Lowers, Upper and Work are all empty, no overlay is mounted:
	// Merged holds the root file system itself and the step changes it in
	// place (the vfs fallback, where overlay cannot be mounted); the
	// mounts are made as usual, on mount points the caller should have
	// made, since whatever the sandbox creates stays in Merged.
	Upper  string `json:"upper"`
	Work   string `json:"work"`
	Merged string `json:"merged"`
	// Args is the command; Args[0] is looked up in the image's PATH.
	Args []string `json:"args"`
	Env  []string `json:"env"`
	// Dir is the working directory in the image; created when missing.
	Dir    string   `json:"dir"`
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups"`
	// Stdin is the step's standard input; empty means /dev/null.
	Stdin    string `json:"stdin"`
	Hostname string `json:"hostname"`
	// Files are generated files (/etc/hosts, /etc/resolv.conf,
	// /etc/hostname): image path -> content. They are written to a tmpfs
	// the sandbox mounts on FilesDir (an empty directory) in its own
	// mount namespace and bound over the image's paths.
	Files    map[string]string `json:"files"`
	FilesDir string            `json:"filesDir"`
	// Capabilities are the step's capabilities ("CAP_CHOWN", ...); nil
	// means DefaultCapabilities. Capabilities that the process itself
	// does not hold in its bounding set are left out.
	Capabilities []string `json:"capabilities"`
	// Insecure is RUN --security=insecure, granted: the step holds every
	// capability the process has, with no seccomp filter and no masked
	// or read-only paths (namespaces and pivot_root stay).
	Insecure bool `json:"insecure,omitempty"`
	// Network is NetworkHost ("" means this) or NetworkNone.
	Network Network `json:"network"`
	// Isolation is IsolationAuto, IsolationUserns or "" (new mount, pid,
	// uts and ipc namespaces), IsolationChroot (a new mount namespace
	// only: the step shares the host's pids, host name and IPC, and what
	// it leaves running is not killed) or IsolationNone (no namespace, no
	// mount: a chroot into Merged, which holds the root file system
	// itself; Lowers, Upper, Work, Files and Mounts must be empty, Network
	// host).
	Isolation Isolation `json:"isolation"`
	// Mounts are RUN --mount mounts, made in order after the image's
	// special mounts. Their targets are in-image paths whose symlinks the
	// caller resolved.
	Mounts []Mount `json:"mounts"`

	// For tests: mount overlays with mount(2) as before Linux 6.8, and
	// enter the root with the MS_MOVE fallback instead of pivot_root.
	legacyOverlay bool
	moveRoot      bool
}

// wireSpec is a Spec as sent to the sandbox's process, test switches
// included.
type wireSpec struct {
	Spec
	LegacyOverlay bool `json:"legacyOverlay,omitempty"`
	MoveRoot      bool `json:"moveRoot,omitempty"`
}

func (w wireSpec) spec() Spec {
	s := w.Spec
	s.legacyOverlay, s.moveRoot = w.LegacyOverlay, w.MoveRoot
	return s
}

// Mount types.
const (
	// MountBind binds the host path Source at Target.
	MountBind = "bind"
	// MountOverlay mounts an overlay of Lowers (with Upper and Work when
	// writable, discarded by the caller) on the host directory Stage, then
	// binds Stage/Sub at Target.
	MountOverlay = "overlay"
	// MountTmpfs mounts an empty tmpfs at Target.
	MountTmpfs = "tmpfs"
	// MountFile writes Data to a file in a tmpfs mounted on the host
	// directory Stage and binds it read-only at Target: the bytes never
	// reach a disk.
	MountFile = "file"
)

// Mount is one RUN --mount.
type Mount struct {
	Type   string `json:"type"`
	Target string `json:"target"`
	// File makes the mount point a file (else a directory).
	File     bool     `json:"file,omitempty"`
	ReadOnly bool     `json:"readonly,omitempty"`
	Source   string   `json:"source,omitempty"`
	Lowers   []string `json:"lowers,omitempty"`
	Upper    string   `json:"upper,omitempty"`
	Work     string   `json:"work,omitempty"`
	Stage    string   `json:"stage,omitempty"`
	Sub      string   `json:"sub,omitempty"`
	// Size bounds a tmpfs, in bytes; 0 is the kernel's default.
	Size int64 `json:"size,omitempty"`
	// Data, Mode, UID and GID describe a MountFile's file.
	Data []byte `json:"data,omitempty"`
	Mode uint32 `json:"mode,omitempty"`
	UID  uint32 `json:"uid,omitempty"`
	GID  uint32 `json:"gid,omitempty"`
}

// ExitError is a step that ran and exited non-zero.
type ExitError struct {
	Code int
	// Tail holds the last lines the step printed.
	Tail []string
}

func (e *ExitError) Error() string {
	msg := fmt.Sprintf("exit code %d", e.Code)
	if len(e.Tail) > 0 {
		msg += "; last output:\n  " + strings.Join(e.Tail, "\n  ")
	}
	return msg
}

// tailLines is how many output lines an ExitError keeps.
const tailLines = 10

// ErrNeedsUserNamespace is Supported's error for a process that is not
// root: it must enter a user namespace first (the builder's
// MaybeReexecUsingUserNamespace does).
var ErrNeedsUserNamespace = errors.New("RUN as an unprivileged user needs a user namespace: enter one before building (builder.MaybeReexecUsingUserNamespace enters one when user namespaces are enabled, newuidmap and newgidmap are installed and /etc/subuid and /etc/subgid give the user a range; with IsolationUserns even with a single id mapped), or run as root")

// Supported reports why RUN cannot work here, or nil.
func Supported() error {
	if os.Geteuid() != 0 {
		return ErrNeedsUserNamespace
	}
	return nil
}

// Run runs the step and streams each line it prints to output. A non-zero
// exit is an *ExitError. Cancelling ctx kills the step and everything it
// started.
func Run(ctx context.Context, spec Spec, output func(line string)) error {
	if err := Supported(); err != nil {
		return err
	}
	if len(spec.Args) == 0 {
		return errors.New("empty command")
	}
	if spec.Isolation == IsolationNone {
		if len(spec.Lowers) > 0 || len(spec.Files) > 0 || len(spec.Mounts) > 0 || spec.Network == NetworkNone {
			return errors.New("sandbox: isolation none makes no mount and no namespace")
		}
	} else if len(spec.Lowers) == 0 && (spec.Upper != "" || spec.Work != "") {
		return errors.New("sandbox: no lower directory")
	} else if len(spec.Lowers) == 0 && spec.Merged == "" {
		return errors.New("sandbox: no root directory")
	} else if len(spec.Files) > 0 && spec.FilesDir == "" {
		return errors.New("sandbox: generated files need FilesDir")
	}
	data, err := json.Marshal(wireSpec{Spec: spec, LegacyOverlay: spec.legacyOverlay, MoveRoot: spec.moveRoot})
	if err != nil {
		return err
	}
	specR, specW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer specR.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		specW.Close()
		return err
	}
	defer outR.Close()
	// The child reports a failure to set the sandbox up on its own pipe, so
	// it is never mistaken for the step's output or exit code.
	errR, errW, err := os.Pipe()
	if err != nil {
		specW.Close()
		outW.Close()
		return err
	}
	defer errR.Close()

	cmd := reexec.Command(reexecName)
	cmd.ExtraFiles = []*os.File{specR, errW}
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = outW, outW
	flags := syscall.CLONE_NEWNS
	switch {
	case spec.Isolation.namespaces():
		flags |= syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC
	case spec.Isolation == IsolationChroot:
	case spec.Isolation == IsolationNone:
		flags = 0
	default:
		return fmt.Errorf("sandbox: unknown isolation %q", spec.Isolation)
	}
	switch spec.Network {
	case "", NetworkHost:
	case NetworkNone:
		flags |= syscall.CLONE_NEWNET
	default:
		return fmt.Errorf("sandbox: unknown network %q", spec.Network)
	}
	// The step's processes are the sandbox's process group: without a
	// pid namespace (chroot, none), killing the sandbox alone would leave
	// them running, holding the output pipe open.
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: uintptr(flags), Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		outW.Close()
		specW.Close()
		errW.Close()
		return fmt.Errorf("start sandbox: %w", err)
	}
	outW.Close()
	errW.Close()
	go func() {
		specW.Write(data)
		specW.Close()
	}()
	stop := context.AfterFunc(ctx, func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	defer stop()

	var tail []string
	sc := bufio.NewScanner(outR)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		output(line)
		tail = append(tail, line)
		if len(tail) > tailLines {
			tail = tail[1:]
		}
	}
	// Drain what a too-long line left, so the child never blocks.
	io.Copy(io.Discard, outR)
	err = cmd.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if setup, _ := io.ReadAll(io.LimitReader(errR, 64<<10)); len(setup) > 0 {
		return fmt.Errorf("sandbox: %s", strings.TrimSpace(string(setup)))
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code := ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		return &ExitError{Code: code, Tail: tail}
	}
	return err
}

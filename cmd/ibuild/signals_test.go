package main

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// lockedBuilder collects what stopOnSignals says.
type lockedBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuilder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuilder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestStopOnSignals(t *testing.T) {
	tests := []struct {
		name    string
		signals []os.Signal
		// blocked: writes to standard error never return.
		blocked  bool
		wantExit int // 0: exit is not called; -1: the signals come at once, and exit is not called
	}{
		{"one signal cancels", []os.Signal{syscall.SIGTERM}, false, 0},
		{"one signal delivered twice at once cancels", []os.Signal{syscall.SIGINT, syscall.SIGINT}, false, -1},
		{"second signal exits", []os.Signal{syscall.SIGINT, syscall.SIGINT}, false, 130},
		{"second signal exits with its own status", []os.Signal{syscall.SIGINT, syscall.SIGTERM}, false, 143},
		{"second signal exits with stderr blocked", []os.Signal{syscall.SIGTERM, syscall.SIGTERM}, true, 143},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sigs := make(chan os.Signal, 2)
			exited := make(chan int, 1)
			out := &lockedBuilder{}
			var w io.Writer = out
			if tc.blocked {
				w = blockingWriter{}
			}
			ctx := stopOnSignals(context.Background(), sigs, w, func(code int) { exited <- code })
			sigs <- tc.signals[0]
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("the first signal did not cancel the context")
			}
			var in *interrupted
			if !errors.As(context.Cause(ctx), &in) || in.sig != tc.signals[0] {
				t.Fatalf("cause %v, want interrupted by %v", context.Cause(ctx), tc.signals[0])
			}
			if got := in.Error(); !strings.Contains(got, "SIG") {
				t.Errorf("cause reads %q", got)
			}
			if len(tc.signals) > 1 {
				if tc.wantExit > 0 {
					time.Sleep(echoWindow)
				}
				sigs <- tc.signals[1]
			}
			select {
			case code := <-exited:
				if code != tc.wantExit {
					t.Fatalf("exit(%d), want exit(%d)", code, tc.wantExit)
				}
			case <-time.After(2 * echoWindow):
				if tc.wantExit > 0 {
					t.Fatalf("no exit after the second signal")
				}
			}
			if !tc.blocked && !strings.Contains(out.String(), "send it again to exit at once") {
				t.Errorf("said %q", out.String())
			}
		})
	}
}

// blockingWriter is standard error piped to a reader that never reads.
type blockingWriter struct{}

func (blockingWriter) Write([]byte) (int, error) { select {} }

package builder

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ibuild/ibuild/builder/dockerfile"
	"github.com/ibuild/ibuild/builder/internal/copier"
)

// stopsOnCancel runs f with a context cancelled 100ms later and expects f
// to return the cancellation within 10s (it never returns by itself).
func stopsOnCancel(t *testing.T, what string, f func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	time.AfterFunc(100*time.Millisecond, cancel)
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("%s returned %v, want context.Canceled", what, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still runs 10s after its context was cancelled", what)
	}
}

// TestReadDockerfileNeverBlocks: Dockerfiles that never end or never come
// (a device of endless zeros, a FIFO nobody writes to, a FIFO whose
// writer stalls) are refused at once, without reading, rather than
// waiting for a cancellation.
func TestReadDockerfileNeverBlocks(t *testing.T) {
	dir := t.TempDir()
	fifo := func(name string) string {
		p := filepath.Join(dir, name)
		if err := unix.Mkfifo(p, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	stalled := fifo("stalled")
	go func() {
		f, err := os.OpenFile(stalled, os.O_WRONLY, 0)
		if err != nil {
			return
		}
		defer f.Close()
		f.WriteString("FROM scratch\n")
		time.Sleep(20 * time.Second)
	}()
	for _, tc := range []struct{ name, path string }{
		{"endless device", "/dev/zero"},
		{"FIFO without a writer", fifo("empty")},
		{"FIFO with a stalled writer", stalled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				_, _, err := readDockerfile(context.Background(), Options{ContextDir: dir, Dockerfile: tc.path})
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, dockerfile.ErrNotRegular) {
					t.Fatalf("reading %s: %v, want a refusal of a file that is not regular", tc.path, err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("reading %s blocks", tc.path)
			}
		})
	}
	// Unblock the writer of the stalled FIFO, and the open of one nobody read.
	for _, name := range []string{"empty", "stalled"} {
		if f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDONLY|unix.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
	}
}

// TestCopyStopsOnCancel copies an endless source into a layer: the copy
// must stop when the build is cancelled.
func TestCopyStopsOnCancel(t *testing.T) {
	zero, err := os.Open("/dev/zero")
	if err != nil {
		t.Fatal(err)
	}
	defer zero.Close()
	l := copier.NewLayerDir(t.TempDir(), nil, time.Now())
	stopsOnCancel(t, "copying /dev/zero", func(ctx context.Context) error {
		return l.WriteFile(ctx, "/zero", zero, 0o644, copier.Owner{}, time.Now())
	})
}

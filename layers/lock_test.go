package layers

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// TestLockFile covers shared and exclusive locks, waiting and not, on a
// file and on a directory, and cancellation.
func TestLockFile(t *testing.T) {
	ctx := context.Background()
	for _, path := range []string{filepath.Join(t.TempDir(), "x.lock"), t.TempDir()} {
		unlock, ok, err := TryLockFile(path, true)
		if err != nil || !ok {
			t.Fatalf("%s: first exclusive lock: %v", path, err)
		}
		if u, ok, err := TryLockFile(path, true); err != nil || ok || u != nil {
			t.Errorf("%s: a second exclusive lock was granted (%v)", path, err)
		}
		if _, ok, _ := TryLockFile(path, false); ok {
			t.Errorf("%s: a shared lock was granted while an exclusive one is held", path)
		}
		short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		if _, err := LockFile(short, path, false); err == nil {
			t.Errorf("%s: a waiting shared lock was granted while an exclusive one is held", path)
		}
		cancel()
		// A waiter gets the lock once it is released.
		done := make(chan error, 1)
		go func() {
			u, err := LockFile(ctx, path, true)
			if err == nil {
				u()
			}
			done <- err
		}()
		time.Sleep(20 * time.Millisecond)
		unlock()
		unlock() // a second call does nothing
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the waiter did not get the released lock")
		}
		u1, err := LockFile(ctx, path, false)
		if err != nil {
			t.Fatal(err)
		}
		u2, ok, err := TryLockFile(path, false)
		if err != nil || !ok {
			t.Fatalf("%s: two shared locks: %v", path, err)
		}
		u1()
		u2()
	}
	if _, err := LockFile(ctx, filepath.Join(t.TempDir(), "missing", "x.lock"), true); err == nil {
		t.Error("a lock in a missing directory was granted")
	}
}

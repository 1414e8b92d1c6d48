package layers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
)

// LockFile takes flock(2) on path, shared or exclusive, waiting until it
// is granted or ctx is done. path is created (mode 0600) when missing; an
// existing directory is locked as it is. Every call opens its own file
// description, so goroutines of one process exclude each other as
// processes do. It polls rather than blocks, so that ctx can cancel it.
// The returned function releases the lock and may be called more than
// once. Every lock of the store and of the builder is taken with it (or
// TryLockFile).
func LockFile(ctx context.Context, path string, exclusive bool) (unlock func(), err error) {
	f, err := openLockFile(path)
	if err != nil {
		return nil, err
	}
	delay := time.Millisecond
	for {
		held, err := flockNB(f, exclusive)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if !held {
			return closeOnce(f), nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// TryLockFile is LockFile without waiting: when another holder has a
// conflicting lock, it returns ok false and no unlock function.
func TryLockFile(path string, exclusive bool) (unlock func(), ok bool, err error) {
	f, err := openLockFile(path)
	if err != nil {
		return nil, false, err
	}
	held, err := flockNB(f, exclusive)
	if err != nil || held {
		f.Close()
		if err != nil {
			return nil, false, fmt.Errorf("lock %s: %w", path, err)
		}
		return nil, false, nil
	}
	return closeOnce(f), true, nil
}

// openLockFile opens path for flock, creating a missing file.
func openLockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
	if errors.Is(err, syscall.EISDIR) {
		f, err = os.Open(path)
	}
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	return f, nil
}

// flockNB tries once to lock f, retrying only an interrupted call; held
// reports that another holder has a conflicting lock.
func flockNB(f *os.File, exclusive bool) (held bool, err error) {
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		switch {
		case err == nil:
			return false, nil
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EWOULDBLOCK):
			return true, nil
		default:
			return false, err
		}
	}
}

// closeOnce returns a function that closes f (releasing its lock) the
// first time it is called.
func closeOnce(f *os.File) func() {
	var once sync.Once
	return func() { once.Do(func() { f.Close() }) }
}

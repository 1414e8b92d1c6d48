package layers

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ibuild/ibuild/layers/layertest"
)

// A blob larger than several writeback chunks, written in pieces that do
// not line up with them, is stored whole and under its digest.
func TestBlobWriterLargeBlob(t *testing.T) {
	s := openTestStore(t)
	data := make([]byte, 3*writebackChunk+12345)
	rand.New(rand.NewSource(1)).Read(data)
	w, err := s.NewWriter(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for rest := data; len(rest) > 0; {
		n := min(len(rest), 1<<20+7)
		if _, err := w.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	want := sha256Hash(data)
	d, size, err := w.Commit(&want)
	if err != nil {
		t.Fatal(err)
	}
	if d != want || size != int64(len(data)) {
		t.Errorf("committed %s (%d bytes), want %s (%d bytes)", d, size, want, len(data))
	}
	got, err := s.ReadAll(d)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Error("stored blob differs from what was written")
	}
}

// recordingSink is a BlobSink that keeps what it is given.
type recordingSink struct {
	mu       sync.Mutex
	buf      bytes.Buffer
	closes   int
	closedAs Descriptor
	closeErr error
}

func (r *recordingSink) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.Write(p)
}

func (r *recordingSink) Close(d Descriptor, err error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closes++
	r.closedAs, r.closeErr = d, err
	return nil
}

// TestCommitDirToSink checks that CommitDirTo gives the sink the blob's
// bytes and closes it once: with the committed blob's descriptor, or with
// the error that ended the commit (and then nothing is stored).
func TestCommitDirToSink(t *testing.T) {
	dir := t.TempDir()
	genTree(t, dir, 12<<20, 3)
	for _, tc := range []struct {
		name    string
		opts    CommitOptions
		cancel  bool
		wantErr bool
	}{
		{name: "gzip", opts: CommitOptions{Compression: Gzip}},
		{name: "zstd", opts: CommitOptions{Compression: Zstd}},
		{name: "uncompressed", opts: CommitOptions{Compression: Uncompressed}},
		{name: "cancelled", opts: CommitOptions{Compression: Gzip}, cancel: true, wantErr: true},
		{name: "bad level", opts: CommitOptions{Compression: Gzip, Level: 42}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTestStore(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.cancel {
				cancel()
			}
			sink := &recordingSink{}
			d, err := s.CommitDirTo(ctx, dir, tc.opts, sink)
			if sink.closes != 1 {
				t.Fatalf("sink closed %d times, want once", sink.closes)
			}
			if tc.wantErr {
				if err == nil {
					t.Fatal("commit succeeded, want an error")
				}
				if sink.closeErr == nil {
					t.Error("sink closed without the commit's error")
				}
				if blobs, _ := s.List(); len(blobs) != 0 {
					t.Errorf("failed commit stored %v", blobs)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if sink.closeErr != nil || sink.closedAs != d {
					t.Errorf("sink closed with (%+v, %v), want (%+v, nil)", sink.closedAs, sink.closeErr, d)
				}
				blob, err := s.ReadAll(d.Digest)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(sink.buf.Bytes(), blob) {
					t.Errorf("sink got %d bytes, not the %d-byte blob", sink.buf.Len(), len(blob))
				}
			}
			if tmp, _ := os.ReadDir(filepath.Join(s.Dir(), "tmp")); len(tmp) != 0 {
				t.Errorf("temporary files left: %v", tmp)
			}
		})
	}
}

// residentPages counts the pages of the file at p that are in the page
// cache.
func residentPages(t *testing.T, p string) (resident, total int) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (len(m)+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatalf("mincore: %v", e)
	}
	for _, v := range vec {
		if v&1 != 0 {
			resident++
		}
	}
	return resident, len(vec)
}

// A blob written with DropBehind is stored whole but leaves none of its
// pages in the page cache; one written without keeps them.
func TestBlobWriterDropBehind(t *testing.T) {
	// A tmpfs's pages are its files: nothing to drop there. The store
	// goes under the package directory when the temporary one is one.
	base := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(base, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type == unix.TMPFS_MAGIC {
		d, err := os.MkdirTemp(".", "dropbehind-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		if err := unix.Statfs(d, &st); err != nil || st.Type == unix.TMPFS_MAGIC {
			layertest.SkipOrFail(t, "no directory off tmpfs to test dropping pages in (%v)", err)
		}
		base = d
	}
	data := make([]byte, 3*writebackChunk+4321)
	rand.New(rand.NewSource(2)).Read(data)
	for _, drop := range []bool{false, true} {
		t.Run(map[bool]string{false: "keep", true: "drop"}[drop], func(t *testing.T) {
			s, err := OpenBlobStore(filepath.Join(base, fmt.Sprint(drop)))
			if err != nil {
				t.Fatal(err)
			}
			w, err := s.NewWriter(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if drop {
				w.DropBehind()
			}
			for rest := data; len(rest) > 0; {
				n := min(len(rest), 1<<20+3)
				if _, err := w.Write(rest[:n]); err != nil {
					t.Fatal(err)
				}
				rest = rest[n:]
			}
			d, _, err := w.Commit(nil)
			if err != nil {
				t.Fatal(err)
			}
			resident, total := residentPages(t, s.Path(d))
			switch {
			case drop && resident != 0:
				t.Errorf("%d of %d pages still cached after DropBehind", resident, total)
			case !drop && resident < total/2:
				t.Errorf("only %d of %d pages cached without DropBehind", resident, total)
			}
			got, err := s.ReadAll(d)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Error("stored blob differs from what was written")
			}
		})
	}
}

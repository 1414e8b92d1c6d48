package layers

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"
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

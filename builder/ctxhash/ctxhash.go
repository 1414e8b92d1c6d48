// Package ctxhash digests the files of a build context for cache keys,
// remembering between builds what it hashed: an index maps each file's
// path to its metadata (device, inode, size, mtime, ctime, mode) and
// content digest, so a file whose metadata did not change is not read
// again. Files that must be read are hashed in parallel.
//
// A file modified twice within one tick of the file system's timestamp
// clock can keep the same metadata; like git's "racily clean" rule, an
// index entry is only trusted when the file's ctime is clearly older than
// the moment it was hashed, so such a file is hashed again.
package ctxhash

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// racyMargin is how much older than the hashing time a file's ctime must
// be for its index entry to be trusted: more than a timestamp tick of any
// kernel clock (jiffies are at most 10 ms).
const racyMargin = 20 * time.Millisecond

// magic starts an index file; a file with another start is ignored.
const magic = "ibuild-ctxhash-v1\n"

// maxEntries bounds an index: entries not seen by the latest build are
// dropped beyond it.
const maxEntries = 1 << 20

// Digest is a SHA-256 content digest.
type Digest [sha256.Size]byte

// File is one regular file to digest.
type File struct {
	// Rel is the file's path in the context, the index key.
	Rel string
	// Host is the path to read it from.
	Host string
	// Info is its Lstat result.
	Info fs.FileInfo
}

type entry struct {
	dev, ino, size       uint64
	mtime, ctime, hashed int64
	mode                 uint32
	digest               Digest
	seen                 bool
}

// Index is the digest index of one build context. It is safe for
// concurrent use.
type Index struct {
	// Jobs is how many files are hashed at once (default: the CPU count).
	Jobs int

	mu      sync.Mutex
	entries map[string]*entry
	dirty   bool
	// Hashed counts the files read since Load, for tests and progress.
	hashed int
}

// Load reads the index stored at path. A missing, truncated or foreign
// file gives an empty index: the worst outcome is hashing again.
func Load(path string) *Index {
	x := &Index{entries: map[string]*entry{}}
	b, err := os.ReadFile(path)
	if err != nil || !bytes.HasPrefix(b, []byte(magic)) {
		return x
	}
	if m, err := decode(b[len(magic):]); err == nil {
		x.entries = m
	}
	return x
}

// Hashed reports how many files were read (not answered from the index)
// since Load.
func (x *Index) Hashed() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.hashed
}

// Digests returns the content digest of each file, in order.
func (x *Index) Digests(ctx context.Context, files []File) ([]Digest, error) {
	out := make([]Digest, len(files))
	var todo []int
	x.mu.Lock()
	for i, f := range files {
		if e, ok := x.entries[f.Rel]; ok && e.matches(f.Info) {
			e.seen = true
			out[i] = e.digest
			continue
		}
		todo = append(todo, i)
	}
	x.mu.Unlock()
	if len(todo) == 0 {
		return out, nil
	}
	jobs := x.Jobs
	if jobs <= 0 {
		jobs = runtime.NumCPU()
	}
	jobs = min(jobs, len(todo))
	next := make(chan int)
	errs := make([]error, jobs)
	var wg sync.WaitGroup
	for w := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if errs[w] != nil {
					continue
				}
				e, err := hashFile(ctx, files[i])
				if err != nil {
					errs[w] = err
					continue
				}
				out[i] = e.digest
				x.mu.Lock()
				x.entries[files[i].Rel] = e
				x.dirty = true
				x.hashed++
				x.mu.Unlock()
			}
		}()
	}
feed:
	for _, i := range todo {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// hashFile reads f and returns its index entry, with f's metadata as it
// was before the read. It stops, with ctx's error, at the first 256 KiB
// block after ctx is done.
func hashFile(ctx context.Context, f File) (*entry, error) {
	hashed := time.Now().UnixNano()
	fh, err := os.Open(f.Host)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	h := sha256.New()
	buf := make([]byte, 256<<10)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n, err := fh.Read(buf)
		h.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", f.Rel, err)
		}
	}
	e := newEntry(f.Info)
	e.hashed = hashed
	e.seen = true
	h.Sum(e.digest[:0])
	return e, nil
}

func newEntry(fi fs.FileInfo) *entry {
	e := &entry{size: uint64(fi.Size()), mtime: fi.ModTime().UnixNano(), mode: uint32(fi.Mode())}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.dev, e.ino = uint64(st.Dev), st.Ino
		e.ctime = st.Ctim.Sec*1e9 + st.Ctim.Nsec
	}
	return e
}

// matches reports whether the entry describes fi unchanged and is not
// racily clean.
func (e *entry) matches(fi fs.FileInfo) bool {
	n := newEntry(fi)
	if n.ctime == 0 { // no stat_t: nothing to trust
		return false
	}
	return e.dev == n.dev && e.ino == n.ino && e.size == n.size && e.mtime == n.mtime &&
		e.ctime == n.ctime && e.mode == n.mode && e.ctime+int64(racyMargin) < e.hashed
}

// Save writes the index to path with write (an atomic writer) if it
// changed since Load.
func (x *Index) Save(path string, write func(path string, b []byte) error) error {
	x.mu.Lock()
	if !x.dirty {
		x.mu.Unlock()
		return nil
	}
	if len(x.entries) > maxEntries {
		for k, e := range x.entries {
			if !e.seen {
				delete(x.entries, k)
			}
		}
	}
	var buf bytes.Buffer
	buf.WriteString(magic)
	encode(&buf, x.entries)
	x.dirty = false
	x.mu.Unlock()
	return write(path, buf.Bytes())
}

// The encoding: a uvarint count, then per entry a uvarint path length, the
// path, six uvarints/varints of metadata, the mode and the digest.
func encode(w *bytes.Buffer, m map[string]*entry) {
	var tmp [binary.MaxVarintLen64]byte
	u := func(v uint64) { w.Write(tmp[:binary.PutUvarint(tmp[:], v)]) }
	s := func(v int64) { w.Write(tmp[:binary.PutVarint(tmp[:], v)]) }
	u(uint64(len(m)))
	for k, e := range m {
		u(uint64(len(k)))
		w.WriteString(k)
		u(e.dev)
		u(e.ino)
		u(e.size)
		s(e.mtime)
		s(e.ctime)
		s(e.hashed)
		u(uint64(e.mode))
		w.Write(e.digest[:])
	}
}

var errCorrupt = errors.New("corrupt index")

func decode(b []byte) (map[string]*entry, error) {
	r := bufio.NewReader(bytes.NewReader(b))
	n, err := binary.ReadUvarint(r)
	if err != nil || n > maxEntries*2 {
		return nil, errCorrupt
	}
	m := make(map[string]*entry, n)
	for range n {
		l, err := binary.ReadUvarint(r)
		if err != nil || l > 1<<16 {
			return nil, errCorrupt
		}
		name := make([]byte, l)
		if _, err := io.ReadFull(r, name); err != nil {
			return nil, errCorrupt
		}
		e := &entry{}
		var mode uint64
		for _, p := range []*uint64{&e.dev, &e.ino, &e.size} {
			if *p, err = binary.ReadUvarint(r); err != nil {
				return nil, errCorrupt
			}
		}
		for _, p := range []*int64{&e.mtime, &e.ctime, &e.hashed} {
			if *p, err = binary.ReadVarint(r); err != nil {
				return nil, errCorrupt
			}
		}
		if mode, err = binary.ReadUvarint(r); err != nil {
			return nil, errCorrupt
		}
		e.mode = uint32(mode)
		if _, err := io.ReadFull(r, e.digest[:]); err != nil {
			return nil, errCorrupt
		}
		m[string(name)] = e
	}
	return m, nil
}

package layers

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Extraction keeps two things per entry until a layer is done: the paths
// it wrote (so that its whiteouts hide only lower layers' files) and its
// directories' metadata (set last). Both are held in memory up to
// spillBytes each and beyond that in unnamed temporary files, so the
// memory an extraction takes does not grow with the number of entries a
// layer has (a tar of a million entries is extracted in the memory of
// about ten thousand).
const spillBytes = 1 << 20

// newSpillFile makes an unnamed temporary file on dir's file system
// (O_TMPFILE), else in the default temporary directory, unlinked at once:
// it disappears with its descriptor, even if the process is killed.
func newSpillFile(dir string) (*os.File, error) {
	if fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600); err == nil {
		return os.NewFile(uintptr(fd), "spill"), nil
	}
	f, err := os.CreateTemp("", "ibuild-extract-")
	if err != nil {
		return nil, fmt.Errorf("spill file: %w", err)
	}
	os.Remove(f.Name())
	return f, nil
}

// pathKey is a path's 128-bit key in a pathSet's runs: two seeded hashes,
// unpredictable outside this process.
type pathKey [2]uint64

func comparePathKeys(a, b pathKey) int {
	if c := compareUint64(a[0], b[0]); c != 0 {
		return c
	}
	return compareUint64(a[1], b[1])
}

func compareUint64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// maxRuns is how many sorted runs a pathSet keeps before merging them
// into one, which bounds the reads of a lookup.
const maxRuns = 8

// pathSet is a set of slash paths held in memory up to spillBytes and
// beyond that as sorted runs of 16-byte keys in unnamed files under dir.
// Adds are cheap; lookups after a spill cost a binary search per run.
type pathSet struct {
	dir    string
	limit  int // bytes held in memory before a spill
	seeds  [2]maphash.Seed
	mem    map[string]struct{}
	bytes  int
	runs   []pathRun
	closed bool
}

// pathRun is a file of sorted, distinct keys.
type pathRun struct {
	f *os.File
	n int64
}

func newPathSet(dir string, limit int) *pathSet {
	return &pathSet{dir: dir, limit: limit, seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}, mem: map[string]struct{}{}}
}

func (s *pathSet) key(p string) pathKey {
	return pathKey{maphash.String(s.seeds[0], p), maphash.String(s.seeds[1], p)}
}

// Add adds p.
func (s *pathSet) Add(p string) error {
	if _, ok := s.mem[p]; ok {
		return nil
	}
	s.mem[p] = struct{}{}
	s.bytes += len(p) + 64 // the string and the map's share
	if s.bytes < s.limit {
		return nil
	}
	return s.flush()
}

// Has reports whether p was added.
func (s *pathSet) Has(p string) (bool, error) {
	if _, ok := s.mem[p]; ok {
		return true, nil
	}
	if len(s.runs) == 0 {
		return false, nil
	}
	k := s.key(p)
	var rec [16]byte
	for _, r := range s.runs {
		lo, hi := int64(0), r.n
		for lo < hi {
			mid := (lo + hi) / 2
			if _, err := r.f.ReadAt(rec[:], mid*16); err != nil {
				return false, fmt.Errorf("read spilled paths: %w", err)
			}
			switch comparePathKeys(decodeKey(rec[:]), k) {
			case 0:
				return true, nil
			case -1:
				lo = mid + 1
			default:
				hi = mid
			}
		}
	}
	return false, nil
}

func decodeKey(b []byte) pathKey {
	return pathKey{binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:])}
}

func appendKey(b []byte, k pathKey) []byte {
	b = binary.BigEndian.AppendUint64(b, k[0])
	return binary.BigEndian.AppendUint64(b, k[1])
}

// flush writes the paths in memory as a new sorted run.
func (s *pathSet) flush() error {
	keys := make([]pathKey, 0, len(s.mem))
	for p := range s.mem {
		keys = append(keys, s.key(p))
	}
	slices.SortFunc(keys, comparePathKeys)
	keys = slices.Compact(keys)
	f, err := newSpillFile(s.dir)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 64<<10)
	var b []byte
	for _, k := range keys {
		b = appendKey(b[:0], k)
		w.Write(b)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("spill paths: %w", err)
	}
	s.runs = append(s.runs, pathRun{f: f, n: int64(len(keys))})
	clear(s.mem)
	s.bytes = 0
	if len(s.runs) >= maxRuns {
		return s.merge()
	}
	return nil
}

// merge merges every run into one, reading each sequentially.
func (s *pathSet) merge() error {
	f, err := newSpillFile(s.dir)
	if err != nil {
		return err
	}
	type cursor struct {
		r   *bufio.Reader
		k   pathKey
		end bool
	}
	var buf [16]byte
	next := func(c *cursor) error {
		if _, err := io.ReadFull(c.r, buf[:]); err == io.EOF {
			c.end = true
			return nil
		} else if err != nil {
			return err
		}
		c.k = decodeKey(buf[:])
		return nil
	}
	cs := make([]*cursor, len(s.runs))
	for i, r := range s.runs {
		cs[i] = &cursor{r: bufio.NewReaderSize(io.NewSectionReader(r.f, 0, r.n*16), 16<<10)}
		if err := next(cs[i]); err != nil {
			f.Close()
			return fmt.Errorf("merge spilled paths: %w", err)
		}
	}
	w := bufio.NewWriterSize(f, 64<<10)
	var n int64
	var last pathKey
	var b []byte
	for {
		var min *cursor
		for _, c := range cs {
			if !c.end && (min == nil || comparePathKeys(c.k, min.k) < 0) {
				min = c
			}
		}
		if min == nil {
			break
		}
		if n == 0 || min.k != last {
			b = appendKey(b[:0], min.k)
			w.Write(b)
			last = min.k
			n++
		}
		if err := next(min); err != nil {
			f.Close()
			return fmt.Errorf("merge spilled paths: %w", err)
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("merge spilled paths: %w", err)
	}
	for _, r := range s.runs {
		r.f.Close()
	}
	s.runs = []pathRun{{f: f, n: n}}
	return nil
}

// Close releases the set's files.
func (s *pathSet) Close() {
	for _, r := range s.runs {
		r.f.Close()
	}
	s.runs = nil
}

// dirList is the list of directories whose metadata an extraction sets
// at the end: in memory up to spillBytes, earlier chunks in an unnamed
// file. It is read back last chunk first, each chunk newest first.
type dirList struct {
	dir    string
	limit  int // bytes held in memory before a spill
	mem    []dirMeta
	bytes  int
	f      *os.File
	w      *bufio.Writer
	chunks []int64 // offset of each spilled chunk; the file's size ends the last
	size   int64
}

func (l *dirList) add(m dirMeta) error {
	l.mem = append(l.mem, m)
	l.bytes += len(m.path) + 96
	if l.bytes < l.limit {
		return nil
	}
	if l.f == nil {
		f, err := newSpillFile(l.dir)
		if err != nil {
			return err
		}
		l.f, l.w = f, bufio.NewWriterSize(f, 64<<10)
	}
	l.chunks = append(l.chunks, l.size)
	var b []byte
	for _, d := range l.mem {
		b = appendDirMeta(b[:0], d)
		l.w.Write(b)
		l.size += int64(len(b))
	}
	if err := l.w.Flush(); err != nil {
		return fmt.Errorf("spill directories: %w", err)
	}
	l.mem, l.bytes = l.mem[:0], 0
	return nil
}

// reverse calls fn for every directory, newest first, and stops at its
// first error.
func (l *dirList) reverse(fn func(dirMeta) error) error {
	for i := len(l.mem) - 1; i >= 0; i-- {
		if err := fn(l.mem[i]); err != nil {
			return err
		}
	}
	for c := len(l.chunks) - 1; c >= 0; c-- {
		end := l.size
		if c+1 < len(l.chunks) {
			end = l.chunks[c+1]
		}
		b := make([]byte, end-l.chunks[c])
		if _, err := l.f.ReadAt(b, l.chunks[c]); err != nil {
			return fmt.Errorf("read spilled directories: %w", err)
		}
		// Find where each record starts, then decode them last first.
		var starts []int32
		for rest := b; len(rest) > 0; {
			starts = append(starts, int32(len(b)-len(rest)))
			_, next, err := decodeDirMeta(rest)
			if err != nil {
				return err
			}
			rest = next
		}
		for i := len(starts) - 1; i >= 0; i-- {
			m, _, err := decodeDirMeta(b[starts[i]:])
			if err != nil {
				return err
			}
			if err := fn(m); err != nil {
				return err
			}
		}
	}
	return nil
}

func (l *dirList) close() {
	if l.f != nil {
		l.f.Close()
	}
}

func appendDirMeta(b []byte, m dirMeta) []byte {
	b = binary.AppendUvarint(b, uint64(len(m.path)))
	b = append(b, m.path...)
	b = binary.AppendUvarint(b, uint64(m.mode))
	fix := byte(0)
	if m.fixMode {
		fix = 1
	}
	b = append(b, fix)
	for _, t := range []time.Time{m.atime, m.mtime} {
		if t.IsZero() {
			b = append(b, 0)
			continue
		}
		b = append(b, 1)
		b = binary.AppendVarint(b, t.Unix())
		b = binary.AppendUvarint(b, uint64(t.Nanosecond()))
	}
	return b
}

var errBadSpill = errors.New("corrupt spilled directory record")

func decodeDirMeta(b []byte) (dirMeta, []byte, error) {
	var m dirMeta
	r := bytes.NewReader(b)
	n, err := binary.ReadUvarint(r)
	if err != nil || n > uint64(r.Len()) {
		return m, nil, errBadSpill
	}
	at := len(b) - r.Len()
	m.path = string(b[at : at+int(n)])
	r.Seek(int64(n), io.SeekCurrent)
	mode, err := binary.ReadUvarint(r)
	if err != nil {
		return m, nil, errBadSpill
	}
	m.mode = uint32(mode)
	fix, err := r.ReadByte()
	if err != nil {
		return m, nil, errBadSpill
	}
	m.fixMode = fix == 1
	for _, t := range []*time.Time{&m.atime, &m.mtime} {
		set, err := r.ReadByte()
		if err != nil {
			return m, nil, errBadSpill
		}
		if set == 0 {
			continue
		}
		sec, err1 := binary.ReadVarint(r)
		nsec, err2 := binary.ReadUvarint(r)
		if err1 != nil || err2 != nil {
			return m, nil, errBadSpill
		}
		*t = time.Unix(sec, int64(nsec))
	}
	return m, b[len(b)-r.Len():], nil
}

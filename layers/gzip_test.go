package layers

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/pgzip"
)

// textData is n bytes of compressible, text-like data.
func textData(n int, seed int64) []byte {
	r := rand.New(rand.NewSource(seed))
	words := strings.Fields("layer tar gzip blob digest image manifest config snapshot registry push pull build stage copy run from with the of a to")
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[r.Intn(len(words))])
		if r.Intn(9) == 0 {
			b.WriteByte('\n')
		} else {
			b.WriteByte(' ')
		}
	}
	return b.Bytes()[:n]
}

// randomData is n incompressible bytes.
func randomData(n int, seed int64) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// gzipWith compresses data written in pieces of chunk bytes.
func gzipWith(t testing.TB, zw io.WriteCloser, out *bytes.Buffer, data []byte, chunk int) []byte {
	t.Helper()
	for off := 0; off < len(data); off += chunk {
		if _, err := zw.Write(data[off:min(off+chunk, len(data))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func gunzip(t testing.TB, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// The blobs of compressible layers are byte for byte pgzip v1.3.0's, as
// ibuild made them before: same layers, same digests.
func TestGzipWriterMatchesPgzip(t *testing.T) {
	mixed := textData(3<<20, 1)
	copy(mixed[1<<20+300<<10:], randomData(200<<10, 2)) // a random stretch inside a compressible block
	inputs := map[string][]byte{
		"empty":        nil,
		"one byte":     {'x'},
		"tail":         textData(gzipTailSize, 3),
		"tail+1":       textData(gzipTailSize+1, 4),
		"block-1":      textData(gzipBlockSize-1, 5),
		"block":        textData(gzipBlockSize, 6),
		"block+1":      textData(gzipBlockSize+1, 7),
		"blocks":       textData(3*gzipBlockSize+5, 8),
		"mixed blocks": mixed,
	}
	for name, data := range inputs {
		for _, lc := range [][2]int{{2, 1000}, {2, 1<<20 + 3}, {1, 1<<20 + 3}, {6, 1<<20 + 3}, {9, 1<<20 + 3}} {
			{
				level, chunk := lc[0], lc[1]
				if testing.Short() && level > 2 && len(data) > gzipBlockSize+1 {
					continue // slow, and the small inputs try these levels
				}
				var want, got bytes.Buffer
				pz, err := pgzip.NewWriterLevel(&want, level)
				if err != nil {
					t.Fatal(err)
				}
				pz.ModTime = time.Unix(0, 0)
				gzipWith(t, pz, &want, data, chunk)
				z := newGzipWriter(&got, level, 2)
				gzipWith(t, z, &got, data, chunk)
				if !bytes.Equal(got.Bytes(), want.Bytes()) {
					t.Errorf("%s, level %d, writes of %d: %d bytes differ from pgzip's %d", name, level, chunk, got.Len(), want.Len())
				}
				if z.stored != 0 {
					t.Errorf("%s, level %d: %d blocks stored", name, level, z.stored)
				}
			}
		}
	}
}

// Blocks that do not compress are stored: the stream still decompresses
// to the input, is hardly larger than it, and does not depend on how many
// blocks are compressed at once.
func TestGzipWriterStoresIncompressible(t *testing.T) {
	data := append(randomData(5*gzipBlockSize, 9), textData(gzipBlockSize+77, 10)...)
	var first []byte
	for _, procs := range []int{1, 2, 8} {
		var out bytes.Buffer
		z := newGzipWriter(&out, defaultGzipLevel, procs)
		gzipWith(t, z, &out, data, 64<<10+1)
		if z.stored != 5 {
			t.Errorf("procs %d: %d blocks stored, want the 5 random ones", procs, z.stored)
		}
		if got := gunzip(t, out.Bytes()); !bytes.Equal(got, data) {
			t.Fatalf("procs %d: the stream does not decompress to the input", procs)
		}
		if limit := 5*gzipBlockSize + 5*gzipBlockSize/65535*5 + 2*gzipBlockSize/2; out.Len() > limit {
			t.Errorf("procs %d: %d bytes for 5 MiB of random data and 1 MiB of text (limit %d)", procs, out.Len(), limit)
		}
		if first == nil {
			first = out.Bytes()
		} else if !bytes.Equal(first, out.Bytes()) {
			t.Errorf("procs %d: output differs from procs 1", procs)
		}
	}
}

// failAfter accepts n bytes, then fails.
type failAfter struct{ n int }

var errFull = errors.New("disk full")

func (f *failAfter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		k := f.n
		f.n = 0
		return k, errFull
	}
	f.n -= len(p)
	return len(p), nil
}

// A failing writer beneath fails Write or Close with its error, and
// nothing hangs.
func TestGzipWriterWriteError(t *testing.T) {
	for _, n := range []int{0, 5, 100 << 10} {
		z := newGzipWriter(&failAfter{n: n}, defaultGzipLevel, 2)
		var err error
		data := randomData(6*gzipBlockSize, 11)
		for off := 0; off < len(data) && err == nil; off += 1 << 20 {
			_, err = z.Write(data[off : off+1<<20])
		}
		if cerr := z.Close(); err == nil {
			err = cerr
		}
		if !errors.Is(err, errFull) {
			t.Errorf("writer failing after %d bytes: %v, want %v", n, err, errFull)
		}
	}
}

// FuzzGzipWriter checks that any input, compressible or not in any mix
// and written in any pieces, decompresses to itself.
func FuzzGzipWriter(f *testing.F) {
	f.Add([]byte("abc"), uint32(3<<20), uint16(4096), int64(1))
	f.Add([]byte{}, uint32(gzipBlockSize), uint16(1), int64(2))
	f.Add([]byte("x"), uint32(gzipBlockSize+gzipTailSize), uint16(65535), int64(3))
	f.Fuzz(func(t *testing.T, pattern []byte, size uint32, chunk uint16, seed int64) {
		size %= 4 << 20
		data := make([]byte, size)
		r := rand.New(rand.NewSource(seed))
		// Stretches of the pattern and of random bytes, of random
		// lengths.
		for off := 0; off < len(data); {
			k := min(len(data)-off, 1+r.Intn(256<<10))
			if len(pattern) > 0 && r.Intn(2) == 0 {
				for i := range k {
					data[off+i] = pattern[i%len(pattern)]
				}
			} else {
				r.Read(data[off : off+k])
			}
			off += k
		}
		var out bytes.Buffer
		z := newGzipWriter(&out, defaultGzipLevel, 2)
		gzipWith(t, z, &out, data, int(chunk)+1)
		if got := gunzip(t, out.Bytes()); !bytes.Equal(got, data) {
			t.Fatalf("%d bytes do not decompress to themselves", len(data))
		}
	})
}

// tarOfRandomFiles is a tar of files of random content and random sizes
// around avg bytes.
func tarOfRandomFiles(t testing.TB, total, avg int) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	r := rand.New(rand.NewSource(12))
	for i := 0; b.Len() < total; i++ {
		data := randomData(1+r.Intn(2*avg), int64(i))
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("f%05d.bin", i), Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	tw.Close()
	return b.Bytes()
}

// A tar of incompressible files of 60 KB on average is stored (its tar
// headers would save well under 1/64), still decompressing to itself.
func TestGzipWriterStoresTarOfIncompressibleFiles(t *testing.T) {
	data := tarOfRandomFiles(t, 4*gzipBlockSize, 60<<10)
	var out bytes.Buffer
	z := newGzipWriter(&out, defaultGzipLevel, 2)
	gzipWith(t, z, &out, data, 32<<10)
	if full := len(data) / gzipBlockSize; z.stored != full {
		t.Errorf("%d of %d full blocks stored", z.stored, full)
	}
	if got := gunzip(t, out.Bytes()); !bytes.Equal(got, data) {
		t.Fatal("the stream does not decompress to the input")
	}
}

package layers

import (
	"bufio"
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// genTree fills dir with about size bytes in a mix of many small files and a
// few large ones, holding text made of random words from a small vocabulary:
// compressible about 3:1, like source trees and binaries are, neither random
// nor zeros. The same seed gives the same tree. It returns the bytes written.
func genTree(tb testing.TB, dir string, size int64, seed int64) int64 {
	tb.Helper()
	r := rand.New(rand.NewSource(seed))
	words := make([]string, 4096)
	for i := range words {
		b := make([]byte, 2+r.Intn(10))
		for j := range b {
			b[j] = byte('a' + r.Intn(26))
		}
		words[i] = string(b)
	}
	var total int64
	for i := 0; total < size; i++ {
		// One byte in three goes to large files (1-8 MiB), the rest to
		// small ones (up to 64 KiB), spread over nested directories.
		n := int64(1 + r.Intn(64<<10))
		if i%20 == 0 {
			n = int64(1<<20 + r.Intn(7<<20))
		}
		n = min(n, size-total)
		p := filepath.Join(dir, fmt.Sprintf("d%02d/s%02d/f%05d", i%17, i%5, i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			tb.Fatal(err)
		}
		f, err := os.Create(p)
		if err != nil {
			tb.Fatal(err)
		}
		w := bufio.NewWriterSize(f, 64<<10)
		for written := int64(0); written < n; {
			word := words[r.Intn(len(words))]
			sep := " "
			if r.Intn(10) == 0 {
				sep = "\n"
			}
			k := min(int64(len(word)+1), n-written)
			w.WriteString((word + sep)[:k])
			written += k
		}
		if err := w.Flush(); err != nil {
			tb.Fatal(err)
		}
		if err := f.Close(); err != nil {
			tb.Fatal(err)
		}
		total += n
	}
	return total
}

// benchTree makes the benchmark tree (IBUILD_BENCH_SIZE_MB, default 64).
func benchTree(b *testing.B) (string, int64) {
	mb := 64
	if v := os.Getenv("IBUILD_BENCH_SIZE_MB"); v != "" {
		var err error
		if mb, err = strconv.Atoi(v); err != nil || mb <= 0 {
			b.Fatalf("IBUILD_BENCH_SIZE_MB=%q: want a positive number", v)
		}
	}
	dir := b.TempDir()
	return dir, genTree(b, dir, int64(mb)<<20, 1)
}

// BenchmarkCommitDir measures tar + hash + compress + store of a tree, in
// MB/s of file content, and reports the compression ratio.
func BenchmarkCommitDir(b *testing.B) {
	dir, size := benchTree(b)
	cases := []struct {
		name string
		opts CommitOptions
	}{
		{"gzip", CommitOptions{Compression: Gzip}},
		{"gzip-1", CommitOptions{Compression: Gzip, Level: 1}},
		{"gzip-6", CommitOptions{Compression: Gzip, Level: 6}},
		{"zstd", CommitOptions{Compression: Zstd}},
		{"none", CommitOptions{Compression: Uncompressed}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			store, err := OpenBlobStore(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(size)
			b.ResetTimer()
			var d Descriptor
			for range b.N {
				if d, err = store.CommitDir(context.Background(), dir, c.opts); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(d.UncompressedSize)/float64(d.Size), "ratio")
		})
	}
}

// BenchmarkBaselineTarGzip runs the usual shell pipelines over the same tree
// so CommitDir's speed can be compared in one run.
func BenchmarkBaselineTarGzip(b *testing.B) {
	dir, size := benchTree(b)
	cases := []struct {
		name, tool, pipe string
	}{
		{"tar|gzip-6", "gzip", "gzip -6"},
		{"tar|zstd-3", "zstd", "zstd -3 -T0 -c"},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			for _, tool := range []string{"tar", c.tool} {
				if _, err := exec.LookPath(tool); err != nil {
					skipOrFail(b, "%s not installed", tool)
				}
			}
			b.SetBytes(size)
			var out string
			for range b.N {
				cmd := exec.Command("sh", "-c", fmt.Sprintf("tar -C '%s' -cf - . | %s | wc -c", dir, c.pipe))
				o, err := cmd.Output()
				if err != nil {
					b.Fatalf("%s: %v", cmd, err)
				}
				out = string(o)
			}
			b.StopTimer()
			if n, err := strconv.ParseFloat(strings.TrimSpace(out), 64); err == nil && n > 0 {
				b.ReportMetric(float64(size)/n, "ratio")
			}
		})
	}
}

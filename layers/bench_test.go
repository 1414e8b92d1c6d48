package layers

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"go.podman.io/storage/pkg/reexec"
	"time"

	"github.com/ibuild/ibuild/layers/layertest"
)

// The benchmarks in this file share one generated tree per test process,
// sized by IBUILD_BENCH_SIZE_MB (default 64, so a plain `go test -bench .`
// is quick; `make bench` uses 1024). Figures and how to read them are in
// docs/performance.md.

// benchSizeEnv sizes the benchmark tree, in MiB.
const benchSizeEnv = "IBUILD_BENCH_SIZE_MB"

// peakRSSLimit is the most memory committing a layer may take, whatever
// the layer's size (issue requirement: under 150 MB for a 1 GB layer).
const peakRSSLimit = 150e6

// The speed targets of the issue, as (baseline time / our time).
const (
	targetVsTarGzip6 = 2.0 // gzip: at least twice as fast as tar | gzip -6
	targetVsTarZstd3 = 0.9 // zstd: at least 0.9x the speed of tar | zstd -3 -T0
)

// TestMain removes the shared benchmark tree once every benchmark is done.
func TestMain(m *testing.M) {
	if reexec.Init() {
		return
	}
	code := m.Run()
	if sharedTree.root != "" {
		os.RemoveAll(sharedTree.root)
	}
	os.Exit(code)
}

// sharedTree is the benchmark tree, generated on first use.
var sharedTree struct {
	once sync.Once
	root string // temp dir holding the tree, removed by TestMain
	dir  string
	size int64
	err  error
}

// benchSizeMB reads IBUILD_BENCH_SIZE_MB.
func benchSizeMB() (int, error) {
	v := os.Getenv(benchSizeEnv)
	if v == "" {
		return 64, nil
	}
	mb, err := strconv.Atoi(v)
	if err != nil || mb <= 0 {
		return 0, fmt.Errorf("%s=%q: want a positive number of MiB", benchSizeEnv, v)
	}
	return mb, nil
}

// benchTree returns the shared benchmark tree and the bytes of file content
// in it, generating it the first time. The tree is synced to disk before it
// is used, so no benchmark pays for its writeback; it then stays in the page
// cache, for our commit and the baselines alike.
func benchTree(b *testing.B) (string, int64) {
	b.Helper()
	t := &sharedTree
	t.once.Do(func() {
		mb, err := benchSizeMB()
		if err != nil {
			t.err = err
			return
		}
		if t.root, err = os.MkdirTemp("", "ibuild-bench-tree-"); err != nil {
			t.err = err
			return
		}
		t.dir = filepath.Join(t.root, "tree")
		start := time.Now()
		t.size, t.err = makeTree(t.dir, int64(mb)<<20, 1)
		syscall.Sync()
		b.Logf("generated a %d MiB tree in %v", mb, time.Since(start).Round(time.Millisecond))
	})
	if t.err != nil {
		b.Fatal(t.err)
	}
	return t.dir, t.size
}

// genTree fills dir with about size bytes laid out like an image layer:
// many small files (up to 64 KiB, most of them a few KiB) in nested
// directories, holding about a third of the bytes, and a few large ones
// (1-8 MiB) holding the rest. Most content is text made of random words
// from a small vocabulary, which compresses about 3:1 like source, configs
// and binaries do; one large file in eight is random bytes, like the
// already-compressed archives and images a layer also carries. The same
// seed gives the same tree. It returns the bytes written.
func genTree(tb testing.TB, dir string, size, seed int64) int64 {
	tb.Helper()
	n, err := makeTree(dir, size, seed)
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// makeTree is genTree returning its error.
func makeTree(dir string, size, seed int64) (int64, error) {
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
	large := 0
	for i := 0; total < size; i++ {
		// Small files average ~16 KiB and a large one ~4.5 MiB: one large
		// file per 170 small ones puts about a third of the bytes in small
		// files.
		n := int64(1 + r.Intn(1+r.Intn(64<<10)))
		isLarge := i%170 == 0
		if isLarge {
			n = int64(1<<20 + r.Intn(7<<20))
			large++
		}
		n = min(n, size-total)
		p := filepath.Join(dir, fmt.Sprintf("d%02d/s%02d/f%06d", i%17, i%5, i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return total, err
		}
		if err := writeBenchFile(p, n, r, words, isLarge && large%8 == 0); err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}

// writeBenchFile writes n bytes of words (or of random bytes) to p.
func writeBenchFile(p string, n int64, r *rand.Rand, words []string, random bool) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 64<<10)
	if random {
		buf := make([]byte, 64<<10)
		for written := int64(0); written < n; {
			k := min(int64(len(buf)), n-written)
			r.Read(buf[:k])
			w.Write(buf[:k])
			written += k
		}
	} else {
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
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// BenchmarkCommitDir measures tar + hash + compress + store of the tree, in
// MB/s of file content, and reports the compression ratio, for several
// compressions and levels.
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
			var d Descriptor
			for b.Loop() {
				if d, err = store.CommitDir(context.Background(), dir, c.opts); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(d.UncompressedSize)/float64(d.Size), "ratio")
		})
	}
}

// BenchmarkWriteTar measures the part of a commit that does not depend on
// compression or the store: the tar walk alone (to io.Discard), and with
// the SHA-256 that gives the diffID.
func BenchmarkWriteTar(b *testing.B) {
	dir, size := benchTree(b)
	for _, hashed := range []bool{false, true} {
		name := "discard"
		if hashed {
			name = "sha256"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				var w io.Writer = io.Discard
				if hashed {
					w = sha256.New()
				}
				if err := WriteTar(context.Background(), w, dir, TarOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCommitVsBaseline times CommitDir and the shell pipeline it
// replaces on the same tree, alternately in every iteration, and reports
// the speed ratio (baseline time / CommitDir time) as x_vs_tar_gzip6 or
// x_vs_tar_zstd3: above 1 means CommitDir is faster. ns/op and MB/s are
// CommitDir's; baseline_MB/s is the pipeline's. ratio and baseline_ratio
// are the compression ratios (tar bytes / compressed bytes).
//
// The pipeline writes its output to a file in the same directory as the
// blob store, without fsync; CommitDir also fsyncs, hashes the tar and the
// blob, and renames the blob into place, so the comparison does not favour
// it.
func BenchmarkCommitVsBaseline(b *testing.B) {
	dir, size := benchTree(b)
	cases := []struct {
		name   string
		opts   CommitOptions
		tool   string
		pipe   string
		metric string
		target float64
	}{
		{"gzip", CommitOptions{Compression: Gzip}, "gzip", "gzip -6", "x_vs_tar_gzip6", targetVsTarGzip6},
		{"zstd", CommitOptions{Compression: Zstd}, "zstd", "zstd -q -3 -T0", "x_vs_tar_zstd3", targetVsTarZstd3},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			for _, tool := range []string{"tar", c.tool} {
				if _, err := exec.LookPath(tool); err != nil {
					layertest.SkipOrFail(b, "%s not installed", tool)
				}
			}
			work := b.TempDir()
			store, err := OpenBlobStore(work)
			if err != nil {
				b.Fatal(err)
			}
			out := filepath.Join(work, "baseline.out")
			script := fmt.Sprintf("tar -C '%s' -cf - . | %s > '%s'", dir, c.pipe, out)
			var ours, base time.Duration
			var d Descriptor
			var baseSize int64
			for b.Loop() {
				start := time.Now()
				if o, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
					b.Fatalf("%s: %v\n%s", script, err, o)
				}
				baseTime := time.Since(start)
				base += baseTime
				fi, err := os.Stat(out)
				if err != nil {
					b.Fatal(err)
				}
				baseSize = fi.Size()
				os.Remove(out)

				start = time.Now()
				if d, err = store.CommitDir(context.Background(), dir, c.opts); err != nil {
					b.Fatal(err)
				}
				ourTime := time.Since(start)
				ours += ourTime
				if err := store.Delete(d.Digest); err != nil {
					b.Fatal(err)
				}
				b.Logf("%s: %v, CommitDir: %v (x%.2f, load %s)", c.pipe, baseTime.Round(time.Millisecond), ourTime.Round(time.Millisecond), baseTime.Seconds()/ourTime.Seconds(), loadAvg())
			}
			n := float64(b.N)
			x := base.Seconds() / ours.Seconds()
			b.ReportMetric(float64(ours.Nanoseconds())/n, "ns/op")
			b.ReportMetric(float64(size)*n/1e6/ours.Seconds(), "MB/s")
			b.ReportMetric(float64(size)*n/1e6/base.Seconds(), "baseline_MB/s")
			b.ReportMetric(x, c.metric)
			b.ReportMetric(float64(d.UncompressedSize)/float64(d.Size), "ratio")
			b.ReportMetric(float64(d.UncompressedSize)/float64(baseSize), "baseline_ratio")
			if x < c.target {
				b.Logf("TARGET NOT MET: %s = %.2f, want >= %.2f (%d MiB tree)", c.metric, x, c.target, size>>20)
			}
		})
	}
}

// loadAvg is the 1-minute load average, to tell a quiet run from one that
// shared the machine.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// commitChildEnv tells TestCommitRSSHelper what to commit:
// "COMPRESSION|TREE|STORE".
const commitChildEnv = "IBUILD_BENCH_COMMIT_CHILD"

// TestCommitRSSHelper is the child process of BenchmarkCommitPeakRSS: it
// commits one tree and prints the result, so that the parent can read the
// peak RSS of a process that did nothing else. Without commitChildEnv it
// does nothing.
func TestCommitRSSHelper(t *testing.T) {
	spec := os.Getenv(commitChildEnv)
	if spec == "" {
		return
	}
	parts := strings.Split(spec, "|")
	if len(parts) != 3 {
		t.Fatalf("%s=%q: want COMPRESSION|TREE|STORE", commitChildEnv, spec)
	}
	store, err := OpenBlobStore(parts[2])
	if err != nil {
		t.Fatal(err)
	}
	d, err := store.CommitDir(context.Background(), parts[1], CommitOptions{Compression: Compression(parts[0])})
	if err != nil {
		t.Fatal(err)
	}
	hwm, err := vmHWM()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("COMMITTED %d %d %s %d\n", d.UncompressedSize, d.Size, d.Digest, hwm)
}

// vmHWM is this process's peak resident set size in bytes: VmHWM in
// /proc/self/status, the high-water mark of its own address space.
func vmHWM() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kb); err != nil {
				return 0, fmt.Errorf("VmHWM %q: %w", v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("no VmHWM in /proc/self/status")
}

// BenchmarkCommitPeakRSS commits the tree in a child process (this test
// binary re-run as TestCommitRSSHelper) and reports the child's peak
// resident set size, from wait4's rusage, as peak_rss_MB (1 MB = 10^6
// bytes). The child is a whole Go test binary, so the figure includes the
// runtime and the testing package too. It fails if the peak exceeds 150 MB.
func BenchmarkCommitPeakRSS(b *testing.B) {
	dir, size := benchTree(b)
	for _, c := range []Compression{Gzip, Zstd} {
		b.Run(string(c), func(b *testing.B) {
			work := b.TempDir()
			var peak, maxrss int64
			for b.Loop() {
				cmd := exec.Command(os.Args[0], "-test.run=^TestCommitRSSHelper$", "-test.count=1")
				cmd.Env = append(os.Environ(), commitChildEnv+"="+strings.Join([]string{string(c), dir, work}, "|"))
				o, err := cmd.CombinedOutput()
				if err != nil {
					b.Fatalf("commit child: %v\n%s", err, o)
				}
				var tarSize, blobSize, hwm int64
				var digest string
				i := strings.Index(string(o), "COMMITTED ")
				if i < 0 {
					b.Fatalf("commit child printed no result:\n%s", o)
				}
				if _, err := fmt.Sscanf(string(o[i:]), "COMMITTED %d %d %s %d", &tarSize, &blobSize, &digest, &hwm); err != nil || tarSize < size {
					b.Fatalf("commit child: tar of %d bytes for %d bytes of files (%v):\n%s", tarSize, size, err, o)
				}
				peak = max(peak, hwm)
				if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
					maxrss = max(maxrss, ru.Maxrss<<10) // Linux reports KiB
				}
				os.RemoveAll(filepath.Join(work, "blobs", "sha256", strings.TrimPrefix(digest, "sha256:")))
			}
			b.ReportMetric(float64(size)*float64(b.N)/1e6/b.Elapsed().Seconds(), "MB/s")
			b.ReportMetric(float64(peak)/1e6, "peak_rss_MB")
			b.ReportMetric(float64(maxrss)/1e6, "rusage_maxrss_MB")
			if peak > peakRSSLimit {
				b.Fatalf("peak RSS %.1f MB committing %d MiB with %s, want under %.0f MB", float64(peak)/1e6, size>>20, c, peakRSSLimit/1e6)
			}
		})
	}
}

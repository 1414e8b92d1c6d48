package builder_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"

	"go.podman.io/storage/pkg/reexec"
	"time"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/layers"
)

// The benchmarks in this file share one store per test process holding two
// base images, one of 1 MiB and one of IBUILD_BENCH_SIZE_MB MiB (default
// 64, so a plain `go test -bench .` is quick; `make bench` uses 1024).
// Figures and how to read them are in docs/performance.md.

// benchSizeEnv sizes the large base image, in MiB.
const benchSizeEnv = "IBUILD_BENCH_SIZE_MB"

// stepTarget is the requirement on a one-file step: at most 20%
// slower on the large base than on the small one.
const stepTarget = 1.2

// TestMain removes the shared benchmark store once every benchmark is done.
func TestMain(m *testing.M) {
	if reexec.Init() {
		return
	}
	code := m.Run()
	if bases.store != nil {
		bases.store.Close()
	}
	if bases.root != "" {
		os.RemoveAll(bases.root)
	}
	os.Exit(code)
}

// bases is the shared store with the two base images, made on first use.
var bases struct {
	once  sync.Once
	root  string // temp dir, removed by TestMain
	store *layers.Store
	bigMB int
	err   error
}

const (
	smallBase = "bench-base-small:1"
	bigBase   = "bench-base-big:1"
)

// baseStore returns the shared store holding smallBase (1 MiB of files)
// and bigBase (IBUILD_BENCH_SIZE_MB MiB), each built FROM scratch with one
// COPY, and its snapshots already extracted by a warm-up build on top, so
// that a later build FROM them pays only for its own steps.
func baseStore(b *testing.B) (*layers.Store, int) {
	b.Helper()
	s := &bases
	s.once.Do(func() {
		s.err = func() error {
			s.bigMB = 64
			if v := os.Getenv(benchSizeEnv); v != "" {
				mb, err := strconv.Atoi(v)
				if err != nil || mb <= 0 {
					return fmt.Errorf("%s=%q: want a positive number of MiB", benchSizeEnv, v)
				}
				s.bigMB = mb
			}
			var err error
			if s.root, err = os.MkdirTemp("", "ibuild-bench-builder-"); err != nil {
				return err
			}
			ctx := context.Background()
			if s.store, err = layers.OpenStore(ctx, filepath.Join(s.root, "store")); err != nil {
				return err
			}
			for _, base := range []struct {
				name string
				mb   int
			}{{smallBase, 1}, {bigBase, s.bigMB}} {
				start := time.Now()
				if err := buildBase(ctx, s.store, filepath.Join(s.root, "ctx"), base.name, int64(base.mb)<<20); err != nil {
					return err
				}
				b.Logf("built and extracted %s (%d MiB) in %v", base.name, base.mb, time.Since(start).Round(time.Millisecond))
			}
			// The store's blobs and snapshots are on disk before any timing.
			syscall.Sync()
			return nil
		}()
	})
	if s.err != nil {
		b.Fatal(s.err)
	}
	return s.store, s.bigMB
}

// buildBase builds name from size bytes of generated files in ctxDir,
// builds one image on top so that its snapshots get extracted, and
// removes ctxDir.
func buildBase(ctx context.Context, st *layers.Store, ctxDir, name string, size int64) error {
	defer os.RemoveAll(ctxDir)
	if err := genFiles(filepath.Join(ctxDir, "files"), size); err != nil {
		return err
	}
	_, err := builder.Build(ctx, builder.Options{
		Store:             st,
		ContextDir:        ctxDir,
		DockerfileContent: []byte("FROM scratch\nCOPY files/ /data/\n"),
		Tags:              []string{name},
	})
	if err != nil {
		return fmt.Errorf("build %s: %w", name, err)
	}
	step := filepath.Join(ctxDir, "step")
	if err := os.MkdirAll(step, 0o755); err != nil {
		return err
	}
	return buildStep(ctx, st, step, name, "warm-up")
}

// buildStep builds `FROM base` + `COPY one.txt /one.txt` from ctxDir,
// with one.txt holding content.
func buildStep(ctx context.Context, st *layers.Store, ctxDir, base, content string) error {
	if err := os.WriteFile(filepath.Join(ctxDir, "one.txt"), []byte(content+"\n"), 0o644); err != nil {
		return err
	}
	_, err := builder.Build(ctx, builder.Options{
		Store:             st,
		ContextDir:        ctxDir,
		DockerfileContent: []byte("FROM " + base + "\nCOPY one.txt /one.txt\n"),
		Tags:              []string{"bench-step:1"},
	})
	if err != nil {
		return fmt.Errorf("build on %s: %w", base, err)
	}
	return nil
}

// genFiles fills dir with about size bytes in files of up to 64 KiB and a
// few of 1-8 MiB, holding text of random words (compressible about 3:1).
func genFiles(dir string, size int64) error {
	r := rand.New(rand.NewSource(1))
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
		n := int64(1 + r.Intn(1+r.Intn(64<<10)))
		if i%170 == 169 {
			n = int64(1<<20 + r.Intn(7<<20))
		}
		n = min(n, size-total)
		p := filepath.Join(dir, fmt.Sprintf("d%02d/s%02d/f%06d", i%17, i%5, i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		f, err := os.Create(p)
		if err != nil {
			return err
		}
		w := bufio.NewWriterSize(f, 64<<10)
		for written := int64(0); written < n; {
			word := words[r.Intn(len(words))] + " "
			k := min(int64(len(word)), n-written)
			w.WriteString(word[:k])
			written += k
		}
		if err := w.Flush(); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		total += n
	}
	return nil
}

// BenchmarkStepOnBase measures a build of `FROM <base>` + `COPY one.txt
// /one.txt` (one.txt changes every time) on a 1 MiB base and on a large one
// (IBUILD_BENCH_SIZE_MB), alternating the two in every iteration so both
// see the same conditions. The bases' snapshots are already extracted, so
// a build costs resolving the base, the COPY step (layer directory, tar,
// compression, blob), assembling and storing the image and tagging it;
// none of it should grow with the base. It reports small_ns/op,
// big_ns/op and x_big_vs_small (the issue asks for at most 1.2); ns/op is
// suppressed, being the sum of the two.
func BenchmarkStepOnBase(b *testing.B) {
	st, bigMB := baseStore(b)
	ctx := context.Background()
	dirs := map[string]string{smallBase: b.TempDir(), bigBase: b.TempDir()}
	var small, big time.Duration
	i := 0
	for b.Loop() {
		order := []string{smallBase, bigBase}
		if i%2 == 1 {
			order = []string{bigBase, smallBase}
		}
		for _, base := range order {
			start := time.Now()
			if err := buildStep(ctx, st, dirs[base], base, fmt.Sprintf("%s iteration %d", base, i)); err != nil {
				b.Fatal(err)
			}
			if d := time.Since(start); base == smallBase {
				small += d
			} else {
				big += d
			}
		}
		i++
	}
	x := big.Seconds() / small.Seconds()
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(small.Nanoseconds())/float64(b.N), "small_ns/op")
	b.ReportMetric(float64(big.Nanoseconds())/float64(b.N), "big_ns/op")
	b.ReportMetric(x, "x_big_vs_small")
	if x > stepTarget {
		b.Logf("TARGET NOT MET: x_big_vs_small = %.2f (1 MiB vs %d MiB base), want <= %.2f", x, bigMB, stepTarget)
	}
}

// BenchmarkBuildDemo builds testdata/demo (two stages, a dozen
// instructions, small files) into one store again and again, for
// regressions in the fixed cost of a build.
func BenchmarkBuildDemo(b *testing.B) {
	ctx := context.Background()
	st, err := layers.OpenStore(ctx, filepath.Join(b.TempDir(), "store"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	opts := builder.Options{Store: st, ContextDir: "../testdata/demo", Tags: []string{"demo:1"}}
	for b.Loop() {
		if _, err := builder.Build(ctx, opts); err != nil {
			b.Fatal(err)
		}
	}
}

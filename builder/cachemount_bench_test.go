package builder

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ibuild/ibuild/layers"
)

// BenchmarkCacheMountExport measures the export of one cache mount of
// IBUILD_BENCH_SIZE_MB MiB (default 64; files as a build cache holds:
// many small ones, some of a few MiB, half-compressible) with mounts=true: "changed"
// commits it (tar, gzip, two digests: every build that changed the
// cache pays this), "unchanged" finds its memo (a metadata walk: what a
// build that left the cache alone pays). Both run in every iteration, so
// the ratio is measured on the same machine state; it is reported as
// unchanged/changed. Figures are in docs/performance.md.
func BenchmarkCacheMountExport(b *testing.B) {
	mb := 64
	if v := os.Getenv("IBUILD_BENCH_SIZE_MB"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			b.Fatalf("IBUILD_BENCH_SIZE_MB=%q: want a size in MiB", v)
		}
		mb = n
	}
	st, err := layers.OpenStore(context.Background(), filepath.Join(b.TempDir(), "root"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	dir := filepath.Join(st.Root(), "cache", cacheDirName("bench"))
	if err := cacheFiles(dir, int64(mb)<<20); err != nil {
		b.Fatal(err)
	}
	opts := &Options{Store: st, Compression: layers.Gzip}
	cs := &cacheSession{}
	ctx := context.Background()
	memo := filepath.Join(st.Root(), "cache", "mounts", cacheDirName("bench")+".json")
	var changed, unchanged time.Duration
	b.SetBytes(int64(mb) << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		os.Remove(memo)
		t0 := time.Now()
		m1, err := cs.commitCacheMount(ctx, opts, "bench", dir, false)
		if err != nil {
			b.Fatal(err)
		}
		changed += time.Since(t0)
		time.Sleep(2 * racyTick) // let the memo outgrow the racy window
		t1 := time.Now()
		m2, err := cs.commitCacheMount(ctx, opts, "bench", dir, false)
		if err != nil {
			b.Fatal(err)
		}
		unchanged += time.Since(t1)
		if m1.Desc.Digest != m2.Desc.Digest {
			b.Fatalf("unchanged cache got digest %s, then %s", m1.Desc.Digest, m2.Desc.Digest)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(changed.Milliseconds())/float64(b.N), "ms-changed/op")
	b.ReportMetric(float64(unchanged.Milliseconds())/float64(b.N), "ms-unchanged/op")
	b.ReportMetric(float64(unchanged)/float64(changed), "unchanged/changed")
}

// cacheFiles writes size bytes of files under dir: mostly small files, a
// few large ones, of text-like (half-compressible) content.
func cacheFiles(dir string, size int64) error {
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 8<<20)
	for i := range buf {
		if r.IntN(2) == 0 {
			buf[i] = byte('a' + r.IntN(8))
		} else {
			buf[i] = byte(r.IntN(256))
		}
	}
	var total int64
	for i := 0; total < size; i++ {
		n := int64(1 + r.IntN(32<<10))
		if i%100 == 99 {
			n = int64(1<<20 + r.IntN(6<<20))
		}
		n = min(n, size-total)
		p := filepath.Join(dir, fmt.Sprintf("d%02d/f%06d", i%31, i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		off := r.IntN(len(buf) - int(n) + 1)
		if err := os.WriteFile(p, buf[off:off+int(n)], 0o644); err != nil {
			return err
		}
		total += n
	}
	return nil
}

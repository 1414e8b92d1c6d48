package builder_test

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/layers"
)

// multiArchTarget is the requirement: a two-platform build of a
// COPY-only Dockerfile costs at most 1.3x a one-platform build.
const multiArchTarget = 1.3

// multiArchSizeEnv sizes the benchmark's build context, in MiB.
const multiArchSizeEnv = "IBUILD_BENCH_MULTIARCH_MB"

// multiArchDockerfile copies three directories of the context, then all
// of it: about twice the context's size in layers.
const multiArchDockerfile = "FROM scratch\n" +
	"COPY files/d00/ /d00/\n" +
	"COPY files/d01/ /d01/\n" +
	"COPY files/d02/ /d02/\n" +
	"COPY files/ /all/\n" +
	"ARG TARGETARCH\n" +
	"LABEL arch=$TARGETARCH\n"

// BenchmarkMultiArchCopy compares a build of multiArchDockerfile for
// linux/amd64 and linux/arm64 (an index) with one for linux/amd64 only,
// each iteration timing one of each, in alternating order. Every build
// gets a context of its own content (the generated tree plus files naming
// the build), so no cache can reuse an earlier build's work: what a
// two-platform build may share is only what its own platforms have in
// common. It reports the medians and their ratio, x_two_vs_one.
func BenchmarkMultiArchCopy(b *testing.B) {
	mb := 8
	if v := os.Getenv(multiArchSizeEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			b.Fatalf("%s=%q: want a positive number of MiB", multiArchSizeEnv, v)
		}
		mb = n
	}
	ctx := context.Background()
	root := b.TempDir()
	st, err := layers.OpenStore(ctx, filepath.Join(root, "store"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	tmpl := filepath.Join(root, "template")
	if err := genFiles(filepath.Join(tmpl, "files"), int64(mb)<<20); err != nil {
		b.Fatal(err)
	}
	amd64, arm64 := v1.Platform{OS: "linux", Architecture: "amd64"}, v1.Platform{OS: "linux", Architecture: "arm64"}
	n := 0
	build := func(plats ...v1.Platform) time.Duration {
		n++
		dir := filepath.Join(root, "ctx-"+strconv.Itoa(n))
		if err := uniqueContext(tmpl, dir, fmt.Sprintf("build %d\n", n)); err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(dir)
		start := time.Now()
		if _, err := builder.Build(ctx, builder.Options{
			Store: st, ContextDir: dir, DockerfileContent: []byte(multiArchDockerfile),
			Platforms: plats, Tags: []string{"bench-multiarch:" + strconv.Itoa(len(plats))},
		}); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	build(amd64, arm64) // warm-up
	var ones, twos []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			ones = append(ones, build(amd64))
			twos = append(twos, build(amd64, arm64))
		} else {
			twos = append(twos, build(amd64, arm64))
			ones = append(ones, build(amd64))
		}
	}
	b.StopTimer()
	one, two := median(ones), median(twos)
	x := float64(two) / float64(one)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(ms(one), "one_ms")
	b.ReportMetric(ms(two), "two_ms")
	b.ReportMetric(x, "x_two_vs_one")
	b.Logf("%d MiB context, %d iterations: one platform %v, two platforms %v (medians)", mb, b.N, one.Round(time.Millisecond), two.Round(time.Millisecond))
	if x > multiArchTarget {
		b.Logf("TARGET NOT MET: x_two_vs_one = %.2f, want <= %.2f", x, multiArchTarget)
	}
}

// uniqueContext makes dir a context with src's files (hard links: the
// build only reads them) and, in every directory, a file holding id, so
// every COPY's content is new.
func uniqueContext(src, dir, id string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		dst := filepath.Join(dir, rel)
		if d.IsDir() {
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dst, "build-id"), []byte(id), 0o644)
		}
		return os.Link(p, dst)
	})
}

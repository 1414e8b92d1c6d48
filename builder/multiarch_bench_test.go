package builder_test

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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
// common. It reports the medians and their ratio, x_two_vs_one (the
// target), and the ratio of the CPU time the builds used,
// cpu_x_two_vs_one: on 2 cores the two platforms run side by side, so the
// wall-clock ratio hides duplicated work when the machine is idle and
// shows it when it is busy; the CPU ratio shows it either way.
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
	var oneCPU, twoCPU time.Duration
	build := func(plats ...v1.Platform) time.Duration {
		n++
		dir := filepath.Join(root, "ctx-"+strconv.Itoa(n))
		if err := uniqueContext(tmpl, dir, fmt.Sprintf("build %d\n", n)); err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(dir)
		cpu0 := cpuTime()
		start := time.Now()
		if _, err := builder.Build(ctx, builder.Options{
			Store: st, ContextDir: dir, DockerfileContent: []byte(multiArchDockerfile),
			Platforms: plats, Tags: []string{"bench-multiarch:" + strconv.Itoa(len(plats))},
		}); err != nil {
			b.Fatal(err)
		}
		elapsed, cpu := time.Since(start), cpuTime()-cpu0
		if len(plats) == 1 {
			oneCPU += cpu
		} else {
			twoCPU += cpu
		}
		return elapsed
	}
	build(amd64, arm64) // warm-up
	twoCPU = 0
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
	b.ReportMetric(float64(twoCPU)/float64(oneCPU), "cpu_x_two_vs_one")
	b.Logf("%d MiB context, %d iterations: one platform %v, two platforms %v (medians); CPU time two/one %.2f; load %s",
		mb, b.N, one.Round(time.Millisecond), two.Round(time.Millisecond), float64(twoCPU)/float64(oneCPU), loadAvg())
	if x > multiArchTarget {
		b.Logf("TARGET NOT MET: x_two_vs_one = %.2f, want <= %.2f", x, multiArchTarget)
	}
}

// cpuTime is the user and system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loadAvg is the 1-minute load average, for the log: wall-clock ratios
// on a shared 2-core machine depend on it.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(data))[0]
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

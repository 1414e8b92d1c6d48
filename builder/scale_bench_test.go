package builder

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ibuild/ibuild/layers"
)

// manyChildEnv tells TestManyInstructionsHelper what to build:
// "DOCKERFILE:ROOT".
const manyChildEnv = "IBUILD_BENCH_MANY_CHILD"

// manySizesEnv overrides the instruction counts BenchmarkManyInstructions
// tries (comma-separated).
const manySizesEnv = "IBUILD_BENCH_MANY"

// BenchmarkManyInstructions builds FROM scratch and n LABEL lines into a
// fresh store, for n = 1,000, 2,000, 4,000 and 10,000: a build's cost
// must grow linearly with its instruction count. Each build runs in a
// child process (this test binary, TestManyInstructionsHelper, with the
// CLI's GOGC=400 and GOMEMLIMIT=512MiB), which reports the build's time
// and its own peak resident set (VmHWM). It reports:
//
//   - build_s: builder.Build's time; us/step: the same per instruction;
//   - records_MB and records_B/step: the bytes of the cache records the
//     build wrote (file sizes), records_disk_MB: the disk space they take
//     (4 KiB blocks: one record a step);
//   - peak_rss_MB: the child's peak resident set (it includes the test
//     binary).
//
// Targets at 10,000 instructions: under 10 s, and under 100 MB of
// records. The records target is checked (bytes do not depend on the
// machine's load); the time target is logged.
func BenchmarkManyInstructions(b *testing.B) {
	sizes := []int{1000, 2000, 4000, 10000}
	if s := os.Getenv(manySizesEnv); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n <= 0 {
				b.Fatalf("%s=%q: want positive numbers, comma-separated", manySizesEnv, s)
			}
			sizes = append(sizes, n)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			dir := b.TempDir()
			df := filepath.Join(dir, "ctx", "Dockerfile")
			if err := os.Mkdir(filepath.Dir(df), 0o755); err != nil {
				b.Fatal(err)
			}
			if err := writeLabels(df, n); err != nil {
				b.Fatal(err)
			}
			var build time.Duration
			var peak, recBytes, recDisk int64
			b.ResetTimer()
			for i := range b.N {
				root := filepath.Join(dir, fmt.Sprintf("root%d", i))
				cmd := exec.Command(exe, "-test.run=^TestManyInstructionsHelper$", "-test.count=1", "-test.v")
				cmd.Env = append(os.Environ(), manyChildEnv+"="+df+":"+root, "GOGC=400", "GOMEMLIMIT=512MiB")
				out, err := cmd.CombinedOutput()
				if err != nil {
					b.Fatalf("child: %v\n%s", err, out)
				}
				d, hwm, err := parseManyChild(string(out))
				if err != nil {
					b.Fatalf("%v\n%s", err, out)
				}
				build += d
				peak = max(peak, hwm)
				size, disk, err := treeBytes(filepath.Join(root, "cache", "records"))
				if err != nil {
					b.Fatal(err)
				}
				recBytes, recDisk = size, disk
				if err := os.RemoveAll(root); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			perBuild := build / time.Duration(b.N)
			b.ReportMetric(perBuild.Seconds(), "build_s")
			b.ReportMetric(float64(perBuild.Microseconds())/float64(n), "us/step")
			b.ReportMetric(float64(recBytes)/1e6, "records_MB")
			b.ReportMetric(float64(recBytes)/float64(n), "records_B/step")
			b.ReportMetric(float64(recDisk)/1e6, "records_disk_MB")
			b.ReportMetric(float64(peak)/1e6, "peak_rss_MB")
			b.Logf("%d instructions: build %.2fs (%.0f us a step), records %d bytes (%.0f a step, %.1f MB on disk), peak RSS %.1f MB",
				n, perBuild.Seconds(), float64(perBuild.Microseconds())/float64(n), recBytes, float64(recBytes)/float64(n), float64(recDisk)/1e6, float64(peak)/1e6)
			if n >= 10000 {
				if perBuild > 10*time.Second*time.Duration(n)/10000 {
					b.Logf("TARGET NOT MET: %d instructions took %v (target: 10 s for 10,000)", n, perBuild)
				}
				if recBytes > 100e6*int64(n)/10000 {
					b.Errorf("%d instructions wrote %d bytes of cache records (target: under 100 MB for 10,000)", n, recBytes)
				}
			}
		})
	}
}

// TestManyInstructionsHelper is BenchmarkManyInstructions' child: it
// builds the Dockerfile into a new store at the root manyChildEnv names
// and prints the build's time and its own peak resident set.
func TestManyInstructionsHelper(t *testing.T) {
	spec := os.Getenv(manyChildEnv)
	if spec == "" {
		t.Skip("run by BenchmarkManyInstructions")
	}
	df, root, ok := strings.Cut(spec, ":")
	if !ok {
		t.Fatalf("%s=%q: want DOCKERFILE:ROOT", manyChildEnv, spec)
	}
	ctx := context.Background()
	st, err := layers.OpenStore(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	start := time.Now()
	if _, err := Build(ctx, Options{Store: st, ContextDir: filepath.Dir(df), Dockerfile: df, Tags: []string{"many:1"}}); err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	hwm, err := peakRSS()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("ibuild-many build_ns=%d vmhwm=%d\n", d.Nanoseconds(), hwm)
}

func parseManyChild(out string) (time.Duration, int64, error) {
	for _, l := range strings.Split(out, "\n") {
		var ns, hwm int64
		if _, err := fmt.Sscanf(strings.TrimSpace(l), "ibuild-many build_ns=%d vmhwm=%d", &ns, &hwm); err == nil {
			return time.Duration(ns), hwm, nil
		}
	}
	return 0, 0, errors.New("the child printed no result")
}

// writeLabels writes FROM scratch and n LABEL lines to p.
func writeLabels(p string, n int) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	w.WriteString("FROM scratch\n")
	for i := range n {
		fmt.Fprintf(w, "LABEL label%d=value%d\n", i, i)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// treeBytes sums the sizes of the files under dir, and the disk space
// they take.
func treeBytes(dir string) (size, disk int64, err error) {
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		size += fi.Size()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			disk += st.Blocks * 512
		}
		return nil
	})
	return size, disk, err
}

// peakRSS is this process's peak resident set in bytes (VmHWM).
func peakRSS() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmHWM %q: %w", v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("no VmHWM in /proc/self/status")
}

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// matrixLoopEnv sets how many shell loop turns the benchmark's RUN step
// makes (its CPU work, under qemu for arm64).
const matrixLoopEnv = "IBUILD_BENCH_MATRIX_LOOP"

// runIbuild runs the ibuild binary with a store root and fails b when it
// fails.
func runIbuild(b *testing.B, root string, args ...string) string {
	b.Helper()
	cmd := exec.Command(ibuildBin, append([]string{"--root", root}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=")
	if err := cmd.Run(); err != nil {
		b.Fatalf("ibuild %v: %v\n%s", args, err, errb.String())
	}
	return out.String()
}

// BenchmarkCIMatrix compares a CI matrix with one process building both
// platforms. Each iteration builds a context of its own (so nothing is
// cached) whose Dockerfile RUNs a shell loop (IBUILD_BENCH_MATRIX_LOOP
// turns, 300000 by default) on a busybox base, for linux/amd64 and
// linux/arm64 (under qemu): once in one process (--platform both,
// --push), and as a matrix: two processes with their own roots, run at
// once, each pushing its platform by digest, then a merge in a fresh
// root (manifest create, add, add, push). It reports the medians of the
// one-process build (one_ms), of each runner (amd64_runner_ms,
// arm64_runner_ms: arm64 under qemu here, native on an arm64 runner), of
// the slower runner (runner_ms: the matrix's critical path when runners
// are separate machines), of the
// merge (merge_ms), of the whole matrix on this machine (matrix_ms:
// runners side by side, then the merge), the ratio x_matrix_vs_one, and
// the bytes the merge moved through the registry (merge_bytes: request
// and response bodies, both directions, counted at a proxy) and of those
// the blob upload bytes (merge_upload_bytes).
func BenchmarkCIMatrix(b *testing.B) {
	if os.Geteuid() != 0 {
		layertest.SkipOrFail(b, "RUN needs root")
	}
	ems, err := builder.Emulators()
	if err != nil {
		b.Fatal(err)
	}
	if !slices.ContainsFunc(ems, func(e builder.Emulator) bool { return e.Arch == "arm64" && e.Enabled && e.FixBinary }) {
		layertest.SkipOrFail(b, "no arm64 binfmt_misc handler with the F flag (.ci/binfmt.sh registers one)")
	}
	loop := 300000
	if v := os.Getenv(matrixLoopEnv); v != "" {
		if loop, err = strconv.Atoi(v); err != nil || loop < 0 {
			b.Fatalf("%s=%q: want a count", matrixLoopEnv, v)
		}
	}
	reg := registrytest.Start(b)
	px := registrytest.NewProxy(b, reg.Host)
	base := reg.Host + "/busybox:multi"
	registrytest.PushBusyboxIndex(b, base,
		v1.Platform{OS: "linux", Architecture: "amd64"},
		v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"})
	var one, runner, merge, matrix, amd, arm []time.Duration
	var mergeBytes, mergeUploads []int64
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		ctxDir := b.TempDir()
		df := fmt.Sprintf("FROM %s\nARG TARGETARCH\nRUN i=0; while [ $i -lt %d ]; do i=$((i+1)); done; uname -m > /arch\nCOPY app.txt /app.txt\n", base, loop)
		for name, body := range map[string]string{"Dockerfile": df, "app.txt": fmt.Sprintf("iteration %d %d\n", i, time.Now().UnixNano())} {
			if err := os.WriteFile(filepath.Join(ctxDir, name), []byte(body), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		repo := px.Host + fmt.Sprintf("/bench/app%d", i)
		b.StartTimer()

		start := time.Now()
		runIbuild(b, b.TempDir(), "build", "-q", "--source-date-epoch", matrixEpoch, "--platform", "linux/amd64,linux/arm64", "--push", "-t", repo+":single", ctxDir)
		one = append(one, time.Since(start))

		start = time.Now()
		platforms := []string{"linux/amd64", "linux/arm64"}
		digests := make([]string, len(platforms))
		took := make([]time.Duration, len(platforms))
		var wg sync.WaitGroup
		for j, p := range platforms {
			meta := filepath.Join(b.TempDir(), "m.json")
			root := b.TempDir()
			wg.Add(1)
			go func() {
				defer wg.Done()
				t0 := time.Now()
				runIbuild(b, root, "build", "-q", "--source-date-epoch", matrixEpoch, "--platform", p,
					"--output", "type=image,name="+repo+",push-by-digest=true,push=true", "--metadata-file", meta, ctxDir)
				took[j] = time.Since(t0)
				var m map[string]any
				if raw, err := os.ReadFile(meta); err == nil && json.Unmarshal(raw, &m) == nil {
					digests[j], _ = m["containerimage.digest"].(string)
				}
			}()
		}
		wg.Wait()
		runner = append(runner, max(took[0], took[1]))
		amd, arm = append(amd, took[0]), append(arm, took[1])
		px.Transferred()
		px.Uploaded()
		mstart := time.Now()
		root := b.TempDir()
		runIbuild(b, root, "manifest", "create", "l")
		for _, d := range digests {
			runIbuild(b, root, "manifest", "add", "l", "docker://"+repo+"@"+d)
		}
		runIbuild(b, root, "manifest", "push", "-q", "l", "docker://"+repo+":merged")
		merge = append(merge, time.Since(mstart))
		matrix = append(matrix, time.Since(start))
		sent, received := px.Transferred()
		mergeBytes = append(mergeBytes, sent+received)
		mergeUploads = append(mergeUploads, px.Uploaded())

		b.StopTimer()
		if a, c := skopeoDigest(b, reg.Host+fmt.Sprintf("/bench/app%d:single", i)), skopeoDigest(b, reg.Host+fmt.Sprintf("/bench/app%d:merged", i)); a != c {
			b.Fatalf("merged index %s differs from the one-process index %s", c, a)
		}
		b.StartTimer()
	}
	b.StopTimer()
	med := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	medInt := func(ns []int64) int64 {
		s := slices.Clone(ns)
		slices.Sort(s)
		return s[len(s)/2]
	}
	b.ReportMetric(float64(med(one).Milliseconds()), "one_ms")
	b.ReportMetric(float64(med(runner).Milliseconds()), "runner_ms")
	b.ReportMetric(float64(med(amd).Milliseconds()), "amd64_runner_ms")
	b.ReportMetric(float64(med(arm).Milliseconds()), "arm64_runner_ms")
	b.ReportMetric(float64(med(merge).Milliseconds()), "merge_ms")
	b.ReportMetric(float64(med(matrix).Milliseconds()), "matrix_ms")
	b.ReportMetric(float64(med(matrix))/float64(med(one)), "x_matrix_vs_one")
	b.ReportMetric(float64(med(runner)+med(merge))/float64(med(one)), "x_critical_path_vs_one")
	b.ReportMetric(float64(medInt(mergeBytes)), "merge_bytes")
	b.ReportMetric(float64(medInt(mergeUploads)), "merge_upload_bytes")
	b.ReportMetric(0, "ns/op")
}

// skopeoDigest is the digest of ref's manifest in its registry.
func skopeoDigest(b *testing.B, ref string) string {
	b.Helper()
	out, err := exec.Command(layertest.RequireTool(b, "skopeo"), "inspect", "--raw", "--tls-verify=false", "docker://"+ref).Output()
	if err != nil {
		b.Fatalf("skopeo inspect --raw %s: %v", ref, err)
	}
	h, _, err := v1.SHA256(bytes.NewReader(out))
	if err != nil {
		b.Fatal(err)
	}
	return h.String()
}

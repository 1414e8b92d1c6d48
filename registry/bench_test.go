package registry_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// benchLayers is how many layers the benchmark image has.
const benchLayers = 5

// benchImage is the benchmark image, made once per process: a store
// holding it as "bench:1", an OCI layout of it (name "bench") and its
// total layer content in bytes.
var benchImage struct {
	once   sync.Once
	root   string
	store  *layers.Store
	img    v1.Image
	layout string
	size   int64
	blobs  int64 // compressed layer bytes
	err    error
}

// benchPushMB is IBUILD_BENCH_PUSH_MB, the image's content size in MiB
// (64 by default; `make bench` passes 500).
func benchPushMB() (int, error) {
	s := os.Getenv("IBUILD_BENCH_PUSH_MB")
	if s == "" {
		return 64, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("IBUILD_BENCH_PUSH_MB=%q: want a positive number of MiB", s)
	}
	return n, nil
}

// genLayerDir writes about size bytes into dir as 4 MiB files: seven in
// eight are text of random words from a small vocabulary (about 3:1 under
// gzip), one in eight is random bytes.
func genLayerDir(dir string, size int64, seed uint64) (int64, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	words := []string{"layer", "image", "registry", "blob", "manifest", "config", "the", "of", "and", "func",
		"return", "error", "context", "digest", "sha256", "push", "pull", "tar", "gzip", "store", "0x1f", "{", "}", "\n"}
	r := rand.New(rand.NewPCG(seed, 42))
	const fileSize = 4 << 20
	buf := make([]byte, 0, fileSize+64)
	var total int64
	for i := 0; total < size; i++ {
		n := min(int64(fileSize), size-total)
		buf = buf[:0]
		if i%8 == 7 {
			buf = buf[:n]
			for j := 0; j+8 <= len(buf); j += 8 {
				v := r.Uint64()
				for k := range 8 {
					buf[j+k] = byte(v >> (8 * k))
				}
			}
		} else {
			for int64(len(buf)) < n {
				buf = append(buf, words[r.IntN(len(words))]...)
				buf = append(buf, ' ')
			}
			buf = buf[:n]
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%04d", i)), buf, 0o644); err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// setupBenchImage makes benchImage: benchLayers layers committed with
// layers.CommitDir (gzip) into a store, the image tagged bench:1, and its
// OCI layout written with registry.WriteOCILayout.
func setupBenchImage(b *testing.B) {
	b.Helper()
	bi := &benchImage
	bi.once.Do(func() {
		mb, err := benchPushMB()
		if err != nil {
			bi.err = err
			return
		}
		ctx := context.Background()
		if bi.root, err = os.MkdirTemp("", "ibuild-bench-registry-"); err != nil {
			bi.err = err
			return
		}
		start := time.Now()
		if bi.store, err = layers.OpenStore(ctx, filepath.Join(bi.root, "store")); err != nil {
			bi.err = err
			return
		}
		img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
		per := int64(mb) << 20 / benchLayers
		for i := range benchLayers {
			dir := filepath.Join(bi.root, "tree", strconv.Itoa(i))
			n, err := genLayerDir(dir, per, uint64(i+1))
			if err != nil {
				bi.err = err
				return
			}
			bi.size += n
			d, err := bi.store.Blobs().CommitDir(ctx, dir, layers.CommitOptions{Compression: layers.Gzip})
			if err != nil {
				bi.err = err
				return
			}
			bi.blobs += d.Size
			if img, err = mutate.Append(img, mutate.Addendum{Layer: bi.store.Blobs().Layer(d), MediaType: d.MediaType}); err != nil {
				bi.err = err
				return
			}
			os.RemoveAll(dir)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			bi.err = err
			return
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture = "linux", "amd64"
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			bi.err = err
			return
		}
		desc, err := bi.store.WriteImage(ctx, img)
		if err != nil {
			bi.err = err
			return
		}
		if err = bi.store.Tag(ctx, "bench:1", desc); err != nil {
			bi.err = err
			return
		}
		if bi.img, err = bi.store.Image(ctx, desc.Digest); err != nil {
			bi.err = err
			return
		}
		bi.layout = filepath.Join(bi.root, "layout")
		if bi.err = registry.WriteOCILayout(ctx, bi.layout, bi.img, nil, "bench"); bi.err != nil {
			return
		}
		b.Logf("made a %d MiB, %d-layer image (%.1f MB of gzip layers) and its OCI layout in %v",
			mb, benchLayers, float64(bi.blobs)/1e6, time.Since(start).Round(time.Millisecond))
	})
	if bi.err != nil {
		b.Fatal(bi.err)
	}
}

// cleanupBenchImage removes benchImage's files; TestMain calls it.
func cleanupBenchImage() {
	if benchImage.store != nil {
		benchImage.store.Close()
	}
	if benchImage.root != "" {
		os.RemoveAll(benchImage.root)
	}
}

// runTool runs a command and fails b with its output when it fails.
func runTool(b *testing.B, name string, args ...string) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, name, args...).CombinedOutput(); err != nil {
		b.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// alternate runs ours then theirs in even iterations and the other way
// round in odd ones, so neither always gets the warmer caches.
func alternate(i int, ours, theirs func()) {
	if i%2 == 0 {
		ours()
		theirs()
	} else {
		theirs()
		ours()
	}
}

// BenchmarkRegistryPush pushes the benchmark image (IBUILD_BENCH_PUSH_MB
// MiB of content in 5 gzip layers) to a new repository of a local
// docker-registry with registry.Push, and in the same iteration the same
// image from its OCI layout with `skopeo copy oci:... docker://...` to
// another new repository, both of a docker-registry started for the
// iteration, so no blob is skipped; the two alternate which goes first. ns/op and MB/s are ours;
// x_vs_skopeo is our time / skopeo's (target <= 1).
func BenchmarkRegistryPush(b *testing.B) {
	setupBenchImage(b)
	skopeo := layertest.RequireTool(b, "skopeo")
	ctx := context.Background()
	var ours, theirs time.Duration
	b.SetBytes(benchImage.size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// A new registry each time: skopeo's blob info cache would
		// otherwise mount the blobs it pushed before instead of
		// uploading them.
		b.StopTimer()
		reg := registrytest.Start(b)
		b.StartTimer()
		ourRun := func() {
			start := time.Now()
			if _, err := registry.Push(ctx, benchImage.store, "bench:1", fmt.Sprintf("%s/ours%d:1", reg.Host, i), registry.PushOptions{}); err != nil {
				b.Fatal(err)
			}
			ours += time.Since(start)
		}
		skopeoRun := func() {
			b.StopTimer()
			start := time.Now()
			runTool(b, skopeo, "copy", "-q", "--dest-tls-verify=false", "oci:"+benchImage.layout+":bench", fmt.Sprintf("docker://%s/skopeo%d:1", reg.Host, i))
			theirs += time.Since(start)
			b.StartTimer()
		}
		alternate(i, ourRun, skopeoRun)
	}
	b.ReportMetric(float64(ours)/float64(theirs), "x_vs_skopeo")
	b.ReportMetric(float64(benchImage.size)/1e6/theirs.Seconds()*float64(b.N), "skopeo_MB/s")
}

// BenchmarkRegistryPull pulls the benchmark image from a local
// docker-registry with registry.Pull into a new store, and in the same
// iteration with `skopeo copy docker://... oci:NEWDIR`, alternating which goes first. ns/op and MB/s
// are ours; x_vs_skopeo is our time / skopeo's (target <= 1).
func BenchmarkRegistryPull(b *testing.B) {
	setupBenchImage(b)
	skopeo := layertest.RequireTool(b, "skopeo")
	reg := registrytest.Start(b)
	ctx := context.Background()
	ref := reg.Host + "/bench:1"
	if _, err := registry.Push(ctx, benchImage.store, "bench:1", ref, registry.PushOptions{}); err != nil {
		b.Fatal(err)
	}
	tmp, err := os.MkdirTemp(benchImage.root, "pull-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	var ours, theirs time.Duration
	b.SetBytes(benchImage.size)
	b.ResetTimer()
	want, _ := benchImage.img.Digest()
	for i := 0; i < b.N; i++ {
		ourRun := func() {
			dir := filepath.Join(tmp, fmt.Sprintf("store%d", i))
			start := time.Now()
			st, err := layers.OpenStore(ctx, dir)
			if err != nil {
				b.Fatal(err)
			}
			d, err := registry.Pull(ctx, st, ref, registry.PullOptions{})
			if err != nil {
				b.Fatal(err)
			}
			ours += time.Since(start)
			b.StopTimer()
			if d.Digest != want {
				b.Fatalf("pulled %s, pushed %s", d.Digest, want)
			}
			st.Close()
			os.RemoveAll(dir)
			b.StartTimer()
		}
		skopeoRun := func() {
			b.StopTimer()
			out := filepath.Join(tmp, fmt.Sprintf("oci%d", i))
			start := time.Now()
			runTool(b, skopeo, "copy", "-q", "--src-tls-verify=false", "docker://"+ref, "oci:"+out+":bench")
			theirs += time.Since(start)
			os.RemoveAll(out)
			b.StartTimer()
		}
		alternate(i, ourRun, skopeoRun)
	}
	b.ReportMetric(float64(ours)/float64(theirs), "x_vs_skopeo")
	b.ReportMetric(float64(benchImage.size)/1e6/theirs.Seconds()*float64(b.N), "skopeo_MB/s")
}

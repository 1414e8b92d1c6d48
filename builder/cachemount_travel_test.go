package builder

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// travelDockerfile writes into a cache mount and copies what the mount
// holds into the image, so a test can see what a runner found there.
// The seeded cache (from=seed) is an overlay over the seed stage:
// removing a seed file leaves a whiteout in its upper directory.
const travelDockerfile = `FROM scratch AS seed
COPY seed.txt /seed.txt
COPY gone.txt /gone.txt

FROM busybox:1
ARG RUNNER=a
RUN --mount=type=cache,id=c,target=/c --mount=type=secret,id=tok,target=/c/tok \
    cat /c/tok > /dev/null && echo "$RUNNER" >> /c/log && cp /c/log /seen
RUN --mount=type=cache,id=s,from=seed,target=/s \
    rm -f /s/gone.txt && echo "$RUNNER" >> /s/runs && ls /s > /seeded && cp /s/runs /seeded-runs
`

const travelSecret = "S3CRET-token-never-in-a-cache"

// travelBuild builds travelDockerfile as RUNNER in st, with cache options.
func travelBuild(t *testing.T, st *layers.Store, runner string, set func(o *Options)) map[string]string {
	t.Helper()
	busyboxBase(t, st)
	dir := writeContext(t, map[string]string{"Dockerfile": travelDockerfile, "seed.txt": "seed\n", "gone.txt": "gone\n"})
	e := epoch
	o := Options{Store: st, ContextDir: dir, StepOptions: StepOptions{SourceDateEpoch: &e, Secrets: map[string]SecretSource{"tok": {Value: []byte(travelSecret)}}}, BuildArgs: map[string]string{"RUNNER": runner}}
	if set != nil {
		set(&o)
	}
	res, err := Build(context.Background(), o)
	if err != nil {
		t.Fatalf("runner %s: %v", runner, err)
	}
	return imageFiles(t, res.Image)
}

func localExport(t *testing.T, dir string, mounts bool) CacheExporter {
	t.Helper()
	exp, err := registry.NewCacheExport(registry.CacheSpec{Type: registry.CacheTypeLocal, Dest: dir, Mode: registry.CacheModeMax, Mounts: mounts}, registry.CacheOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return exp
}

func localImport(t *testing.T, st *layers.Store, dir string) *registry.Cache {
	t.Helper()
	c, err := registry.ImportLocalCache(context.Background(), dir, "", registry.CacheOptions{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if c.Warning != "" {
		t.Fatal(c.Warning)
	}
	return c
}

// TestCacheMountsTravel is issue 16's done-when: runner A's RUN
// --mount=type=cache writes a file and exports with mounts=true; runner B
// (a fresh root, another build arg so the step runs) finds the file in
// the mount. Through the Debian registry and through a local OCI layout
// directory; a seeded (from=) cache travels as its overlay upper
// directory, whiteouts included; an unchanged mount is not uploaded
// again; the secret mounted inside the cache directory is in no blob.
func TestCacheMountsTravel(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: six builds with RUN steps and a registry")
	}
	reg := registrytest.Start(t)
	proxy := registrytest.NewProxy(t, reg.Host)
	ref := proxy.Host + "/travel/app:cache"
	ctx := context.Background()
	regExport := func(t *testing.T) CacheExporter {
		t.Helper()
		spec, err := registry.ParseCacheSpec("type=registry,ref=" + ref + ",mode=max,mounts=true")
		if err != nil {
			t.Fatal(err)
		}
		exp, err := registry.NewCacheExport(spec, registry.CacheOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return exp
	}

	// Runner A: a fresh root, exports with mounts=true.
	stA := newStore(t)
	a := travelBuild(t, stA, "a", func(o *Options) { o.CacheTo = []CacheExporter{regExport(t)} })
	if a["/seen"] != "a\n" || a["/seeded"] != "runs\nseed.txt\n" {
		t.Fatalf("runner a: /seen %q, /seeded %q", a["/seen"], a["/seeded"])
	}

	// Runner B: a fresh root with --cache-from; RUNNER=b makes the steps
	// run, and they find what A left.
	stB := newStore(t)
	b := travelBuild(t, stB, "b", func(o *Options) {
		o.CacheFrom = []CacheSource{importCache(t, stB, ref)}
		o.CacheTo = []CacheExporter{regExport(t)}
	})
	if b["/seen"] != "a\nb\n" {
		t.Fatalf("runner b saw %q in the cache mount, want a's line then its own", b["/seen"])
	}
	if b["/seeded"] != "runs\nseed.txt\n" || b["/seeded-runs"] != "a\nb\n" {
		t.Fatalf("runner b's seeded cache: ls %q, runs %q (want gone.txt still removed, a's run kept)", b["/seeded"], b["/seeded-runs"])
	}

	// Export again from B with nothing changed in the mounts: no blob of
	// a cache mount is uploaded again (the records changed: the new
	// steps' layers are uploaded, the mounts' are not).
	proxy.Uploaded()
	cB := importCache(t, stB, ref)
	mounts := cB.CacheMounts()
	if len(mounts) != 2 {
		t.Fatalf("the cache holds %d mounts, want 2 (c and s)", len(mounts))
	}
	var sizes int64
	for _, m := range mounts {
		sizes += m.Desc.Size
	}
	travelBuild(t, stB, "b", func(o *Options) { o.CacheTo = []CacheExporter{regExport(t)} })
	if up := proxy.Uploaded(); up != 0 {
		t.Errorf("a rebuild with unchanged cache mounts uploaded %d bytes (the mounts are %d bytes)", up, sizes)
	}
	for _, m := range importCache(t, stB, ref).CacheMounts() {
		found := false
		for _, o := range mounts {
			found = found || (o.Instance == m.Instance && o.Desc.Digest == m.Desc.Digest)
		}
		if !found {
			t.Errorf("mount %s got a new digest %s without a change", m.ID, m.Desc.Digest)
		}
	}

	// The same through a local cache directory.
	local := filepath.Join(t.TempDir(), "cache")
	stC := newStore(t)
	travelBuild(t, stC, "c", func(o *Options) { o.CacheTo = []CacheExporter{localExport(t, local, true)} })
	stD := newStore(t)
	d := travelBuild(t, stD, "d", func(o *Options) {
		o.CacheFrom = []CacheSource{localImport(t, stD, local)}
		o.CacheTo = []CacheExporter{localExport(t, local, true)}
	})
	if d["/seen"] != "c\nd\n" || d["/seeded-runs"] != "c\nd\n" {
		t.Fatalf("runner d (local cache) saw %q and %q, want c's lines then its own", d["/seen"], d["/seeded-runs"])
	}
	// Without mounts=true nothing of the mounts is exported.
	plain := filepath.Join(t.TempDir(), "plain")
	travelBuild(t, newStore(t), "e", func(o *Options) { o.CacheTo = []CacheExporter{localExport(t, plain, false)} })
	if n := len(localImport(t, newStore(t), plain).CacheMounts()); n != 0 {
		t.Fatalf("mounts=false exported %d mounts", n)
	}
	// The local directory keeps only the blobs its cache names.
	names := map[string]bool{}
	c := localImport(t, newStore(t), local)
	for _, m := range c.CacheMounts() {
		names[m.Desc.Digest.Hex] = true
	}
	ents, _ := os.ReadDir(filepath.Join(local, "blobs", "sha256"))
	if len(ents) == 0 || len(names) != 2 {
		t.Fatalf("local cache: %d blobs, %d mounts", len(ents), len(names))
	}

	// No secret in any blob, in either cache.
	for _, dir := range []string{local} {
		blobs, _ := filepath.Glob(filepath.Join(dir, "blobs", "sha256", "*"))
		for _, p := range blobs {
			if blobHolds(t, p, travelSecret) {
				t.Errorf("blob %s holds the secret", p)
			}
		}
	}
	for _, m := range mounts {
		rc, err := m.Layer.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		if bytes.Contains(b, []byte(travelSecret)) {
			t.Errorf("registry mount %s holds the secret", m.ID)
		}
		if m.ID == "c" && !strings.Contains(tarNames(t, b), "log") {
			t.Errorf("mount c holds %s, no log", tarNames(t, b))
		}
	}
	_ = ctx
}

// blobHolds reports whether the (possibly compressed) blob at p holds s.
func blobHolds(t *testing.T, p, s string) bool {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rc, err := layers.Decompress(f)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(b, []byte(s))
}

// tarNames lists the entries of a tar.
func tarNames(t *testing.T, b []byte) string {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var names []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
	}
	return strings.Join(names, " ")
}

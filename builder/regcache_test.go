package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// regcacheDockerfile builds a busybox root file system from scratch and
// then works in it, so every layer of the image is a step of this build
// (and all of them come from the registry cache in a fresh root). The
// stamp step writes the time in nanoseconds: its layer differs whenever
// it runs.
const regcacheDockerfile = `FROM scratch
COPY busybox /bin/busybox
COPY etc/ /etc/
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY app/ /app/
RUN cat /proc/sys/kernel/random/uuid > /stamp
RUN cat /app/a.txt > /app/built && echo done >> /app/built
COPY --link late.txt /late.txt
`

// regcacheContext writes the context of regcacheDockerfile (with
// late.txt and app/a.txt as given).
func regcacheContext(t *testing.T, dockerfile, a, late string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("RUN steps and a registry: skipped with -short")
	}
	if os.Geteuid() != 0 {
		layertest.SkipOrFail(t, "registry cache tests run RUN steps: they need root")
	}
	bb := layertest.RequireTool(t, "/bin/busybox")
	dir := writeContext(t, map[string]string{
		"Dockerfile": dockerfile,
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":  "root:x:0:\n",
		"app/a.txt":  a,
		"late.txt":   late,
		"app.txt":    "app\n",
	})
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "busybox"), string(data), 0o755)
	return dir
}

// regBuild builds dir in st with SOURCE_DATE_EPOCH and returns the result
// and its steps.
func regBuild(t *testing.T, st *layers.Store, dir string, set func(o *Options)) (*Result, *stepLog) {
	t.Helper()
	log := &stepLog{}
	e := epoch
	o := Options{Store: st, ContextDir: dir, StepOptions: StepOptions{SourceDateEpoch: &e, Progress: log}, Tags: []string{"app:1"}}
	if set != nil {
		set(&o)
	}
	res, err := Build(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	return res, log
}

// importCache imports ref for st, through the registry cache's public API.
func importCache(t *testing.T, st *layers.Store, ref string) *registry.Cache {
	t.Helper()
	c, err := registry.ImportCache(context.Background(), ref, registry.CacheOptions{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if c.Warning != "" {
		t.Fatalf("import %s: %s", ref, c.Warning)
	}
	return c
}

func exportTo(t *testing.T, ref, mode string) CacheExporter {
	t.Helper()
	spec, err := registry.ParseCacheSpec("type=registry,ref=" + ref + ",mode=" + mode)
	if err != nil {
		t.Fatal(err)
	}
	exp, err := registry.NewCacheExport(spec, registry.CacheOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return exp
}

func layerDigests(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]v1.Hash, len(m.Layers))
	for i, l := range m.Layers {
		out[i] = l.Digest
	}
	return out
}

// blobTraffic sums up proxy requests: GETs per blob digest, and cross-
// repository mount requests.
func blobTraffic(reqs []string) (gets map[string]int, mounts int) {
	gets = map[string]int{}
	for _, r := range reqs {
		if strings.HasPrefix(r, "GET ") && strings.Contains(r, "/blobs/sha256:") {
			gets[r[strings.Index(r, "/blobs/")+len("/blobs/"):]]++
		}
		if strings.HasPrefix(r, "POST ") && strings.Contains(r, "/blobs/uploads/") && strings.Contains(r, "mount=") && strings.Contains(r, "from=") {
			mounts++
		}
	}
	return gets, mounts
}

func configSize(t *testing.T, img v1.Image) int64 {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	return m.Config.Size
}

// TestRegistryCacheAcrossRoots is issue 6's "fresh root with --cache-from"
// test: root A builds, exports its cache (mode=max) and pushes; fresh
// roots then build the same context from that cache without running a
// step, push without moving layer bytes, and rebuild only what a changed
// file affects, fetching cached layers only when a step needs them.
func TestRegistryCacheAcrossRoots(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Start(t)
	px := registrytest.NewProxy(t, reg.Host)
	cacheRef := px.Host + "/cache/app:buildcache"
	dir := regcacheContext(t, regcacheDockerfile, "a1\n", "late1\n")

	// Root A: build, export the cache, push.
	stA := newStore(t)
	resA, logA := regBuild(t, stA, dir, func(o *Options) {
		o.CacheTo = []CacheExporter{exportTo(t, cacheRef, registry.CacheModeMax)}
		o.Push = []string{px.Host + "/app:1"}
	})
	if got := logA.pattern("stage-0"); got != "MMMMMMM" {
		t.Fatalf("root A: steps %s, want all run", got)
	}
	if !resA.Stored || len(resA.Pushed) != 1 || resA.Pushed[0].Digest != resA.Digest {
		t.Fatalf("root A: stored %v, pushed %+v, digest %s", resA.Stored, resA.Pushed, resA.Digest)
	}
	layersA := layerDigests(t, resA.Image)
	if len(layersA) != 7 {
		t.Fatalf("root A: %d layers, want 7", len(layersA))
	}

	t.Run("fresh-root-runs-nothing", func(t *testing.T) {
		stB := newStore(t)
		c := importCache(t, stB, cacheRef)
		if c.Len() != 7 {
			t.Fatalf("cache has %d records, want 7", c.Len())
		}
		resB, logB := regBuild(t, stB, dir, func(o *Options) { o.CacheFrom = []CacheSource{c} })
		if got := logB.pattern("stage-0"); got != "HHHHHHH" {
			t.Fatalf("fresh root: steps %s, want every step cached:\n%s", got, logB.reasons())
		}
		if resB.Digest != resA.Digest || resB.ID != resA.ID {
			t.Fatalf("fresh root gave %s (ID %s), root A %s (ID %s)", resB.Digest, resB.ID, resA.Digest, resA.ID)
		}
		// The stamp layer holds the time it ran in nanoseconds: the same
		// digest means the RUN did not run again.
		if got := layerDigests(t, resB.Image); got[4] != layersA[4] {
			t.Fatalf("stamp layer %s, root A %s: the RUN ran", got[4], layersA[4])
		}
		// Without --push the store needs the image, so the layers were
		// downloaded and the result stored.
		if !resB.Stored {
			t.Fatal("a build without push was not stored")
		}
		for _, d := range layersA {
			if !stB.Blobs().Has(d) {
				t.Fatalf("layer %s not stored", d)
			}
		}
		// The steps taken from the registry are now the store's own: a
		// build without --cache-from hits them too.
		if _, logB2 := regBuild(t, stB, dir, nil); logB2.pattern("stage-0") != "HHHHHHH" {
			t.Fatalf("build after the import without --cache-from: steps %s:\n%s", logB2.pattern("stage-0"), logB2.reasons())
		}
	})

	t.Run("push-mounts-without-downloading", func(t *testing.T) {
		stC := newStore(t)
		c := importCache(t, stC, cacheRef)
		px.Requests()
		px.Uploaded()
		dest, same := px.Host+"/deploy/app:2", px.Host+"/app:3"
		resC, logC := regBuild(t, stC, dir, func(o *Options) {
			o.CacheFrom = []CacheSource{c}
			o.Push = []string{dest, same}
		})
		if got := logC.pattern("stage-0"); got != "HHHHHHH" {
			t.Fatalf("steps %s, want every step cached", got)
		}
		gets, mounts := blobTraffic(px.Requests())
		if len(gets) != 0 {
			t.Fatalf("the build downloaded blobs: %v", gets)
		}
		// deploy/app is a new repository: every layer is mounted from the
		// cache's, and only the image config is uploaded; app already has
		// everything (root A pushed it there).
		if mounts != len(layersA) {
			t.Fatalf("%d mounts, want %d", mounts, len(layersA))
		}
		if up, cfg := px.Uploaded(), configSize(t, resA.Image); up != cfg {
			t.Fatalf("uploaded %d bytes, want only the %d-byte config", up, cfg)
		}
		if resC.Stored || len(resC.Pushed) != 2 || resC.Pushed[0].Digest != resA.Digest || resC.Pushed[1].Digest != resA.Digest {
			t.Fatalf("stored %v, pushed %+v; want not stored, pushed as %s", resC.Stored, resC.Pushed, resA.Digest)
		}
		if !strings.Contains(strings.Join(resC.Warnings, "\n"), "was pushed but not stored locally: 7 layers came from the registry cache") {
			t.Fatalf("warnings: %q", resC.Warnings)
		}
		if _, err := stC.Lookup(ctx, "app:1"); err == nil {
			t.Fatal("the unstored result was tagged")
		}
		skopeo := layertest.RequireTool(t, "skopeo")
		raw, err := exec.Command(skopeo, "inspect", "--raw", "--tls-verify=false", "docker://"+dest).Output()
		if err != nil {
			t.Fatalf("skopeo inspect %s: %v", dest, err)
		}
		sum := sha256.Sum256(raw)
		if got := "sha256:" + hex.EncodeToString(sum[:]); got != resA.Digest.String() {
			t.Fatalf("skopeo sees %s, want %s", got, resA.Digest)
		}
		if out, err := exec.Command(skopeo, "copy", "--src-tls-verify=false", "docker://"+dest, "oci:"+filepath.Join(t.TempDir(), "oci")+":x").CombinedOutput(); err != nil {
			t.Fatalf("skopeo copy (verifies every blob): %v\n%s", err, out)
		}
	})

	t.Run("changed-link-copy-fetches-nothing", func(t *testing.T) {
		dirD := regcacheContext(t, regcacheDockerfile, "a1\n", "late2\n")
		stD := newStore(t)
		c := importCache(t, stD, cacheRef)
		px.Requests()
		px.Uploaded()
		resD, logD := regBuild(t, stD, dirD, func(o *Options) {
			o.CacheFrom = []CacheSource{c}
			o.Push = []string{px.Host + "/deploy/d:4"}
		})
		if got := logD.pattern("stage-0"); got != "HHHHHHM" {
			t.Fatalf("steps %s, want only the changed COPY to run:\n%s", got, logD.reasons())
		}
		gets, mounts := blobTraffic(px.Requests())
		if len(gets) != 0 {
			t.Fatalf("COPY --link needs no file system, yet blobs were downloaded: %v", gets)
		}
		if mounts != 6 {
			t.Fatalf("%d mounts, want the 6 cached layers", mounts)
		}
		ls := layerDigests(t, resD.Image)
		m, _ := resD.Image.Manifest()
		if up, want := px.Uploaded(), m.Layers[6].Size+m.Config.Size; up != want {
			t.Fatalf("uploaded %d bytes, want the new layer and config: %d", up, want)
		}
		if resD.Stored || ls[6] == layersA[6] {
			t.Fatalf("stored %v, new layer %s (A: %s)", resD.Stored, ls[6], layersA[6])
		}
	})

	t.Run("changed-copy-fetches-what-later-steps-need", func(t *testing.T) {
		dirE := regcacheContext(t, regcacheDockerfile, "a2\n", "late1\n")
		stE := newStore(t)
		c := importCache(t, stE, cacheRef)
		px.Requests()
		px.Uploaded()
		resE, logE := regBuild(t, stE, dirE, func(o *Options) {
			o.CacheFrom = []CacheSource{c}
			o.Push = []string{px.Host + "/deploy/e:5"}
		})
		if got := logE.pattern("stage-0"); got != "HHHMMMM" {
			t.Fatalf("steps %s, want the changed COPY and later steps to run:\n%s", got, logE.reasons())
		}
		gets, mounts := blobTraffic(px.Requests())
		// The changed COPY (and the RUNs after it) need the file system of
		// the three cached layers below: each is downloaded once.
		want := map[string]int{layersA[0].String(): 1, layersA[1].String(): 1, layersA[2].String(): 1}
		if len(gets) != len(want) {
			t.Fatalf("blob downloads %v, want the three cached layers once each", gets)
		}
		for d := range want {
			if gets[d] != 1 {
				t.Fatalf("blob downloads %v, want the three cached layers once each", gets)
			}
		}
		ls := layerDigests(t, resE.Image)
		if ls[4] == layersA[4] {
			t.Fatal("the stamp RUN after the changed COPY did not run")
		}
		if !resE.Stored {
			t.Fatal("every layer is local now: the result should be stored")
		}
		// Pushing: the three cached layers are mounted, not uploaded.
		if mounts != 3 {
			t.Fatalf("%d mounts, want 3", mounts)
		}
		m, _ := resE.Image.Manifest()
		wantUp := m.Config.Size
		for _, l := range m.Layers[3:] {
			wantUp += l.Size
		}
		if up := px.Uploaded(); up != wantUp {
			t.Fatalf("uploaded %d bytes, want the 4 new layers and the config: %d", up, wantUp)
		}
	})
}

// TestRegistryCacheMinMode: mode=min exports the steps of the stages in
// the result (the target and the stage it is built FROM) only. A fresh
// root then runs the COPY --from source stage again; the final stage's
// steps hit when that stage reproduces its output (here, with
// SOURCE_DATE_EPOCH, it does), since a COPY --from key covers the source
// stage's layers. mode=max hits everywhere.
func TestRegistryCacheMinMode(t *testing.T) {
	reg := registrytest.Start(t)
	df := `FROM scratch AS tools
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN echo built by tools > /out
FROM scratch AS base
COPY app.txt /app.txt
FROM base
COPY --from=tools /out /out
ENV X=1
`
	dir := regcacheContext(t, df, "a\n", "l\n")
	minRef, maxRef := reg.Host+"/cache/min:1", reg.Host+"/cache/max:1"
	resA, _ := regBuild(t, newStore(t), dir, func(o *Options) {
		o.CacheTo = []CacheExporter{exportTo(t, minRef, registry.CacheModeMin), exportTo(t, maxRef, registry.CacheModeMax)}
	})
	for _, tc := range []struct {
		ref, want string
		records   int
	}{
		{minRef, "MMM|H|HH", 3},
		{maxRef, "HHH|H|HH", 6},
	} {
		t.Run(tc.ref[strings.LastIndex(tc.ref, "/")+1:], func(t *testing.T) {
			st := newStore(t)
			c := importCache(t, st, tc.ref)
			if c.Len() != tc.records {
				t.Fatalf("%d records, want %d", c.Len(), tc.records)
			}
			res, log := regBuild(t, st, dir, func(o *Options) { o.CacheFrom = []CacheSource{c} })
			if got := log.pattern("tools", "base", "stage-2"); got != tc.want {
				t.Fatalf("steps %s, want %s:\n%s", got, tc.want, log.reasons())
			}
			if res.Digest != resA.Digest {
				t.Fatalf("digest %s, root A %s", res.Digest, resA.Digest)
			}
		})
	}
}

// TestRegistryCacheMissingRef: a --cache-from reference that does not
// exist yet (a first build) is a warning, and the build runs.
func TestRegistryCacheMissingRef(t *testing.T) {
	reg := registrytest.Start(t)
	st := newStore(t)
	c, err := registry.ImportCache(context.Background(), reg.Host+"/cache/none:1", registry.CacheOptions{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(c.Warning, "does not exist yet") || c.Len() != 0 {
		t.Fatalf("warning %q, %d records", c.Warning, c.Len())
	}
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY f /f\n", "f": "x"})
	res, log := regBuild(t, st, dir, func(o *Options) { o.CacheFrom = []CacheSource{c} })
	if got := log.pattern("stage-0"); got != "M" || !res.Stored {
		t.Fatalf("steps %s, stored %v", got, res.Stored)
	}
}

// TestPushMountsBaseLayers: the layers of a base image pulled from a
// registry are mounted from its repository when the result is pushed to
// another repository of the same registry; only the new layer and the
// config are uploaded.
func TestPushMountsBaseLayers(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Start(t)
	px := registrytest.NewProxy(t, reg.Host)
	baseRef := px.Host + "/base/img:1"
	stA := newStore(t)
	baseDir := writeContext(t, map[string]string{"a": "base layer one", "b": "base layer two"})
	if _, err := Build(ctx, Options{Store: stA, ContextDir: baseDir, Tags: []string{baseRef}, StepOptions: StepOptions{SourceDateEpoch: &epoch},
		DockerfileContent: []byte("FROM scratch\nCOPY a /a\nCOPY b /b\n")}); err != nil {
		t.Fatal(err)
	}
	if _, err := registry.Push(ctx, stA, baseRef, baseRef, registry.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	stB := newStore(t)
	dir := writeContext(t, map[string]string{"c": "the new layer"})
	px.Requests()
	px.Uploaded()
	res, err := Build(ctx, Options{Store: stB, ContextDir: dir, StepOptions: StepOptions{SourceDateEpoch: &epoch},
		DockerfileContent: []byte("FROM " + baseRef + "\nCOPY c /c\n"), Push: []string{px.Host + "/app/new:1"}})
	if err != nil {
		t.Fatal(err)
	}
	_, mounts := blobTraffic(px.Requests())
	if mounts != 2 {
		t.Errorf("%d mounts, want the base's 2 layers mounted", mounts)
	}
	m, err := res.Image.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if up, want := px.Uploaded(), m.Layers[2].Size+m.Config.Size; up != want {
		t.Errorf("uploaded %d bytes, want %d (the new layer and the config)", up, want)
	}
}

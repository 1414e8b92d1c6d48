package registry_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// fixture is a docker-registry seeded with "bb:1", a busybox image for the
// host platform, and "multi:1", an index of it and a file-only image for
// another platform.
type fixture struct {
	reg          *registrytest.Registry
	host, other  v1.Platform
	img          v1.Hash // bb:1
	index        v1.Hash // multi:1
	otherImg     v1.Hash
	layer        v1.Hash // bb:1's first layer
	otherLayer   v1.Hash
	hostManifest v1.Hash
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	reg := registrytest.Start(t)
	bb := layertest.RequireTool(t, "/bin/busybox")
	ctx := context.Background()
	st := newStore(t)
	f := &fixture{reg: reg, host: builder.HostPlatform()}
	f.other, _ = builder.ParsePlatform("linux/arm64")
	if f.host.Architecture == "arm64" {
		f.other, _ = builder.ParsePlatform("linux/amd64")
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	build := func(df string, files map[string][]byte, p v1.Platform) v1.Image {
		dir := t.TempDir()
		for n, b := range files {
			if err := os.WriteFile(filepath.Join(dir, n), b, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		res, err := builder.Build(ctx, builder.Options{Store: st, ContextDir: dir, DockerfileContent: []byte(df), Platforms: []v1.Platform{p}})
		if err != nil {
			t.Fatal(err)
		}
		return res.Image
	}
	img := build("FROM scratch\nCOPY busybox /bin/busybox\nCOPY hello /hello\nCMD [\"/bin/busybox\", \"cat\", \"/hello\"]\n",
		map[string][]byte{"busybox": data, "hello": []byte("hello\n")}, f.host)
	oimg := build("FROM scratch\nCOPY hello /hello\n", map[string][]byte{"hello": []byte("hello from elsewhere\n")}, f.other)
	write := func(ref string, do func(name.Reference) error) {
		r, err := name.ParseReference(ref)
		if err != nil {
			t.Fatal(err)
		}
		if err := do(r); err != nil {
			t.Fatalf("push %s: %v", ref, err)
		}
	}
	write(reg.Host+"/bb:1", func(r name.Reference) error { return remote.Write(r, img) })
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &f.host}},
		mutate.IndexAddendum{Add: oimg, Descriptor: v1.Descriptor{Platform: &f.other}})
	write(reg.Host+"/multi:1", func(r name.Reference) error { return remote.WriteIndex(r, idx) })
	f.img, _ = img.Digest()
	f.index, _ = idx.Digest()
	f.otherImg, _ = oimg.Digest()
	ls, _ := img.Layers()
	f.layer, _ = ls[0].Digest()
	ols, _ := oimg.Layers()
	f.otherLayer, _ = ols[0].Digest()
	return f
}

func newStore(t *testing.T) *layers.Store {
	t.Helper()
	st, err := layers.OpenStore(context.Background(), filepath.Join(t.TempDir(), "root"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestPull(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()

	t.Run("image", func(t *testing.T) {
		st := newStore(t)
		ref := f.reg.Host + "/bb:1"
		d, err := registry.Pull(ctx, st, ref, registry.PullOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if d.Digest != f.img {
			t.Fatalf("pulled %s, pushed %s", d.Digest, f.img)
		}
		got, err := st.Lookup(ctx, ref)
		if err != nil || got.Digest != f.img {
			t.Fatalf("stored under %s: %v %v", ref, got.Digest, err)
		}
		img, err := st.Image(ctx, d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		dirs, err := st.Snapshots(ctx, img, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dirs[len(dirs)-1], "hello"))
		if err != nil || string(b) != "hello\n" {
			t.Fatalf("hello = %q, %v", b, err)
		}
		layertest.CheckBlobs(t, st.Blobs().Dir())
	})

	t.Run("index", func(t *testing.T) {
		st := newStore(t)
		ref := f.reg.Host + "/multi:1"
		d, err := registry.Pull(ctx, st, ref, registry.PullOptions{Platform: f.host})
		if err != nil {
			t.Fatal(err)
		}
		if d.Digest != f.index || !d.MediaType.IsIndex() {
			t.Fatalf("pulled %s (%s), want index %s", d.Digest, d.MediaType, f.index)
		}
		if !st.Blobs().Has(f.img) || st.Blobs().Has(f.otherImg) {
			t.Fatalf("host image stored %v (want true), other stored %v (want false)", st.Blobs().Has(f.img), st.Blobs().Has(f.otherImg))
		}
		if _, err := registry.Pull(ctx, st, ref, registry.PullOptions{Platform: f.other, Policy: registry.PullMissing}); err != nil {
			t.Fatal(err)
		}
		if !st.Blobs().Has(f.otherImg) || !st.Blobs().Has(f.otherLayer) {
			t.Fatal("the second platform's image was not stored")
		}
		riscv, _ := builder.ParsePlatform("linux/riscv64")
		_, err = registry.Pull(ctx, st, ref, registry.PullOptions{Platform: riscv, Policy: registry.PullAlways})
		if err == nil {
			t.Fatal("pull for a platform the index lacks succeeded")
		}
		for _, want := range []string{ref, "linux/riscv64", builder.PlatformString(f.host), "linux/arm64"} {
			if !strings.Contains(err.Error(), want) && !strings.Contains(err.Error(), strings.TrimSuffix(want, "/v8")) {
				t.Errorf("error %q does not name %s", err, want)
			}
		}
	})

	t.Run("wrong platform of a single image", func(t *testing.T) {
		_, err := registry.Pull(ctx, newStore(t), f.reg.Host+"/bb:1", registry.PullOptions{Platform: f.other})
		if err == nil || !strings.Contains(err.Error(), "not the requested platform") {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("unknown", func(t *testing.T) {
		ref := f.reg.Host + "/nope:1"
		_, err := registry.Pull(ctx, newStore(t), ref, registry.PullOptions{})
		var nf *registry.TagNotFoundError
		if err == nil || !strings.Contains(err.Error(), "pull "+ref+":") || !errors.As(err, &nf) || !nf.NoRepository || !strings.Contains(err.Error(), "does not exist") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestPullPolicies(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	px := registrytest.NewProxy(t, f.reg.Host)
	ref := px.Host + "/bb:1"
	st := newStore(t)

	_, err := registry.Pull(ctx, st, ref, registry.PullOptions{Policy: registry.PullNever})
	if err == nil || !strings.Contains(err.Error(), ref) || !strings.Contains(err.Error(), "never") {
		t.Fatalf("never, absent: err = %v", err)
	}
	if reqs := px.Requests(); len(reqs) != 0 {
		t.Fatalf("policy never contacted the registry: %v", reqs)
	}
	if _, err := registry.Pull(ctx, st, ref, registry.PullOptions{Policy: registry.PullMissing}); err != nil {
		t.Fatal(err)
	}
	if n := registrytest.BlobGets(px.Requests()); n == 0 {
		t.Fatal("the first pull fetched no blob")
	}
	if _, err := registry.Pull(ctx, st, ref, registry.PullOptions{Policy: registry.PullMissing}); err != nil {
		t.Fatal(err)
	}
	if reqs := px.Requests(); len(reqs) != 0 {
		t.Fatalf("policy missing, present: contacted the registry: %v", reqs)
	}
	if _, err := registry.Pull(ctx, st, ref, registry.PullOptions{Policy: registry.PullNever}); err != nil {
		t.Fatalf("never, present: %v", err)
	}
	if _, err := registry.Pull(ctx, st, ref, registry.PullOptions{Policy: registry.PullAlways}); err != nil {
		t.Fatal(err)
	}
	reqs := px.Requests()
	if len(reqs) == 0 {
		t.Fatal("policy always did not contact the registry")
	}
	for _, r := range reqs {
		if strings.Contains(r, f.layer.String()) {
			t.Fatalf("policy always downloaded a stored layer again: %v", reqs)
		}
	}
}

func TestPullCorruptLayer(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	px := registrytest.NewProxy(t, f.reg.Host)
	px.Corrupt(f.layer.String())
	st := newStore(t)
	ref := px.Host + "/bb:1"
	_, err := registry.Pull(ctx, st, ref, registry.PullOptions{})
	if err == nil {
		t.Fatal("pull of a corrupted layer succeeded")
	}
	t.Logf("pull error: %v", err)
	if !strings.Contains(err.Error(), f.layer.String()) {
		t.Fatalf("error does not name the layer %s: %v", f.layer, err)
	}
	if st.Blobs().Has(f.layer) || st.Blobs().Has(f.img) {
		t.Fatal("a blob of the failed pull is stored")
	}
	if _, err := st.Lookup(ctx, ref); !errors.Is(err, layers.ErrNotFound) {
		t.Fatalf("the failed pull left a name: %v", err)
	}
	layertest.CheckBlobs(t, st.Blobs().Dir()) // whatever is stored is complete
}

func TestInspectRemote(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	px := registrytest.NewProxy(t, f.reg.Host)
	for _, tc := range []struct {
		ref    string
		images int
	}{{"bb:1", 1}, {"multi:1", 2}} {
		t.Run(tc.ref, func(t *testing.T) {
			info, err := registry.InspectRemote(ctx, px.Host+"/"+tc.ref, registry.PullOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(info.Images) != tc.images {
				t.Fatalf("%d images, want %d", len(info.Images), tc.images)
			}
			for _, im := range info.Images {
				if len(im.Manifest) == 0 || !strings.Contains(string(im.Config), `"rootfs"`) {
					t.Fatalf("image %s: manifest %s config %s", im.Digest, im.Manifest, im.Config)
				}
			}
			for _, r := range px.Requests() {
				if strings.Contains(r, f.layer.String()) || strings.Contains(r, f.otherLayer.String()) {
					t.Fatalf("inspect downloaded a layer: %s", r)
				}
			}
		})
	}
}

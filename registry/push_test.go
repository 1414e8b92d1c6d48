package registry_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// buildLocal builds a small image (or, with two platforms, an index)
// tagged tag in st.
func buildLocal(t *testing.T, st *layers.Store, tag, content string, ps ...v1.Platform) *builder.Result {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "big"), []byte(strings.Repeat(content, 4096)), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := builder.Build(context.Background(), builder.Options{Store: st, ContextDir: dir, Tags: []string{tag},
		DockerfileContent: []byte("FROM scratch\nCOPY hello /hello\nCOPY big /big\n"), Platforms: ps})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func skopeoRaw(t *testing.T, ref string) []byte {
	t.Helper()
	skopeo := layertest.RequireTool(t, "skopeo")
	out, err := exec.Command(skopeo, "inspect", "--raw", "--tls-verify=false", "docker://"+ref).Output()
	if err != nil {
		t.Fatalf("skopeo inspect --raw %s: %v", ref, err)
	}
	return out
}

// blobUploads counts blob upload requests that carry bytes (PATCH, and
// PUT with a body is counted through Uploaded) and mount attempts.
func blobUploads(reqs []string) (patches, mounts int) {
	for _, r := range reqs {
		switch {
		case strings.HasPrefix(r, "PATCH ") && strings.Contains(r, "/blobs/uploads/"):
			patches++
		case strings.HasPrefix(r, "POST ") && strings.Contains(r, "/blobs/uploads/") && strings.Contains(r, "mount=") && strings.Contains(r, "from="):
			mounts++
		}
	}
	return patches, mounts
}

func TestPush(t *testing.T) {
	reg := registrytest.Start(t)
	px := registrytest.NewProxy(t, reg.Host)
	ctx := context.Background()
	st := newStore(t)
	host := builder.HostPlatform()
	other, _ := builder.ParsePlatform("linux/arm64")
	if host.Architecture == "arm64" {
		other, _ = builder.ParsePlatform("linux/amd64")
	}
	img := buildLocal(t, st, "app:1", "hello\n")
	idx := buildLocal(t, st, "multi:1", "multi\n", host, other)

	t.Run("image", func(t *testing.T) {
		dest := px.Host + "/app:1"
		px.Requests()
		px.Uploaded()
		d, err := registry.Push(ctx, st, "app:1", dest, registry.PushOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if d != img.Digest {
			t.Fatalf("pushed %s, local digest %s", d, img.Digest)
		}
		reqs := px.Requests()
		// The manifest is uploaded after every blob.
		last := -1
		for i, r := range reqs {
			if strings.HasPrefix(r, "PUT ") && strings.Contains(r, "/manifests/") {
				last = i
			}
		}
		for i, r := range reqs {
			if strings.Contains(r, "/blobs/") && i > last {
				t.Fatalf("blob request after the manifest: %v", reqs)
			}
		}
		if n := px.Uploaded(); n == 0 {
			t.Fatal("no blob bytes uploaded")
		}
		if raw := skopeoRaw(t, reg.Host+"/app:1"); v1.Hash(must(v1.SHA256(strings.NewReader(string(raw))))) != img.Digest {
			t.Fatalf("skopeo sees %s", raw)
		}
		dir := t.TempDir()
		out, err := exec.Command("skopeo", "copy", "--src-tls-verify=false", "docker://"+reg.Host+"/app:1", "oci:"+dir+":app").CombinedOutput()
		if err != nil {
			t.Fatalf("skopeo copy: %v\n%s", err, out)
		}

		// Again: every blob is there, no layer bytes move.
		if _, err := registry.Push(ctx, st, "app:1", dest, registry.PushOptions{}); err != nil {
			t.Fatal(err)
		}
		reqs = px.Requests()
		if p, _ := blobUploads(reqs); p != 0 || px.Uploaded() != 0 {
			t.Fatalf("second push uploaded blobs: %v", reqs)
		}
	})

	t.Run("mount", func(t *testing.T) {
		// Tag the image under its registry name, then push it to another
		// repository of the same registry: the layers are mounted.
		if err := st.Tag(ctx, px.Host+"/app:1", img.Descriptor); err != nil {
			t.Fatal(err)
		}
		px.Requests()
		px.Uploaded()
		if _, err := registry.Push(ctx, st, px.Host+"/app:1", px.Host+"/copy:1", registry.PushOptions{}); err != nil {
			t.Fatal(err)
		}
		reqs := px.Requests()
		p, mounts := blobUploads(reqs)
		m, _ := img.Image.Manifest()
		if p != 0 || mounts < len(m.Layers) {
			t.Fatalf("want %d mounts and no PATCH, got %d mounts, %d PATCH: %v", len(m.Layers), mounts, p, reqs)
		}
		if n := px.Uploaded(); n != 0 {
			t.Fatalf("%d bytes uploaded", n)
		}
	})

	t.Run("own name", func(t *testing.T) {
		_, err := registry.Push(ctx, st, "app:1", "", registry.PushOptions{})
		if err == nil || !strings.Contains(err.Error(), "localhost/app:1") {
			t.Fatalf("push of a local-only name without destination: %v", err)
		}
		d, err := registry.Push(ctx, st, px.Host+"/app:1", "", registry.PushOptions{})
		if err != nil || d != img.Digest {
			t.Fatalf("push to its own name: %s %v", d, err)
		}
	})

	t.Run("index", func(t *testing.T) {
		d, err := registry.Push(ctx, st, "multi:1", px.Host+"/multi:1", registry.PushOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if d != idx.Digest {
			t.Fatalf("pushed %s, local %s", d, idx.Digest)
		}
		var im v1.IndexManifest
		if err := json.Unmarshal(skopeoRaw(t, reg.Host+"/multi:1"), &im); err != nil {
			t.Fatal(err)
		}
		if len(im.Manifests) != 2 {
			t.Fatalf("index has %d manifests", len(im.Manifests))
		}
		for _, c := range im.Manifests {
			skopeoRaw(t, reg.Host+"/multi@"+c.Digest.String())
		}
	})

	t.Run("docker format", func(t *testing.T) {
		for _, src := range []string{"app:1", "multi:1"} {
			d, err := registry.Push(ctx, st, src, px.Host+"/docker-"+strings.TrimSuffix(src, ":1")+":1", registry.PushOptions{Format: "docker"})
			if err != nil {
				t.Fatal(err)
			}
			raw := skopeoRaw(t, reg.Host+"/docker-"+strings.TrimSuffix(src, ":1")+"@"+d.String())
			var m struct {
				MediaType types.MediaType `json:"mediaType"`
				Manifests []v1.Descriptor `json:"manifests"`
				Layers    []v1.Descriptor `json:"layers"`
				Config    v1.Descriptor   `json:"config"`
			}
			if err := json.Unmarshal(raw, &m); err != nil {
				t.Fatal(err)
			}
			switch src {
			case "app:1":
				if m.MediaType != types.DockerManifestSchema2 || m.Config.MediaType != types.DockerConfigJSON || m.Layers[0].MediaType != types.DockerLayer {
					t.Fatalf("docker push of an image: %s", raw)
				}
				ol, _ := img.Image.Manifest()
				if m.Layers[0].Digest != ol.Layers[0].Digest {
					t.Fatalf("layer bytes changed: %s vs %s", m.Layers[0].Digest, ol.Layers[0].Digest)
				}
			default:
				if m.MediaType != types.DockerManifestList || len(m.Manifests) != 2 || m.Manifests[0].MediaType != types.DockerManifestSchema2 {
					t.Fatalf("docker push of an index: %s", raw)
				}
			}
		}
	})

	t.Run("errors name the destination", func(t *testing.T) {
		_, err := registry.Push(ctx, st, "app:1", "127.0.0.1:1/nothing:1", registry.PushOptions{})
		if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1/nothing:1") || !strings.Contains(err.Error(), "registry 127.0.0.1:1") {
			t.Fatalf("push to a closed port: %v", err)
		}
	})

	t.Run("retries 500s, tag never dangles", func(t *testing.T) {
		st2 := newStore(t)
		res := buildLocal(t, st2, "flaky:1", "flaky\n")
		defer px.FailEvery(0, 0)
		ref, _ := name.ParseReference(reg.Host + "/flaky:1")
		var stop atomic.Bool
		var bad atomic.Value
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000 && !stop.Load(); i++ {
				if img, err := remote.Image(ref); err == nil {
					ls, _ := img.Layers()
					for _, l := range ls {
						rc, err := l.Compressed()
						if err != nil {
							bad.Store(err.Error())
							return
						}
						rc.Close()
					}
					if _, err := img.RawConfigFile(); err != nil {
						bad.Store(err.Error())
						return
					}
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
		px.FailEvery(3, 4)
		d, err := registry.Push(ctx, st2, "flaky:1", px.Host+"/flaky:1", registry.PushOptions{})
		stop.Store(true)
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if d != res.Digest {
			t.Fatalf("pushed %s, local %s", d, res.Digest)
		}
		if px.FailEvery(0, 0) == 0 {
			t.Fatal("the proxy failed no request")
		}
		if b := bad.Load(); b != nil {
			t.Fatalf("the tag named a manifest with a missing blob: %s", b)
		}
	})
}

func must[T any](v T, _ int64, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

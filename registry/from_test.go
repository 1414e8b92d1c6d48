package registry_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// TestBuildFromRegistry builds FROM images only the registry has, under
// each pull policy, counting what the registry serves.
func TestBuildFromRegistry(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	px := registrytest.NewProxy(t, f.reg.Host)
	ref := px.Host + "/bb:1"
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/x", []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	build := func(st *layers.Store, df string, pull registry.PullPolicy, p v1.Platform) (*builder.Result, error) {
		return builder.Build(ctx, builder.Options{Store: st, ContextDir: dir, DockerfileContent: []byte(df), StepOptions: builder.StepOptions{Pull: pull}, Platforms: []v1.Platform{p}, NoCache: true})
	}
	df := "FROM " + ref + "\nCOPY x /x\n"
	st := newStore(t)

	res, err := build(st, df, "", f.host)
	if err != nil {
		t.Fatal(err)
	}
	if n := registrytest.BlobGets(px.Requests()); n == 0 {
		t.Fatal("the first build fetched no blob")
	}
	m, err := res.Image.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Layers) < 2 || m.Layers[0].Digest != f.layer {
		t.Fatalf("built image does not start with the base's layers: %+v", m.Layers)
	}
	if _, err := build(st, df, registry.PullMissing, f.host); err != nil {
		t.Fatal(err)
	}
	if reqs := px.Requests(); len(reqs) != 0 {
		t.Fatalf("second build (policy missing) contacted the registry: %v", reqs)
	}
	if _, err := build(st, df, registry.PullNever, f.host); err != nil {
		t.Fatalf("policy never, base stored: %v", err)
	}
	if _, err := build(st, df, registry.PullAlways, f.host); err != nil {
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

	t.Run("never, absent", func(t *testing.T) {
		_, err := build(newStore(t), df, registry.PullNever, f.host)
		if err == nil || !strings.Contains(err.Error(), ref) {
			t.Fatalf("err = %v, want one naming %s", err, ref)
		}
		if reqs := px.Requests(); len(reqs) != 0 {
			t.Fatalf("policy never contacted the registry: %v", reqs)
		}
	})

	t.Run("unknown", func(t *testing.T) {
		bad := px.Host + "/nope:1"
		_, err := build(newStore(t), "FROM "+bad+"\n", "", f.host)
		var nf *registry.TagNotFoundError
		if err == nil || !strings.Contains(err.Error(), "pull "+bad) || !errors.As(err, &nf) || !strings.Contains(err.Error(), "repository "+px.Host+"/nope does not exist") {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("index, both platforms", func(t *testing.T) {
		st := newStore(t)
		df := "FROM " + px.Host + "/multi:1\nCOPY x /x\n"
		for _, p := range []v1.Platform{f.host, f.other} {
			res, err := build(st, df, "", p)
			if err != nil {
				t.Fatalf("%s: %v", builder.PlatformString(p), err)
			}
			cf, _ := res.Image.ConfigFile()
			if cf.Architecture != p.Architecture {
				t.Fatalf("built %s, want %s", cf.Architecture, p.Architecture)
			}
		}
		if !st.Blobs().Has(f.otherLayer) || !st.Blobs().Has(f.layer) {
			t.Fatal("not every platform's layers were pulled")
		}
	})

	t.Run("RUN on a pulled base", func(t *testing.T) {
		if os.Geteuid() != 0 {
			layertest.SkipOrFail(t, "RUN needs root")
		}
		st := newStore(t)
		res, err := build(st, "FROM "+ref+"\nRUN [\"/bin/busybox\", \"cp\", \"/hello\", \"/copied\"]\n", "", f.host)
		if err != nil {
			t.Fatal(err)
		}
		dirs, err := st.Snapshots(ctx, res.Image, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(dirs[len(dirs)-1] + "/copied")
		if err != nil || string(b) != "hello\n" {
			t.Fatalf("copied = %q, %v", b, err)
		}
	})
}

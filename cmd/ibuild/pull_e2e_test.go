package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/registry"
	"github.com/ibuild/ibuild/registry/registrytest"
)

func TestPullAndInspectRemote(t *testing.T) {
	reg := registrytest.Start(t)
	px := registrytest.NewProxy(t, reg.Host)
	withPlatform := func(p v1.Platform) v1.Image {
		img, err := random.Image(512, 2)
		if err != nil {
			t.Fatal(err)
		}
		cf, _ := img.ConfigFile()
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
		img, err = mutate.ConfigFile(img, cf)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	amd := v1.Platform{OS: "linux", Architecture: "amd64"}
	arm := v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	amdImg, armImg := withPlatform(amd), withPlatform(arm)
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amdImg, Descriptor: v1.Descriptor{Platform: &amd}},
		mutate.IndexAddendum{Add: armImg, Descriptor: v1.Descriptor{Platform: &arm}})
	ref := func(s string) name.Reference {
		r, err := name.ParseReference(reg.Host + "/" + s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if err := remote.Write(ref("one:1"), amdImg); err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref("multi:1"), idx); err != nil {
		t.Fatal(err)
	}
	amdDigest, _ := amdImg.Digest()
	armDigest, _ := armImg.Digest()
	idxDigest, _ := idx.Digest()
	root := t.TempDir()

	out := mustIbuild(t, root, "pull", "--platform", "linux/amd64", px.Host+"/one:1")
	if strings.TrimSpace(out) != amdDigest.String() {
		t.Fatalf("pull printed %q, want %s", out, amdDigest)
	}
	root = t.TempDir() // without the amd64 image one:1 stored
	out = mustIbuild(t, root, "pull", "-q", "--platform", "linux/arm64", px.Host+"/multi:1")
	if strings.TrimSpace(out) != idxDigest.String() {
		t.Fatalf("pull printed %q, want the index %s", out, idxDigest)
	}
	out = mustIbuild(t, root, "inspect", px.Host+"/multi:1")
	if !strings.Contains(out, armDigest.String()) || !strings.Contains(out, `"stored": false`) {
		t.Fatalf("inspect of the pulled index:\n%s", out)
	}
	_, errOut, code := ibuild(t, root, "", "pull", "--platform", "linux/s390x", px.Host+"/multi:1")
	if code == 0 || !strings.Contains(errOut, "linux/s390x") || !strings.Contains(errOut, "linux/amd64") || !strings.Contains(errOut, "linux/arm64") {
		t.Fatalf("pull of a missing platform: exit %d\n%s", code, errOut)
	}
	_, errOut, code = ibuild(t, root, "", "pull", "--policy", "never", px.Host+"/other:1")
	if code == 0 || !strings.Contains(errOut, px.Host+"/other:1") {
		t.Fatalf("pull --policy never of an absent image: exit %d\n%s", code, errOut)
	}

	px.Requests()
	out = mustIbuild(t, root, "inspect", "docker://"+px.Host+"/multi:1")
	var info registry.RemoteInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if info.Digest != idxDigest || len(info.Images) != 2 || len(info.Images[0].Config) == 0 {
		t.Fatalf("inspect docker://: %s", out)
	}
	reqs := px.Requests()
	for _, img := range []v1.Image{amdImg, armImg} {
		ls, _ := img.Layers()
		for _, l := range ls {
			d, _ := l.Digest()
			for _, r := range reqs {
				if strings.Contains(r, d.String()) {
					t.Fatalf("inspect docker:// downloaded layer %s", d)
				}
			}
		}
	}
}

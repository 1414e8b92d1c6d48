package layers_test

import (
	"archive/tar"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ibuild/ibuild/layers"
)

func TestNormalizeName(t *testing.T) {
	dg := "sha256:" + strings.Repeat("ab", 32)
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{in: "demo", want: "localhost/demo:latest"},
		{in: "demo:1", want: "localhost/demo:1"},
		{in: "a/b", want: "localhost/a/b:latest"},
		{in: "a/b/c:v1.2-x_y", want: "localhost/a/b/c:v1.2-x_y"},
		{in: "reg.io:5000/a/b:2", want: "reg.io:5000/a/b:2"},
		{in: "reg.io/a", want: "reg.io/a:latest"},
		{in: "localhost/x", want: "localhost/x:latest"},
		{in: "localhost:5000/x", want: "localhost:5000/x:latest"},
		{in: "docker.io/library/alpine", want: "docker.io/library/alpine:latest"},
		{in: "demo@" + dg, want: "localhost/demo@" + dg},
		{in: "demo:1@" + dg, want: "localhost/demo:1@" + dg},
		{in: "my_app.v2__x-y", want: "localhost/my_app.v2__x-y:latest"},
		{in: "", wantErr: true},
		{in: "Demo", wantErr: true},
		{in: "demo:", wantErr: true},
		{in: "demo:-bad", wantErr: true},
		{in: "a//b", wantErr: true},
		{in: "demo@sha256:abc", wantErr: true},
		{in: "-x", wantErr: true},
		{in: "reg_io:5000/a", wantErr: true},
		{in: "x/" + strings.Repeat("a", 260), wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := layers.NormalizeName(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("NormalizeName(%q) = %q, want an error", tc.in, got)
				}
				if !strings.Contains(err.Error(), "\""+tc.in+"\"") {
					t.Errorf("error %q does not name the reference", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("NormalizeName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestStoreLookup(t *testing.T) {
	ctx := context.Background()
	s := fixtureStore(t)
	img, desc := storedImage(t, s, "x:1", "looked up")
	id, _ := img.ConfigName()
	_, other := storedImage(t, s, "reg.io/y", "other")
	tests := []struct {
		name    string
		ref     string
		want    v1.Hash
		wantErr error
	}{
		{"short name", "x:1", desc.Digest, nil},
		{"normalized name", "localhost/x:1", desc.Digest, nil},
		{"registry name", "reg.io/y", other.Digest, nil},
		{"full digest", desc.Digest.String(), desc.Digest, nil},
		{"digest prefix", desc.Digest.Hex[:12], desc.Digest, nil},
		{"prefixed digest prefix", "sha256:" + desc.Digest.Hex[:16], desc.Digest, nil},
		{"image ID", id.String(), desc.Digest, nil},
		{"image ID prefix", id.Hex[:12], desc.Digest, nil},
		{"unknown name", "x:2", v1.Hash{}, layers.ErrNotFound},
		{"prefix too short", desc.Digest.Hex[:11], v1.Hash{}, layers.ErrNotFound},
		{"invalid", "X:1", v1.Hash{}, errors.New("invalid")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Lookup(ctx, tc.ref)
			if tc.wantErr != nil {
				if err == nil || tc.wantErr == layers.ErrNotFound && !errors.Is(err, layers.ErrNotFound) {
					t.Fatalf("Lookup(%q) = %v, %v; want %v", tc.ref, got.Digest, err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.ref) {
					t.Errorf("error %q does not name the ref", err)
				}
				return
			}
			if err != nil || got.Digest != tc.want {
				t.Fatalf("Lookup(%q) = %v, %v; want %s", tc.ref, got.Digest, err, tc.want)
			}
			if _, ok := got.Annotations[layers.RefNameAnnotation]; ok {
				t.Error("descriptor carries a name annotation")
			}
		})
	}
}

func TestStoreTagUntag(t *testing.T) {
	ctx := context.Background()
	s := fixtureStore(t)
	_, d1 := storedImage(t, s, "x", "first")
	_, d2 := storedImage(t, s, "", "second")
	if err := s.Tag(ctx, "x", d2); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Lookup(ctx, "x"); err != nil || got.Digest != d2.Digest {
		t.Fatalf("after retag, x = %v, %v; want %s", got.Digest, err, d2.Digest)
	}
	if recs, _ := s.Images(ctx); len(recs) != 1 {
		t.Fatalf("retag left %d entries, want 1", len(recs))
	}
	if err := s.Untag(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if err := s.Untag(ctx, "x"); !errors.Is(err, layers.ErrNotFound) {
		t.Errorf("second untag: %v, want ErrNotFound", err)
	}
	missing := d1
	missing.Digest.Hex = strings.Repeat("0", 64)
	if err := s.Tag(ctx, "y", missing); err == nil {
		t.Error("tagging a manifest that is not stored succeeded")
	}
	wrongSize := d1
	wrongSize.Size++
	if err := s.Tag(ctx, "y", wrongSize); err == nil {
		t.Error("tagging with a wrong size succeeded")
	}
}

func TestStoreImages(t *testing.T) {
	ctx := context.Background()
	s := fixtureStore(t)
	img, desc := storedImage(t, s, "x:1", "listed")
	if err := s.Tag(ctx, "x:2", desc); err != nil {
		t.Fatal(err)
	}
	recs, err := s.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 {
		t.Fatalf("got %d records, want 1", len(recs))
	}
	r := recs[0]
	id, _ := img.ConfigName()
	raw, _ := img.RawManifest()
	cfg, _ := img.RawConfigFile()
	ls, _ := img.Layers()
	lsize, _ := ls[0].Size()
	want := int64(len(raw)+len(cfg)) + lsize
	if !slices.Equal(r.Names, []string{"localhost/x:1", "localhost/x:2"}) || r.ID != id || r.Digest != desc.Digest ||
		r.Size != want || !slices.Equal(r.Platforms, []string{"linux/amd64"}) || r.Created.Unix() != 1700000000 || r.MediaType != types.OCIManifestSchema1 {
		t.Errorf("record = %+v; want names x:1 x:2, ID %s, size %d", r, id, want)
	}
}

func TestStoreIndex(t *testing.T) {
	ctx := context.Background()
	s := fixtureStore(t)
	shared := fixtureLayer(t, s, []fixtureFile{{Name: "etc/", Typ: tar.TypeDir}, {Name: "etc/os-release", Body: "ID=test"}})
	amd := fixtureImage(t, "amd64", shared)
	arm := fixtureImage(t, "arm64", shared, fixtureLayer(t, s, []fixtureFile{{Name: "arm", Body: "arm only"}}))
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, img := range []v1.Image{amd, arm} {
		cf, _ := img.ConfigFile()
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: cf.Platform()}})
	}
	desc, err := s.WriteIndex(ctx, idx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Tag(ctx, "multi", desc); err != nil {
		t.Fatal(err)
	}
	got, err := s.ImageIndex(ctx, desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(got); err != nil {
		t.Fatalf("validate.Index: %v", err)
	}
	child, err := s.Lookup(ctx, digestOf(t, arm).Hex[:12])
	if err != nil || child.Digest != digestOf(t, arm) || child.Platform == nil || child.Platform.Architecture != "arm64" {
		t.Fatalf("child lookup = %+v, %v", child, err)
	}
	recs, err := s.Images(ctx)
	if err != nil || len(recs) != 1 {
		t.Fatalf("Images = %+v, %v", recs, err)
	}
	if !slices.Equal(recs[0].Platforms, []string{"linux/amd64", "linux/arm64"}) || recs[0].MediaType != types.OCIImageIndex {
		t.Errorf("index record = %+v", recs[0])
	}
	if _, err := s.Remove(ctx, child.Digest.String()); err == nil {
		t.Error("removing an image that belongs to a named index succeeded")
	}
	rep, err := s.Remove(ctx, "multi")
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Deleted) != 1+2*2+2 { // index, 2 manifests + 2 configs, 2 distinct layers
		t.Errorf("removing the index deleted %d blobs: %v", len(rep.Deleted), rep.Deleted)
	}
}

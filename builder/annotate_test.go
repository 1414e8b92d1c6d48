package builder

import (
	"context"
	"encoding/json"
	"maps"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/registry"
)

func parseAnns(t *testing.T, specs ...string) []registry.Annotation {
	t.Helper()
	var out []registry.Annotation
	for _, s := range specs {
		as, err := registry.ParseAnnotation(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, as...)
	}
	return out
}

// annotateBuild builds FROM scratch for ps with the given annotations.
func annotateBuild(t *testing.T, opts Options, ps ...string) (*Result, error) {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "f"), "annotated\n", 0o644)
	for _, p := range ps {
		pl, err := ParsePlatform(p)
		if err != nil {
			t.Fatal(err)
		}
		opts.Platforms = append(opts.Platforms, pl)
	}
	if opts.Store == nil {
		opts.Store = newStore(t)
	}
	epoch := time.Unix(1700000000, 0)
	opts.ContextDir, opts.SourceDateEpoch = dir, &epoch
	opts.DockerfileContent = []byte("FROM scratch\nCOPY f /f\n")
	return Build(context.Background(), opts)
}

func rawJSON(t *testing.T, x interface{ RawManifest() ([]byte, error) }, into any) {
	t.Helper()
	raw, err := x.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, into); err != nil {
		t.Fatal(err)
	}
}

// TestAnnotationsMultiPlatform: each of buildx's annotation types lands
// where BuildKit puts it, platform qualifiers select the image.
func TestAnnotationsMultiPlatform(t *testing.T) {
	anns := parseAnns(t,
		"plain=m",
		"manifest[linux/arm64]:arm=only",
		"index:idx=i",
		"manifest-descriptor:desc=d",
		"manifest-descriptor[linux/amd64]:amd=d",
		"index-descriptor:top=t",
		"index,manifest:both=b",
	)
	res, err := annotateBuild(t, Options{Annotations: anns}, "linux/amd64", "linux/arm64")
	if err != nil {
		t.Fatal(err)
	}
	var im v1.IndexManifest
	rawJSON(t, res.Index, &im)
	if want := map[string]string{"idx": "i", "both": "b"}; !maps.Equal(im.Annotations, want) {
		t.Errorf("index annotations %v, want %v", im.Annotations, want)
	}
	wantDesc := []map[string]string{{"desc": "d", "amd": "d"}, {"desc": "d"}}
	wantMan := []map[string]string{{"plain": "m", "both": "b"}, {"plain": "m", "both": "b", "arm": "only"}}
	for i, d := range im.Manifests {
		if !maps.Equal(d.Annotations, wantDesc[i]) {
			t.Errorf("entry %d descriptor annotations %v, want %v", i, d.Annotations, wantDesc[i])
		}
		img, err := res.Index.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		var m v1.Manifest
		rawJSON(t, img, &m)
		if !maps.Equal(m.Annotations, wantMan[i]) {
			t.Errorf("entry %d manifest annotations %v, want %v", i, m.Annotations, wantMan[i])
		}
	}
	if want := map[string]string{"top": "t"}; !maps.Equal(res.Descriptor.Annotations, want) {
		t.Errorf("result descriptor annotations %v, want %v", res.Descriptor.Annotations, want)
	}
	// The stored index is the annotated one.
	stored, err := res.Index.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	if got, _, _ := v1.SHA256(strings.NewReader(string(stored))); got != res.Digest {
		t.Errorf("result digest %s is not the annotated index's %s", res.Digest, got)
	}

	// Without annotations the images differ only by them.
	plain, err := annotateBuild(t, Options{}, "linux/amd64", "linux/arm64")
	if err != nil {
		t.Fatal(err)
	}
	if plain.Digest == res.Digest {
		t.Error("annotations did not change the index digest")
	}
}

func TestAnnotationsSinglePlatform(t *testing.T) {
	anns := parseAnns(t, "k=v", "manifest-descriptor:d=1", "manifest[linux/amd64]:a=2")
	res, err := annotateBuild(t, Options{Annotations: anns}, "linux/amd64")
	if err != nil {
		t.Fatal(err)
	}
	var m v1.Manifest
	rawJSON(t, res.Image, &m)
	if want := map[string]string{"k": "v", "a": "2"}; !maps.Equal(m.Annotations, want) {
		t.Errorf("manifest annotations %v, want %v", m.Annotations, want)
	}
	if want := map[string]string{"d": "1"}; !maps.Equal(res.Descriptor.Annotations, want) {
		t.Errorf("descriptor annotations %v", res.Descriptor.Annotations)
	}
	// Docker media types keep manifest annotations (as BuildKit does).
	res, err = annotateBuild(t, Options{Annotations: parseAnns(t, "k=v"), Format: FormatDocker}, "linux/amd64")
	if err != nil {
		t.Fatal(err)
	}
	rawJSON(t, res.Image, &m)
	if m.MediaType != types.DockerManifestSchema2 || m.Annotations["k"] != "v" {
		t.Errorf("docker manifest %+v", m)
	}

	for _, tc := range []struct {
		name   string
		anns   []string
		format Format
		ps     []string
		want   string
	}{
		{"index on one platform", []string{"index:a=b"}, "", []string{"linux/amd64"}, "single-platform build makes no index"},
		{"index-descriptor on one platform", []string{"index-descriptor:a=b"}, "", []string{"linux/amd64"}, "single-platform"},
		{"platform not built", []string{"manifest[linux/s390x]:a=b"}, "", []string{"linux/amd64", "linux/arm64"}, "no image for linux/s390x (it makes linux/amd64, linux/arm64)"},
		{"docker descriptor", []string{"manifest-descriptor:a=b"}, FormatDocker, []string{"linux/amd64"}, "build with FormatOCI"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := annotateBuild(t, Options{Annotations: parseAnns(t, tc.anns...), Format: tc.format}, tc.ps...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

type recordSink struct{ events []progress.Event }

func (r *recordSink) Emit(e progress.Event) { r.events = append(r.events, e) }

// TestBuildManifest: build --manifest adds each platform's image to the
// list, creating it; a rebuild of the same image replaces its entry, and
// a changed one is added beside the old with a warning.
func TestBuildManifest(t *testing.T) {
	st := newStore(t)
	res, err := annotateBuild(t, Options{Store: st, Manifest: "app-list"}, "linux/amd64", "linux/arm64")
	if err != nil {
		t.Fatal(err)
	}
	list := func() v1.IndexManifest {
		t.Helper()
		raw, err := registry.InspectList(context.Background(), st, "app-list")
		if err != nil {
			t.Fatal(err)
		}
		var im v1.IndexManifest
		if err := json.Unmarshal(raw, &im); err != nil {
			t.Fatal(err)
		}
		return im
	}
	var built v1.IndexManifest
	rawJSON(t, res.Index, &built)
	got := list()
	if len(got.Manifests) != 2 || got.Manifests[0].Digest != built.Manifests[0].Digest || got.Manifests[1].Digest != built.Manifests[1].Digest ||
		!got.Manifests[1].Platform.Equals(*built.Manifests[1].Platform) {
		t.Fatalf("list %+v, built %+v", got, built)
	}
	// The same build again: same digests, same list.
	if _, err := annotateBuild(t, Options{Store: st, Manifest: "app-list"}, "linux/amd64", "linux/arm64"); err != nil {
		t.Fatal(err)
	}
	if n := len(list().Manifests); n != 2 {
		t.Fatalf("rebuild left %d entries", n)
	}
	sink := &recordSink{}
	res2, err := annotateBuild(t, Options{Store: st, Manifest: "app-list", Annotations: parseAnns(t, "v=2"), StepOptions: StepOptions{Progress: sink}}, "linux/arm64")
	if err != nil {
		t.Fatal(err)
	}
	got = list()
	if len(got.Manifests) != 3 || got.Manifests[2].Digest != res2.Digest {
		t.Fatalf("list after a changed arm64 image: %+v", got)
	}
	if !strings.Contains(strings.Join(res2.Warnings, "\n"), "2 entries for linux/arm64") {
		t.Errorf("warnings %q", res2.Warnings)
	}
	// A name that is an image is not a list.
	if _, err := annotateBuild(t, Options{Store: st, Tags: []string{"plain:1"}}, "linux/amd64"); err != nil {
		t.Fatal(err)
	}
	if _, err := annotateBuild(t, Options{Store: st, Manifest: "plain:1"}, "linux/amd64"); err == nil || !strings.Contains(err.Error(), "not a manifest list") {
		t.Fatalf("--manifest naming an image: %v", err)
	}
}

package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// reproducibleIndex builds a two-platform index (host and another
// platform, FROM scratch, so no RUN is needed) with SOURCE_DATE_EPOCH.
func reproducibleIndex(t *testing.T, st *layers.Store, tag string) (*builder.Result, []v1.Platform) {
	t.Helper()
	host := builder.HostPlatform()
	other, _ := builder.ParsePlatform("linux/arm64")
	if host.Architecture == "arm64" {
		other, _ = builder.ParsePlatform("linux/amd64")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "big"), bytes.Repeat([]byte("list entry layer\n"), 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	epoch := time.Unix(1700000000, 0)
	df := "FROM scratch\nARG TARGETARCH\nCOPY big /big\nLABEL arch=$TARGETARCH\n"
	res, err := builder.Build(context.Background(), builder.Options{Store: st, ContextDir: dir, Tags: []string{tag},
		DockerfileContent: []byte(df), Platforms: []v1.Platform{host, other}, StepOptions: builder.StepOptions{SourceDateEpoch: &epoch}})
	if err != nil {
		t.Fatal(err)
	}
	return res, []v1.Platform{host, other}
}

// indexOf reads the index of res.
func indexOf(t *testing.T, res *builder.Result) (*v1.IndexManifest, []byte) {
	t.Helper()
	raw, err := res.Index.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	im, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return im, raw
}

// layerGets counts the GETs of the given blobs in reqs.
func layerGets(reqs []string, blobs []v1.Hash) int {
	n := 0
	for _, r := range reqs {
		for _, h := range blobs {
			if strings.HasPrefix(r, "GET ") && strings.HasSuffix(r, "/blobs/"+h.String()) {
				n++
			}
		}
	}
	return n
}

// TestListMergeFromRegistry plays a CI matrix's merge job: the images of
// a two-platform build are pushed by digest (as two runners would), and a
// fresh store merges the digests with CreateList, AddToList and PushList.
// The merged index has the bytes of the one the build made; no layer is
// downloaded or uploaded; pushing it to another repository of the registry
// mounts every blob.
func TestListMergeFromRegistry(t *testing.T) {
	reg := registrytest.Start(t)
	px := registrytest.NewProxy(t, reg.Host)
	ctx := context.Background()
	runner := newStore(t)
	res, _ := reproducibleIndex(t, runner, "app:1")
	im, want := indexOf(t, res)
	repo := px.Host + "/team/app"
	var layerBlobs []v1.Hash
	for _, d := range im.Manifests {
		if _, err := registry.Push(ctx, runner, d.Digest.String(), repo+"@"+d.Digest.String(), registry.PushOptions{}); err != nil {
			t.Fatal(err)
		}
		img, err := res.Index.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		m, _ := img.Manifest()
		for _, l := range m.Layers {
			layerBlobs = append(layerBlobs, l.Digest)
		}
	}

	merger := newStore(t)
	px.Requests()
	px.Uploaded()
	px.Transferred()
	if _, err := registry.CreateList(ctx, merger, "merged", registry.ListCreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, d := range im.Manifests {
		added, _, err := registry.AddToList(ctx, merger, "merged", "docker://"+repo+"@"+d.Digest.String(), registry.ListAddOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(added) != 1 || added[0].Digest != d.Digest || !added[0].Platform.Equals(*d.Platform) {
			t.Fatalf("added %+v, want %s %+v", added, d.Digest, d.Platform)
		}
	}
	raw, err := registry.InspectList(ctx, merger, "merged")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, want) {
		t.Fatalf("merged list\n%s\nthe build's index\n%s", raw, want)
	}
	pushed, err := registry.PushList(ctx, merger, "merged", "docker://"+repo+":1", registry.ListPushOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	if pushed != res.Digest {
		t.Fatalf("pushed %s, the build's index is %s", pushed, res.Digest)
	}
	if got := skopeoRaw(t, reg.Host+"/team/app:1"); !bytes.Equal(got, want) {
		t.Fatalf("registry has\n%s", got)
	}
	reqs := px.Requests()
	if n := layerGets(reqs, layerBlobs); n != 0 {
		t.Errorf("the merge downloaded %d layers: %v", n, reqs)
	}
	if n := px.Uploaded(); n != 0 {
		t.Errorf("the merge uploaded %d blob bytes", n)
	}
	sent, received := px.Transferred()
	t.Logf("merge: %d requests, %d bytes sent, %d received", len(reqs), sent, received)
	if limit := int64(16 << 10); sent+received > limit {
		t.Errorf("the merge moved %d bytes, more than manifests and configs (%d)", sent+received, limit)
	}
	// The fresh store lists the list with both platforms; its size is
	// the manifests and configs it stores, no layer.
	recs, err := merger.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || len(recs[0].Platforms) != 2 || recs[0].Size > 8<<10 {
		t.Errorf("images: %+v", recs)
	}

	t.Run("another repository mounts", func(t *testing.T) {
		other := px.Host + "/team/copy:1"
		px.Requests()
		if _, err := registry.PushList(ctx, merger, "merged", other, registry.ListPushOptions{All: true}); err != nil {
			t.Fatal(err)
		}
		reqs := px.Requests()
		patches, mounts := blobUploads(reqs)
		if patches != 0 || px.Uploaded() != 0 || layerGets(reqs, layerBlobs) != 0 {
			t.Errorf("%d uploads, %d layer downloads: %v", patches, layerGets(reqs, layerBlobs), reqs)
		}
		distinct := slices.Compact(slices.SortedFunc(slices.Values(layerBlobs), func(a, b v1.Hash) int { return strings.Compare(a.Hex, b.Hex) }))
		if want := len(distinct) + len(im.Manifests); mounts != want {
			t.Errorf("%d mounts, want %d (layers and configs): %v", mounts, want, reqs)
		}
		if got := skopeoRaw(t, reg.Host+"/team/copy:1"); !bytes.Equal(got, want) {
			t.Errorf("copy is\n%s", got)
		}
	})

	t.Run("without --all the images must be there", func(t *testing.T) {
		_, err := registry.PushList(ctx, merger, "merged", px.Host+"/team/empty:1", registry.ListPushOptions{})
		if optionOf(err) != "ListPushOptions.All" || !strings.Contains(err.Error(), im.Manifests[0].Digest.String()) {
			t.Fatalf("index-only push to an empty repository: %v", err)
		}
		d, err := registry.PushList(ctx, merger, "merged", px.Host+"/team/app:index-only", registry.ListPushOptions{})
		if err != nil || d != res.Digest {
			t.Fatalf("index-only push: %s, %v", d, err)
		}
	})

	t.Run("format docker", func(t *testing.T) {
		px.Requests()
		d, err := registry.PushList(ctx, merger, "merged", px.Host+"/team/docker:1", registry.ListPushOptions{All: true, PushOptions: registry.PushOptions{Format: "docker"}})
		if err != nil {
			t.Fatal(err)
		}
		var got v1.IndexManifest
		raw := skopeoRaw(t, reg.Host+"/team/docker:1")
		if err := json.Unmarshal(raw, &got); err != nil || got.MediaType != types.DockerManifestList || len(got.Manifests) != 2 || got.Manifests[0].MediaType != types.DockerManifestSchema2 {
			t.Fatalf("--format docker pushed %s (%v)", raw, err)
		}
		if v1.Hash(must(v1.SHA256(bytes.NewReader(raw)))) != d {
			t.Errorf("pushed digest %s is not the registry's", d)
		}
		if reqs := px.Requests(); layerGets(reqs, layerBlobs) != 0 || px.Uploaded() > 4<<10 {
			t.Errorf("the conversion moved layers: %v", reqs)
		}
	})

	t.Run("ibuild push of the list", func(t *testing.T) {
		d, err := registry.Push(ctx, merger, "merged", px.Host+"/team/viapush:1", registry.PushOptions{})
		if err != nil || d != res.Digest {
			t.Fatalf("push: %s, %v", d, err)
		}
	})

	t.Run("removing the list leaves nothing", func(t *testing.T) {
		if _, err := registry.RemoveList(ctx, merger, "merged"); err != nil {
			t.Fatal(err)
		}
		// Earlier versions of the list are garbage, for prune.
		old := time.Now().Add(-2 * layers.PruneGrace)
		blobs, _ := filepath.Glob(filepath.Join(merger.Root(), "blobs", "sha256", "*"))
		for _, b := range blobs {
			os.Chtimes(b, old, old)
		}
		if _, err := merger.Prune(ctx); err != nil {
			t.Fatal(err)
		}
		hs, err := merger.Blobs().List()
		if err != nil || len(hs) != 0 {
			t.Errorf("blobs left: %v, %v", hs, err)
		}
		srcs, _ := filepath.Glob(filepath.Join(merger.Root(), "sources", "*.json"))
		if len(srcs) != 0 {
			t.Errorf("sources records left: %v", srcs)
		}
	})
}

// TestListEdit: create (and --amend), add local images and indexes,
// annotate entries and the index, remove, and the errors that name what
// to do.
func TestListEdit(t *testing.T) {
	reg := registrytest.Start(t)
	ctx := context.Background()
	st := newStore(t)
	res, ps := reproducibleIndex(t, st, "multi:1")
	im, _ := indexOf(t, res)
	single := buildLocal(t, st, reg.Host+"/single:1", "single\n")

	if _, _, err := registry.AddToList(ctx, st, "nolist", "multi:1", registry.ListAddOptions{}); err == nil || !strings.Contains(err.Error(), "manifest create nolist") {
		t.Fatalf("add to a missing list: %v", err)
	}
	if _, err := registry.CreateList(ctx, st, "multi:1", registry.ListCreateOptions{}); optionOf(err) != "ListCreateOptions.Amend" {
		t.Fatalf("create over an index: %v", err)
	}
	if _, err := registry.CreateList(ctx, st, "list", registry.ListCreateOptions{Annotations: map[string]string{"team": "a"}}); err != nil {
		t.Fatal(err)
	}
	// An index by name adds the host's image; --all adds both.
	added, _, err := registry.AddToList(ctx, st, "list", "multi:1", registry.ListAddOptions{})
	if err != nil || len(added) != 1 || added[0].Digest != im.Manifests[0].Digest {
		t.Fatalf("add multi:1: %+v, %v", added, err)
	}
	added, _, err = registry.AddToList(ctx, st, "list", "multi:1", registry.ListAddOptions{All: true})
	if err != nil || len(added) != 2 {
		t.Fatalf("add --all multi:1: %+v, %v", added, err)
	}
	added, _, err = registry.AddToList(ctx, st, "list", reg.Host+"/single:1", registry.ListAddOptions{
		ListEntryOptions: registry.ListEntryOptions{Variant: "v9", Annotations: map[string]string{"k": "v"}}})
	if err != nil || len(added) != 1 || added[0].Digest != single.Digest || added[0].Platform.Variant != "v9" || added[0].Annotations["k"] != "v" {
		t.Fatalf("add single: %+v, %v", added, err)
	}
	// A stored name with a registry records it as the entry's source.
	if srcs, _ := st.Sources(single.Digest); !slices.Equal(srcs, []string{reg.Host + "/single"}) {
		t.Errorf("sources of the single image: %q", srcs)
	}
	list := func() v1.IndexManifest {
		t.Helper()
		raw, err := registry.InspectList(ctx, st, "list")
		if err != nil {
			t.Fatal(err)
		}
		var got v1.IndexManifest
		if err := json.Unmarshal(raw, &got); err != nil {
			t.Fatal(err)
		}
		return got
	}
	got := list()
	if len(got.Manifests) != 3 || got.Annotations["team"] != "a" {
		t.Fatalf("list: %+v", got)
	}
	for i, p := range ps {
		if !got.Manifests[i].Platform.Equals(p) {
			t.Errorf("entry %d platform %+v, want %+v", i, got.Manifests[i].Platform, p)
		}
	}

	prefix := im.Manifests[1].Digest.Hex[:12]
	if _, _, err := registry.AnnotateList(ctx, st, "list", prefix, registry.ListAnnotateOptions{
		ListEntryOptions: registry.ListEntryOptions{OS: "linux", Architecture: "riscv64", Annotations: map[string]string{"x": "1"}}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := registry.AnnotateList(ctx, st, "list", "", registry.ListAnnotateOptions{Index: true,
		ListEntryOptions: registry.ListEntryOptions{Annotations: map[string]string{"org.opencontainers.image.title": "t"}}}); err != nil {
		t.Fatal(err)
	}
	got = list()
	if e := got.Manifests[1]; e.Platform.Architecture != "riscv64" || e.Annotations["x"] != "1" || got.Annotations["org.opencontainers.image.title"] != "t" || got.Annotations["team"] != "a" {
		t.Fatalf("annotated list: %+v", got)
	}

	for _, tc := range []struct {
		name, entry string
		opts        registry.ListAnnotateOptions
		want        string
	}{
		{"unknown entry lists the entries", "sha256:" + strings.Repeat("0", 64), registry.ListAnnotateOptions{ListEntryOptions: registry.ListEntryOptions{OS: "linux"}}, im.Manifests[0].Digest.String() + " ("},
		{"nothing to change", prefix, registry.ListAnnotateOptions{}, "nothing to change"},
		{"index with an entry", prefix, registry.ListAnnotateOptions{Index: true, ListEntryOptions: registry.ListEntryOptions{Annotations: map[string]string{"a": "b"}}}, "Index annotates the index itself"},
		{"index with a platform", "", registry.ListAnnotateOptions{Index: true, ListEntryOptions: registry.ListEntryOptions{OS: "linux", Annotations: map[string]string{"a": "b"}}}, "OS, Architecture"},
		{"bad arch", prefix, registry.ListAnnotateOptions{ListEntryOptions: registry.ListEntryOptions{Architecture: "arm/64"}}, `--arch "arm/64"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := st.Lookup(ctx, "list")
			_, _, err := registry.AnnotateList(ctx, st, "list", tc.entry, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if after, _ := st.Lookup(ctx, "list"); after.Digest != before.Digest {
				t.Errorf("a failed annotate changed the list")
			}
		})
	}

	removed, _, err := registry.RemoveFromList(ctx, st, "list", reg.Host+"/single:1", registry.Conn{})
	if err != nil || removed != single.Digest {
		t.Fatalf("remove by image name: %s, %v", removed, err)
	}
	removed, _, err = registry.RemoveFromList(ctx, st, "list", im.Manifests[0].Digest.String(), registry.Conn{})
	if err != nil || removed != im.Manifests[0].Digest {
		t.Fatalf("remove by digest: %s, %v", removed, err)
	}
	if got := list(); len(got.Manifests) != 1 || got.Manifests[0].Digest != im.Manifests[1].Digest {
		t.Fatalf("after removes: %+v", got)
	}

	// --amend of an image makes it the first entry of a new list.
	if _, err := registry.CreateList(ctx, st, reg.Host+"/single:1", registry.ListCreateOptions{Amend: true}); err != nil {
		t.Fatal(err)
	}
	raw, err := registry.InspectList(ctx, st, reg.Host+"/single:1")
	if err != nil || !strings.Contains(string(raw), single.Digest.String()) {
		t.Fatalf("amended image: %s, %v", raw, err)
	}

	// Docker manifest lists have no annotations.
	if _, err := registry.CreateList(ctx, st, "dlist", registry.ListCreateOptions{MediaType: types.DockerManifestList}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := registry.AddToList(ctx, st, "dlist", "multi:1", registry.ListAddOptions{ListEntryOptions: registry.ListEntryOptions{Annotations: map[string]string{"a": "b"}}}); err == nil || !strings.Contains(err.Error(), "docker manifest list") {
		t.Fatalf("annotated entry in a docker list: %v", err)
	}

	// Not lists.
	if _, err := registry.InspectList(ctx, st, "localhost/nothing"); err == nil || !strings.Contains(err.Error(), "manifest create") {
		t.Errorf("inspect of nothing: %v", err)
	}
	buildLocal(t, st, "plain:1", "plain\n")
	if _, err := registry.RemoveList(ctx, st, "plain:1"); err == nil || !strings.Contains(err.Error(), "not a manifest list") {
		t.Errorf("manifest rm of an image: %v", err)
	}
	if _, _, err := registry.AddToList(ctx, st, "list", "localonly:9", registry.ListAddOptions{}); err == nil || !errors.Is(err, layers.ErrNotFound) || !strings.Contains(err.Error(), "docker://") {
		t.Errorf("add of a missing local name: %v", err)
	}
}

// TestListAddRemoteIndex: adding a registry's index picks the image for
// the requested platform, or every image with All; only manifests and
// configs are fetched.
func TestListAddRemoteIndex(t *testing.T) {
	reg := registrytest.Start(t)
	px := registrytest.NewProxy(t, reg.Host)
	ctx := context.Background()
	st := newStore(t)
	res, ps := reproducibleIndex(t, st, "multi:1")
	im, _ := indexOf(t, res)
	if _, err := registry.Push(ctx, st, "multi:1", px.Host+"/multi:1", registry.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	fresh := newStore(t)
	if _, err := registry.CreateList(ctx, fresh, "l", registry.ListCreateOptions{}); err != nil {
		t.Fatal(err)
	}
	px.Requests()
	added, _, err := registry.AddToList(ctx, fresh, "l", "docker://"+px.Host+"/multi:1", registry.ListAddOptions{Platform: ps[1]})
	if err != nil || len(added) != 1 || added[0].Digest != im.Manifests[1].Digest {
		t.Fatalf("add for %v: %+v, %v", ps[1], added, err)
	}
	added, _, err = registry.AddToList(ctx, fresh, "l", px.Host+"/multi:1", registry.ListAddOptions{All: true})
	if err != nil || len(added) != 2 {
		t.Fatalf("add --all: %+v, %v", added, err)
	}
	for _, r := range px.Requests() {
		if strings.HasPrefix(r, "GET ") && strings.Contains(r, "/blobs/") {
			// Only configs: their digests are in the manifests.
			ok := false
			for _, d := range im.Manifests {
				img, _ := res.Index.Image(d.Digest)
				cn, _ := img.ConfigName()
				ok = ok || strings.HasSuffix(r, cn.String())
			}
			if !ok {
				t.Errorf("add downloaded a layer: %s", r)
			}
		}
	}
	_, _, err = registry.AddToList(ctx, fresh, "l", "docker://"+px.Host+"/multi:1", registry.ListAddOptions{Platform: v1.Platform{OS: "linux", Architecture: "s390x"}})
	if optionOf(err) != "ListAddOptions.All" || !strings.Contains(err.Error(), "linux/s390x") {
		t.Errorf("add of a missing platform: %v", err)
	}
}

// optionOf is the option a registry.OptionError in err's chain names, or
// "".
func optionOf(err error) string {
	var oe *registry.OptionError
	if errors.As(err, &oe) {
		return oe.Option
	}
	return ""
}

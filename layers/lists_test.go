package layers_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/layers"
)

// appendEntry is an UpdateList edit that adds d, creating an OCI index.
func appendEntry(d v1.Descriptor) func(*v1.IndexManifest, *v1.Descriptor) (*v1.IndexManifest, error) {
	return func(cur *v1.IndexManifest, named *v1.Descriptor) (*v1.IndexManifest, error) {
		if cur == nil {
			if named != nil {
				return nil, errors.New("names an image")
			}
			cur = &v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
		}
		cur.Manifests = append(cur.Manifests, d)
		return cur, nil
	}
}

// TestUpdateListConcurrent adds entries to one list from many goroutines
// at once (each opening its own lock, as processes do): none is lost.
func TestUpdateListConcurrent(t *testing.T) {
	ctx := context.Background()
	s := fixtureStore(t)
	const n = 12
	var wg sync.WaitGroup
	errs := make([]error, n)
	want := make([]v1.Hash, n)
	for i := range n {
		_, d := storedImage(t, s, "", fmt.Sprintf("entry %d", i))
		want[i] = d.Digest
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.UpdateList(ctx, "list:1", appendEntry(d))
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	desc, err := s.Lookup(ctx, "list:1")
	if err != nil {
		t.Fatal(err)
	}
	idx, err := s.ImageIndex(ctx, desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var got []v1.Hash
	for _, m := range im.Manifests {
		got = append(got, m.Digest)
	}
	for _, h := range want {
		if !slices.Contains(got, h) {
			t.Errorf("entry %s lost; list has %d entries", h, len(got))
		}
	}
	if len(got) != n {
		t.Errorf("list has %d entries, want %d", len(got), n)
	}
}

// TestUpdateListRefusesImage: an edit sees that the name is an image and
// its error aborts the update, leaving the name as it was.
func TestUpdateListRefusesImage(t *testing.T) {
	ctx := context.Background()
	s := fixtureStore(t)
	_, img := storedImage(t, s, "plain:1", "an image")
	_, err := s.UpdateList(ctx, "plain:1", appendEntry(img))
	if err == nil || err.Error() != "names an image" {
		t.Fatalf("UpdateList on an image: %v", err)
	}
	if d, _ := s.Lookup(ctx, "plain:1"); d.Digest != img.Digest {
		t.Fatalf("plain:1 now names %s", d.Digest)
	}
	if _, err := s.UpdateList(ctx, img.Digest.String(), appendEntry(img)); err == nil || !strings.Contains(err.Error(), "by its name") {
		t.Errorf("UpdateList by digest: %v", err)
	}
	// An empty list is written with "manifests": [] (never null).
	d, err := s.UpdateList(ctx, "empty", func(*v1.IndexManifest, *v1.Descriptor) (*v1.IndexManifest, error) {
		return &v1.IndexManifest{MediaType: types.OCIImageIndex}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.Blobs().ReadAll(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`; string(raw) != want {
		t.Errorf("empty list %s, want %s", raw, want)
	}
}

// TestListKeepsEntriesAlive: a list keeps its stored entries (manifest,
// config, layers) alive after their own names go; an entry that lives in
// a registry has only its manifest and config stored, and its sources
// record goes when the list does.
func TestListKeepsEntriesAlive(t *testing.T) {
	ctx := context.Background()
	s := nativeStore(t)
	localImg, local := storedImage(t, s, "local:1", "local entry")
	// A "remote" entry: only the manifest and config are stored.
	remoteImg, _ := storedImage(t, fixtureStore(t), "", "remote entry")
	rawMan, _ := remoteImg.RawManifest()
	rawCfg, _ := remoteImg.RawConfigFile()
	remoteDigest := digestOf(t, remoteImg)
	for _, b := range [][]byte{rawMan, rawCfg} {
		if _, err := s.Blobs().PutBytes(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddSources(ctx, remoteDigest, "reg.example/team/app"); err != nil {
		t.Fatal(err)
	}
	if err := s.AddSources(ctx, remoteDigest, "reg.example/team/app", "reg.example/other"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Sources(remoteDigest); err != nil || !slices.Equal(got, []string{"reg.example/other", "reg.example/team/app"}) {
		t.Fatalf("Sources = %q, %v", got, err)
	}
	if err := s.AddSources(ctx, remoteDigest, "bad repo"); err == nil {
		t.Error("AddSources accepted a repository with a space")
	}
	mt, _ := remoteImg.MediaType()
	remote := v1.Descriptor{MediaType: mt, Size: int64(len(rawMan)), Digest: remoteDigest}
	for _, d := range []v1.Descriptor{local, remote} {
		if _, err := s.UpdateList(ctx, "list", appendEntry(d)); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := s.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if slices.Contains(r.Names, "localhost/list:latest") {
			// The remote entry's layer is not stored, so not counted.
			localSize := int64(0)
			for _, h := range layertestBlobs(t, localImg) {
				n, _ := s.Blobs().Size(h)
				localSize += n
			}
			want := localSize + int64(len(rawMan)+len(rawCfg)) + mustSize(t, s, r.Digest)
			if r.Size != want {
				t.Errorf("list size %d, want %d (stored blobs only)", r.Size, want)
			}
		}
	}
	if err := s.Untag(ctx, "local:1"); err != nil {
		t.Fatal(err)
	}
	backdateStore(t, s)
	if _, err := s.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	for _, h := range append(layertestBlobs(t, localImg), remoteDigest) {
		if !s.Blobs().Has(h) {
			t.Errorf("prune deleted %s, which the list references", h)
		}
	}
	if got, _ := s.Sources(remoteDigest); len(got) != 2 {
		t.Errorf("prune dropped the sources of a live entry: %q", got)
	}
	rep, err := s.Remove(ctx, "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range append(layertestBlobs(t, localImg), remoteDigest) {
		if s.Blobs().Has(h) || !slices.Contains(rep.Deleted, h) {
			t.Errorf("removing the list left %s", h)
		}
	}
	if _, err := os.Stat(filepath.Join(s.Root(), "sources", remoteDigest.Hex+".json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sources record of a removed entry: %v", err)
	}
}

// TestPruneSources: a sources record whose manifest is gone is pruned once
// old; a fresh one is kept, as fresh blobs are.
func TestPruneSources(t *testing.T) {
	ctx := context.Background()
	s := fixtureStore(t)
	oldH := v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%064x", 1)}
	freshH := v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%064x", 2)}
	for _, h := range []v1.Hash{oldH, freshH} {
		if err := s.AddSources(ctx, h, "reg.example/app"); err != nil {
			t.Fatal(err)
		}
	}
	backdate(t, filepath.Join(s.Root(), "sources", oldH.Hex+".json"))
	if _, err := s.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Sources(oldH); got != nil {
		t.Errorf("old orphan record kept: %q", got)
	}
	if got, _ := s.Sources(freshH); len(got) != 1 {
		t.Errorf("fresh record pruned: %q", got)
	}
}

// layertestBlobs lists the manifest, config and layer digests of img.
func layertestBlobs(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	out := []v1.Hash{digestOf(t, img), m.Config.Digest}
	for _, l := range m.Layers {
		out = append(out, l.Digest)
	}
	return out
}

func mustSize(t *testing.T, s *layers.Store, h v1.Hash) int64 {
	t.Helper()
	n, err := s.Blobs().Size(h)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// backdateStore makes every blob and snapshot old enough for Prune.
func backdateStore(t *testing.T, s *layers.Store) {
	t.Helper()
	var paths []string
	for _, d := range []string{"blobs/sha256", "snapshots", "sources"} {
		ents, _ := os.ReadDir(filepath.Join(s.Root(), d))
		for _, e := range ents {
			paths = append(paths, filepath.Join(s.Root(), d, e.Name()))
		}
	}
	backdate(t, paths...)
}

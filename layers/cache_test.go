package layers_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/layers"
)

func cacheKey(b byte) v1.Hash {
	h := v1.Hash{Algorithm: "sha256"}
	for range 64 {
		h.Hex += string("0123456789abcdef"[b%16])
	}
	return h
}

func TestCacheRecords(t *testing.T) {
	ctx := context.Background()
	s := fixtureStore(t)
	d, err := s.Blobs().CommitTar(ctx, bytes.NewReader(fixtureTar(t, []fixtureFile{{Name: "cached", Body: "layer only a cache record references"}})),
		layers.CommitOptions{Compression: layers.Gzip})
	if err != nil {
		t.Fatal(err)
	}
	withLayer, noLayer, dangling := cacheKey(1), cacheKey(2), cacheKey(3)
	for key, rec := range map[v1.Hash]*layers.CacheRecord{
		withLayer: {Config: []byte(`{"architecture":"amd64"}`), Layer: &d},
		noLayer:   {Config: []byte(`{"architecture":"amd64"}`)},
	} {
		if err := s.CachePut(ctx, key, rec); err != nil {
			t.Fatal(err)
		}
	}
	if rec, ok, err := s.CacheGet(withLayer); err != nil || !ok || rec.Layer.Digest != d.Digest {
		t.Fatalf("CacheGet(withLayer) = %+v, %v, %v", rec, ok, err)
	}
	if rec, ok, err := s.CacheGet(noLayer); err != nil || !ok || rec.Layer != nil {
		t.Fatalf("CacheGet(noLayer) = %+v, %v, %v", rec, ok, err)
	}
	if _, ok, err := s.CacheGet(dangling); err != nil || ok {
		t.Fatalf("CacheGet of an unknown key: ok %v, %v", ok, err)
	}
	if _, _, err := s.CacheGet(v1.Hash{Algorithm: "sha256", Hex: "../../x"}); err == nil {
		t.Error("CacheGet accepted a key that is not a digest")
	}
	// A damaged record reads as absent.
	damaged := cacheKey(4)
	p := filepath.Join(s.Root(), "cache", "records", damaged.Hex+".json")
	if err := os.WriteFile(p, []byte(`{"config":`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := s.CacheGet(damaged); err != nil || ok {
		t.Errorf("damaged record: ok %v, %v", ok, err)
	}

	// The record keeps its layer through a prune, however old the blob.
	blob := s.Blobs().Path(d.Digest)
	backdate(t, blob)
	if _, err := s.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(blob); err != nil {
		t.Fatalf("prune removed a layer a cache record references: %v", err)
	}
	// PruneCache with keep leaves recently used records.
	if rep, err := s.PruneCache(ctx, time.Hour); err != nil || rep.Records != 0 {
		t.Fatalf("PruneCache(1h) = %+v, %v; want nothing removed", rep, err)
	}
	if rep, err := s.PruneCache(ctx, 0); err != nil || rep.Records != 3 {
		t.Fatalf("PruneCache(0) = %+v, %v; want 3 records removed", rep, err)
	}
	backdate(t, blob)
	if _, err := s.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(blob); err == nil {
		t.Error("layer kept after its cache record was pruned")
	}
	// A record whose layer is gone is a miss, never a broken hit.
	if err := s.CachePut(ctx, withLayer, &layers.CacheRecord{Config: []byte(`{}`), Layer: &d}); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.CacheGet(withLayer); ok {
		t.Error("record whose layer blob is gone was a hit")
	}
}

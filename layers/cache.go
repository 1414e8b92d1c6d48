package layers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// CacheRecord is what one build step produced, found again by the step's
// cache key: what it did to the image config and the layer it added, if
// any. Records live in Root/cache/records/<key hex>.json; every layer a
// record names is a garbage-collection root until the record is removed
// (PruneCache), so Prune never leaves a record pointing at nothing.
type CacheRecord struct {
	// Config is the builder's record of what the step did to the image
	// config (its format is the builder's, and versioned there).
	Config json.RawMessage `json:"config"`
	// Layer is the layer the step added; nil for a step that made none.
	// A lazy one (no blob yet, see CommitSnapshot) lives in the snapshot
	// Chain names.
	Layer *Descriptor `json:"layer,omitempty"`
	// Chain is the chain ID of the layer (and those below), for a lazy
	// Layer: its snapshot is kept while the record is.
	Chain *v1.Hash `json:"chain,omitempty"`
}

// CacheEntry is one step's cache record with its key and layer, as a
// build used or made it; a build's entries are what a cache export
// (--cache-to) writes.
type CacheEntry struct {
	Key    v1.Hash
	Record *CacheRecord
	// Layer is the record's layer, nil for a step that made none. It may
	// be lazy: a layer from a registry cache is fetched when read.
	Layer v1.Layer
	// Final is set for the steps of the stages that produced the build's
	// results (what mode=min exports).
	Final bool
}

// CacheGet returns the record stored under key, or ok false when there is
// none or the layer it names is no longer in the blob store. A hit
// refreshes the record's mtime, which PruneCache reads as its last use.
func (s *Store) CacheGet(key v1.Hash) (rec *CacheRecord, ok bool, err error) {
	if !validHash(key) {
		return nil, false, fmt.Errorf("cache: invalid key %q", key)
	}
	p := s.cachePath(key)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("cache: %w", err)
	}
	rec = &CacheRecord{}
	if err := json.Unmarshal(b, rec); err != nil || len(rec.Config) == 0 {
		// A record is written atomically, so this is damage from outside:
		// treat it as absent; the step runs and rewrites it.
		return nil, false, nil
	}
	if rec.Layer != nil && !s.layerPresent(*rec.Layer, rec.Chain) {
		return nil, false, nil
	}
	_ = touchNow(p)
	return rec, true, nil
}

// CachePut stores rec under key, replacing any record of that key. Its
// layer must already be in the blob store.
func (s *Store) CachePut(ctx context.Context, key v1.Hash, rec *CacheRecord) error {
	if !validHash(key) {
		return fmt.Errorf("cache: invalid key %q", key)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(s.cachePath(key)), 0o755); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	if err := s.writeCacheFile(s.cachePath(key), b); err != nil {
		return fmt.Errorf("cache: store record %s: %w", key.Hex[:12], err)
	}
	return nil
}

// CacheDir is the directory for cache data beside the records (context
// indexes, step histories); it is created on first use.
func (s *Store) CacheDir(name string) (string, error) {
	d := filepath.Join(s.root, "cache", name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", fmt.Errorf("cache: %w", err)
	}
	return d, nil
}

// WriteCacheFile replaces path (a cache file inside the store) with b,
// atomically but without fsync: cache files are only ever an
// optimization, and every reader treats a damaged one as absent, so after
// a crash the worst outcome is a cache miss; skipping the syncs keeps a
// build's many small cache writes from waiting on the disk.
func (s *Store) WriteCacheFile(path string, b []byte) error {
	return s.writeCacheFile(path, b)
}

func (s *Store) writeCacheFile(path string, b []byte) error {
	return s.replaceFile(path, b, false)
}

// layerPresent reports whether the layer d can be read: its blob, or for a
// lazy one the snapshot of chain.
func (s *Store) layerPresent(d Descriptor, chain *v1.Hash) bool {
	if !validHash(d.DiffID) {
		return false
	}
	if d.Lazy() {
		return chain != nil && validHash(*chain) && s.hasSnapshot(*chain)
	}
	if !validHash(d.Digest) {
		return false
	}
	_, err := os.Lstat(s.blobs.Path(d.Digest))
	return err == nil
}

func (s *Store) cachePath(key v1.Hash) string {
	return filepath.Join(s.root, "cache", "records", key.Hex+".json")
}

// CachePruneReport says what PruneCache removed.
type CachePruneReport struct {
	Records int
}

// PruneCache removes cache records not used within keep (every record when
// keep is 0). The layers only those records kept alive are then collected
// by the next Prune.
func (s *Store) PruneCache(ctx context.Context, keep time.Duration) (CachePruneReport, error) {
	var rep CachePruneReport
	unlock, err := s.Lock(ctx, true)
	if err != nil {
		return rep, err
	}
	defer unlock()
	dir := filepath.Join(s.root, "cache", "records")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return rep, nil
	}
	if err != nil {
		return rep, fmt.Errorf("prune cache: %w", err)
	}
	cutoff := time.Now().Add(-keep)
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		if keep > 0 {
			fi, err := e.Info()
			if err != nil || !fi.ModTime().Before(cutoff) {
				continue
			}
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return rep, fmt.Errorf("prune cache: %w", err)
		}
		rep.Records++
	}
	return rep, nil
}

// cacheLayers lists the layer digests cache records name, for Prune.
func (s *Store) cacheLayers() (blobs, chains []v1.Hash, err error) {
	dir := filepath.Join(s.root, "cache", "records")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read cache records: %w", err)
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("read cache records: %w", err)
		}
		var rec CacheRecord
		if json.Unmarshal(b, &rec) != nil || rec.Layer == nil {
			continue
		}
		if validHash(rec.Layer.Digest) {
			blobs = append(blobs, rec.Layer.Digest)
		}
		if rec.Chain != nil && validHash(*rec.Chain) {
			chains = append(chains, *rec.Chain)
		}
	}
	return blobs, chains, nil
}

// LayerMemo returns the layer stored under key by PutLayerMemo, if its
// blob is still in the store. The build cache keys layers by what they
// are made from (the layers below, the instruction, the sources) apart
// from the image config, so that builds for several platforms, or
// different Dockerfiles, share a COPY's layer.
func (s *Store) LayerMemo(key v1.Hash) (*Descriptor, bool) {
	if !validHash(key) {
		return nil, false
	}
	b, err := os.ReadFile(s.layerMemoPath(key))
	if err != nil {
		return nil, false
	}
	var m layerMemo
	if json.Unmarshal(b, &m) != nil || !s.layerPresent(m.Descriptor, m.Chain) {
		return nil, false
	}
	return &m.Descriptor, true
}

// layerMemo is what PutLayerMemo records: a layer, and for a lazy one the
// chain ID of its snapshot.
type layerMemo struct {
	Descriptor
	Chain *v1.Hash `json:"chain,omitempty"`
}

// PutLayerMemo records d under key (see LayerMemo); chain is the chain ID
// of a lazy layer's snapshot.
func (s *Store) PutLayerMemo(key v1.Hash, d Descriptor, chain *v1.Hash) error {
	if !validHash(key) {
		return fmt.Errorf("cache: invalid key %q", key)
	}
	b, err := json.Marshal(layerMemo{d, chain})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(s.layerMemoPath(key)), 0o755); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	return s.writeCacheFile(s.layerMemoPath(key), b)
}

func (s *Store) layerMemoPath(key v1.Hash) string {
	return filepath.Join(s.root, "cache", "layers", key.Hex+".json")
}

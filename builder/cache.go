package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/builder/ctxhash"
	"github.com/ibuild/ibuild/builder/internal/copier"
	"github.com/ibuild/ibuild/layers"
)

// cacheSession is the build cache as one Build call sees it: the store's
// records, the imported (--cache-from) caches, the build context's digest
// index, and the steps of this build that --cache-to exports. Every
// platform's build of the Build call shares it, so a step whose key two
// platforms compute at once (a stage on $BUILDPLATFORM) runs once and the
// other platform takes the result.
type cacheSession struct {
	store *layers.Store
	// lookup is false with NoCache: steps run and records are written, but
	// none is reused.
	lookup bool
	// skipStages are stage names and indexes (--no-cache-filter) whose
	// steps are not looked up.
	skipStages map[string]bool
	imported   []CacheSource

	idx     *ctxhash.Index
	idxPath string
	// mountIDs are the cache mount ids the build's RUN steps name.
	mountIDs map[string]bool
	// mainID is the build context's id.
	mainID string
	// others are the digest indexes of the named contexts, by context id.
	others map[string]*otherIndex
	// layerOptions are the build options every layer depends on.
	layerOptions string

	mu           sync.Mutex
	importedHits []importedHit
	flights      map[v1.Hash]chan struct{}
	entries      []cacheUse
	seen         map[v1.Hash]int // index in entries
}

// CacheSource is a cache imported with --cache-from: it answers a step's
// key with a record and the layer the record names, which may be fetched
// lazily (a registry's blob is downloaded only when its bytes are read).
type CacheSource interface {
	// Lookup returns the record of key, if the source has one.
	Lookup(key v1.Hash) (*layers.CacheRecord, v1.Layer, bool)
}

// CacheExporter receives the cache records of a successful build: every
// step it ran or took from a cache, in order (--cache-to).
type CacheExporter interface {
	ExportCache(ctx context.Context, entries []layers.CacheEntry) error
}

// cacheUse is a step of this build, for export, with the stages that
// used it (two stages with the same base and first steps share keys).
type cacheUse struct {
	layers.CacheEntry
	stages []*stageRun
}

func newCacheSession(opts *Options, ctxDir string) (*cacheSession, error) {
	cs := &cacheSession{
		store:      opts.Store,
		lookup:     !opts.NoCache,
		skipStages: map[string]bool{},
		imported:   opts.CacheFrom,
		flights:    map[v1.Hash]chan struct{}{},
		seen:       map[v1.Hash]int{},
		others:     map[string]*otherIndex{},
		mainID:     ctxDir,
	}
	epoch := "none"
	if e := opts.SourceDateEpoch; e != nil {
		epoch = strconv.FormatInt(e.Unix(), 10)
	}
	cs.layerOptions = fmt.Sprintf("compression=%s level=%d epoch=%s", opts.Compression, opts.CompressionLevel, epoch)
	for _, s := range opts.NoCacheFilter {
		cs.skipStages[strings.ToLower(s)] = true
	}
	dir, err := opts.Store.CacheDir("context")
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(ctxDir))
	cs.idxPath = filepath.Join(dir, hex.EncodeToString(sum[:16]))
	cs.idx = ctxhash.Load(cs.idxPath)
	cs.idx.Jobs = opts.Jobs
	return cs, nil
}

// otherIndex is the digest index of a named context.
type otherIndex struct {
	idx  *ctxhash.Index
	path string
}

// index is the digest index of the tree src: the build context's, a
// named context's (each has its own), or for another tree a throwaway one.
func (cs *cacheSession) index(src copier.Source) *ctxhash.Index {
	c, ok := src.(*copier.ContextFS)
	if !ok || c.ID == "" || c.ID == cs.mainID {
		return cs.idx
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if o, ok := cs.others[c.ID]; ok {
		return o.idx
	}
	sum := sha256.Sum256([]byte(c.ID))
	p := filepath.Join(filepath.Dir(cs.idxPath), hex.EncodeToString(sum[:16]))
	o := &otherIndex{idx: ctxhash.Load(p), path: p}
	o.idx.Jobs = cs.idx.Jobs
	cs.others[c.ID] = o
	return o.idx
}

// close saves the context digest indexes.
func (cs *cacheSession) close() error {
	var errs []error
	errs = append(errs, cs.idx.Save(cs.idxPath, cs.store.WriteCacheFile))
	for _, o := range cs.others {
		errs = append(errs, o.idx.Save(o.path, cs.store.WriteCacheFile))
	}
	return errors.Join(errs...)
}

// acquire waits until no other build of this session is working on key,
// then claims it until release is called.
func (cs *cacheSession) acquire(ctx context.Context, key v1.Hash) (release func(), err error) {
	for {
		cs.mu.Lock()
		ch, busy := cs.flights[key]
		if !busy {
			ch = make(chan struct{})
			cs.flights[key] = ch
			cs.mu.Unlock()
			return func() {
				cs.mu.Lock()
				delete(cs.flights, key)
				cs.mu.Unlock()
				close(ch)
			}, nil
		}
		cs.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// get finds key's record locally, then in the imported caches. A local
// record's layer is read as the layer on top of c's.
func (cs *cacheSession) get(key v1.Hash, c *Container) (*layers.CacheRecord, v1.Layer, bool, error) {
	rec, ok, err := cs.store.CacheGet(key)
	if err != nil {
		return nil, nil, false, err
	}
	if ok {
		var l v1.Layer
		if rec.Layer != nil {
			l = c.layerFor(*rec.Layer)
		}
		return rec, l, true, nil
	}
	for _, src := range cs.imported {
		if rec, l, ok := src.Lookup(key); ok {
			if (rec.Layer == nil) != (l == nil) {
				continue
			}
			cs.mu.Lock()
			cs.importedHits = append(cs.importedHits, importedHit{key, rec})
			cs.mu.Unlock()
			return rec, l, true, nil
		}
	}
	return nil, nil, false, nil
}

// importedHit is a step taken from an imported cache.
type importedHit struct {
	key v1.Hash
	rec *layers.CacheRecord
}

// keepImported records, in the store's own cache, the steps this build
// took from imported caches whose layers are now local (a later step or
// the output needed their bytes) or that made no layer: the next build in
// this store hits them without --cache-from.
func (cs *cacheSession) keepImported(ctx context.Context) {
	cs.mu.Lock()
	hits := cs.importedHits
	cs.importedHits = nil
	cs.mu.Unlock()
	for _, h := range hits {
		if h.rec.Layer != nil && !cs.store.Blobs().Has(h.rec.Layer.Digest) {
			continue
		}
		_ = cs.store.CachePut(ctx, h.key, h.rec)
	}
}

// record notes a step of this build for export.
func (cs *cacheSession) record(s *stageRun, key v1.Hash, rec *layers.CacheRecord, l v1.Layer) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if i, ok := cs.seen[key]; ok {
		cs.entries[i].stages = append(cs.entries[i].stages, s)
		return
	}
	cs.seen[key] = len(cs.entries)
	cs.entries = append(cs.entries, cacheUse{CacheEntry: layers.CacheEntry{Key: key, Record: rec, Layer: l}, stages: []*stageRun{s}})
}

// exportEntries lists the steps of this build, marking those of the
// stages that produced the results as Final.
func (cs *cacheSession) exportEntries(finals map[*stageRun]bool) []layers.CacheEntry {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	out := make([]layers.CacheEntry, len(cs.entries))
	for i, e := range cs.entries {
		out[i] = e.CacheEntry
		for _, s := range e.stages {
			out[i].Final = out[i].Final || finals[s]
		}
	}
	return out
}

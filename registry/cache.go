package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/layers"
)

// The registry cache format. A cache is one OCI image manifest at the
// cache reference:
//
//	{
//	  "schemaVersion": 2,
//	  "mediaType": "application/vnd.oci.image.manifest.v1+json",
//	  "artifactType": CacheArtifactType,
//	  "config": {"mediaType": CacheConfigType, "digest": ..., "size": ...},
//	  "layers": [ the layer blobs the records name, each once, with their own media types ]
//	}
//
// Its config blob is a cacheConfig: the diff ID and uncompressed size of
// each manifest layer (same order), and the records: a step's cache key,
// what it did to the image config (layers.CacheRecord), and the index of
// the layer it added in
// "layers" (absent for a step that added none). Layer blobs are the
// image layers themselves, so an image built from the cache and pushed to
// the same registry can mount them.
const (
	// CacheArtifactType is the artifactType of a cache manifest.
	CacheArtifactType = "application/vnd.ibuild.cache.v1"
	// CacheConfigType is the media type of a cache manifest's config blob.
	CacheConfigType types.MediaType = "application/vnd.ibuild.cache.config.v1+json"
)

// Cache export modes.
const (
	// CacheModeMin exports the steps of the stages that produced the
	// result only.
	CacheModeMin = "min"
	// CacheModeMax exports every step of the build, every stage's.
	CacheModeMax = "max"
)

// Cache types.
const (
	// CacheTypeRegistry is a cache at an image reference.
	CacheTypeRegistry = "registry"
	// CacheTypeLocal is a cache in an OCI image layout directory.
	CacheTypeLocal = "local"
)

// CacheSpec is a parsed --cache-from or --cache-to value.
type CacheSpec struct {
	// Type is the cache's kind: CacheTypeRegistry or CacheTypeLocal.
	Type string
	// Ref is a registry cache's image reference.
	Ref string
	// Src and Dest are a local cache's directory, to import from and to
	// export to; Tag names the cache in it (default "latest").
	Src, Dest, Tag string
	// Mode is CacheModeMin or CacheModeMax (export only).
	Mode string
	// Mounts exports the contents of RUN --mount=type=cache directories
	// with the steps (export only; mounts=true).
	Mounts bool
}

// ParseCacheSpec parses a docker buildx style cache value:
// type=registry,ref=REF[,mode=min|max][,mounts=true] (a bare REF means
// type=registry,ref=REF) or type=local,src=DIR / type=local,dest=DIR
// [,tag=TAG][,mode=min|max][,mounts=true]. Mode defaults to min.
// image-manifest=true and oci-mediatypes=true are accepted (the format
// always is both).
func ParseCacheSpec(s string) (CacheSpec, error) {
	spec := CacheSpec{Type: "registry", Mode: CacheModeMin}
	s = strings.TrimSpace(s)
	if s == "" {
		return spec, errors.New("empty cache spec: want type=registry,ref=REF[,mode=min|max]")
	}
	if !strings.Contains(s, "=") {
		spec.Ref = s
		return spec, nil
	}
	typ := ""
	for _, f := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(f), "=")
		if !ok || k == "" {
			return spec, fmt.Errorf("%q: want key=value", f)
		}
		switch strings.ToLower(k) {
		case "type":
			typ = v
		case "ref":
			spec.Ref = v
		case "src":
			spec.Src = v
		case "dest":
			spec.Dest = v
		case "tag":
			spec.Tag = v
		case "mounts":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return spec, fmt.Errorf("mounts=%s: want true or false", v)
			}
			spec.Mounts = b
		case "mode":
			if v != CacheModeMin && v != CacheModeMax {
				return spec, fmt.Errorf("mode=%s: want min or max", v)
			}
			spec.Mode = v
		case "image-manifest", "oci-mediatypes":
			if v != "true" {
				return spec, fmt.Errorf("%s=%s: only true is supported (the cache is always an OCI image manifest)", k, v)
			}
		default:
			return spec, fmt.Errorf("unknown key %q (want type, ref, src, dest, tag, mode or mounts)", k)
		}
	}
	switch typ {
	case "", CacheTypeRegistry:
		if spec.Src != "" || spec.Dest != "" || spec.Tag != "" {
			return spec, errors.New("src, dest and tag are type=local's: a registry cache takes ref=REF")
		}
	case CacheTypeLocal:
		spec.Type = CacheTypeLocal
		if spec.Ref != "" {
			return spec, errors.New("ref is type=registry's: a local cache takes src=DIR (to import) or dest=DIR (to export)")
		}
		if spec.Src == "" && spec.Dest == "" {
			return spec, errors.New("type=local needs src=DIR (to import) or dest=DIR (to export)")
		}
		if spec.Tag == "" {
			spec.Tag = "latest"
		}
		return spec, nil
	default:
		return spec, fmt.Errorf("type=%s: want registry or local", typ)
	}
	if spec.Ref == "" {
		return spec, errors.New("missing ref=REF")
	}
	if _, err := name.ParseReference(spec.Ref, name.WeakValidation); err != nil {
		return spec, fmt.Errorf("ref=%s: %w", spec.Ref, err)
	}
	return spec, nil
}

// String renders the spec as ParseCacheSpec reads it.
func (s CacheSpec) String() string {
	out := "type=" + s.Type
	if s.Type == CacheTypeLocal {
		if s.Src != "" {
			out += ",src=" + s.Src
		}
		if s.Dest != "" {
			out += ",dest=" + s.Dest
		}
		out += ",tag=" + s.Tag
	} else {
		out += ",ref=" + s.Ref
	}
	out += ",mode=" + s.Mode
	if s.Mounts {
		out += ",mounts=true"
	}
	return out
}

// CacheOptions configure ImportCache and NewCacheExport.
type CacheOptions struct {
	// Conn is how the registry is reached: insecure hosts, TLS,
	// credentials, transport.
	Conn
	// Store, when set, keeps the layer blobs fetched from the cache in its
	// blob store (a layer is then downloaded once, however often it is
	// read) and reads the ones it already has from there. It is also where
	// an export finds layers a build made.
	Store *layers.Store
	// Jobs bounds how many blobs an export uploads at once; 0 means 3.
	Jobs int
	// Progress receives one line per step; nil discards them.
	Progress func(string)
}

func (o CacheOptions) progress(format string, args ...any) {
	if o.Progress != nil {
		o.Progress(fmt.Sprintf(format, args...))
	}
}

// cacheConfig is the config blob of a cache manifest.
type cacheConfig struct {
	// Layers lists what the manifest's layer descriptors lack, in the
	// same order.
	Layers []cacheLayerInfo `json:"layers"`
	// Records are the cached steps.
	Records []cacheRecord `json:"records"`
	// Mounts are the contents of cache mounts (mounts=true), each a layer
	// of the manifest.
	Mounts []cacheMountInfo `json:"mounts,omitempty"`
}

// cacheMountInfo is one exported cache mount instance.
type cacheMountInfo struct {
	ID       string `json:"id"`
	Instance string `json:"instance"`
	Overlay  bool   `json:"overlay,omitempty"`
	// Layer is an index into the manifest's layers.
	Layer int `json:"layer"`
}

type cacheLayerInfo struct {
	Digest           v1.Hash `json:"digest"`
	DiffID           v1.Hash `json:"diffID"`
	UncompressedSize int64   `json:"uncompressedSize,omitempty"`
}

type cacheRecord struct {
	Key    v1.Hash         `json:"key"`
	Config json.RawMessage `json:"config"`
	// Layer is an index into the manifest's layers; nil for a step that
	// added no layer.
	Layer *int `json:"layer,omitempty"`
}

// Cache is a build cache imported from a registry (--cache-from). Its
// layers are fetched when they are read, not before.
type Cache struct {
	// Ref is the cache's reference, as given.
	Ref string
	// Warning, when not empty, says why the cache is empty although no
	// error occurred (the reference does not exist yet: a first build).
	Warning string

	ref     name.Reference
	records map[v1.Hash]*layers.CacheRecord
	layers  map[v1.Hash]v1.Layer
	mounts  map[string]layers.CacheMount
	// open reads a blob of the cache, checking its digest.
	open func(ctx context.Context, d v1.Hash) (io.ReadCloser, error)
	// where names the cache in messages.
	where string
}

// ImportCache reads the cache at ref: its manifest and config blob, no
// layer bytes. A reference that does not exist yet gives an empty cache
// with a Warning, not an error, so a first build (in CI, a new branch)
// succeeds. Other failures (unauthorized, unreachable, not a cache) are
// errors naming ref.
//
// Layers are fetched later, when a build reads them, within ctx: ctx
// must stay live as long as the cache is used.
func ImportCache(ctx context.Context, ref string, opts CacheOptions) (*Cache, error) {
	r, err := ParseReference(ref, opts.Insecure)
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", ref, err)
	}
	full := CanonicalName(r)
	c := newCache(ref, full)
	c.ref = r
	c.open = func(ctx context.Context, d v1.Hash) (io.ReadCloser, error) {
		rl, err := remote.Layer(r.Context().Digest(d.String()), opts.Conn.remoteOptions(ctx, pullJobs)...)
		if err != nil {
			return nil, err
		}
		return rl.Compressed()
	}
	fail := func(err error) (*Cache, error) {
		return nil, fmt.Errorf("cache %s (registry %s): %w", full, registryHost(r), err)
	}
	ropts := opts.Conn.remoteOptions(ctx, pullJobs)
	opts.progress("importing cache %s", full)
	desc, err := remote.Get(r, ropts...)
	if err != nil {
		if notFound(err) {
			c.Warning = fmt.Sprintf("cache %s does not exist yet: building without it", full)
			return c, nil
		}
		return fail(err)
	}
	m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
	if err != nil {
		return fail(fmt.Errorf("manifest: %w", err))
	}
	if m.Config.MediaType != CacheConfigType {
		return fail(fmt.Errorf("not an ibuild cache: its config is a %s, not a %s", m.Config.MediaType, CacheConfigType))
	}
	if m.Config.Size > 64<<20 {
		return fail(fmt.Errorf("cache config of %d bytes is too large", m.Config.Size))
	}
	var raw []byte
	if err := retryBroken(ctx, func() error {
		l, err := remote.Layer(r.Context().Digest(m.Config.Digest.String()), ropts...)
		if err != nil {
			return err
		}
		rc, err := l.Compressed() // checks the digest while reading
		if err != nil {
			return err
		}
		defer rc.Close()
		raw, err = io.ReadAll(io.LimitReader(rc, m.Config.Size+1))
		return err
	}); err != nil {
		return fail(fmt.Errorf("config %s: %w", m.Config.Digest, err))
	}
	if err := c.decode(ctx, m, raw, opts); err != nil {
		return fail(err)
	}
	opts.progress("imported cache %s: %d records, %d layers", full, len(c.records), len(c.layers))
	return c, nil
}

// newCache is an empty cache named ref, shown as where.
func newCache(ref, where string) *Cache {
	return &Cache{Ref: ref, where: where, records: map[v1.Hash]*layers.CacheRecord{}, layers: map[v1.Hash]v1.Layer{},
		mounts: map[string]layers.CacheMount{}}
}

// notFound reports whether err is a registry's "no such manifest or
// repository" answer.
func notFound(err error) bool {
	var te *transport.Error
	if !errors.As(err, &te) {
		return false
	}
	if te.StatusCode == http.StatusNotFound {
		return true
	}
	for _, d := range te.Errors {
		switch d.Code {
		case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode:
			return true
		}
	}
	return false
}

// decode fills c from a cache manifest and its config blob.
func (c *Cache) decode(ctx context.Context, m *v1.Manifest, raw []byte, opts CacheOptions) error {
	var cfg cacheConfig
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return fmt.Errorf("cache config: %w", err)
	}
	if len(cfg.Layers) != len(m.Layers) {
		return fmt.Errorf("cache config describes %d layers, the manifest lists %d", len(cfg.Layers), len(m.Layers))
	}
	descs := make([]layers.Descriptor, len(m.Layers))
	for i, l := range m.Layers {
		info := cfg.Layers[i]
		if info.Digest != l.Digest {
			return fmt.Errorf("cache config layer %d is %s, the manifest says %s", i, info.Digest, l.Digest)
		}
		descs[i] = layers.Descriptor{MediaType: l.MediaType, Digest: l.Digest, Size: l.Size, DiffID: info.DiffID, UncompressedSize: info.UncompressedSize}
	}
	for _, r := range cfg.Records {
		if len(r.Config) == 0 || r.Key.Hex == "" {
			continue
		}
		rec := &layers.CacheRecord{Config: r.Config}
		if r.Layer != nil {
			i := *r.Layer
			if i < 0 || i >= len(descs) {
				return fmt.Errorf("cache record %s names layer %d of %d", r.Key, i, len(descs))
			}
			d := descs[i]
			rec.Layer = &d
			if _, ok := c.layers[d.Digest]; !ok {
				c.layers[d.Digest] = c.layer(ctx, d, opts)
			}
		}
		c.records[r.Key] = rec
	}
	for _, m := range cfg.Mounts {
		if m.Layer < 0 || m.Layer >= len(descs) {
			return fmt.Errorf("cache mount %s names layer %d of %d", m.ID, m.Layer, len(descs))
		}
		if m.Instance == "" || strings.ContainsAny(m.Instance, "/\\") || m.Instance == "." || m.Instance == ".." {
			return fmt.Errorf("cache mount %s: bad instance name %q", m.ID, m.Instance)
		}
		d := descs[m.Layer]
		c.mounts[m.Instance] = layers.CacheMount{ID: m.ID, Instance: m.Instance, Overlay: m.Overlay, Desc: d, Layer: c.layer(ctx, d, opts)}
	}
	return nil
}

// layer is the cache's layer d, fetched when read; a registry cache's is
// mountable from its repository.
func (c *Cache) layer(ctx context.Context, d layers.Descriptor, opts CacheOptions) v1.Layer {
	l := &cacheLayer{ctx: ctx, desc: d, cache: c, opts: opts}
	if c.ref == nil {
		return l
	}
	return &remote.MountableLayer{Layer: l, Reference: c.ref}
}

// CacheMount returns the exported content of the cache mount instance
// (see layers.CacheMount), fetched when read.
func (c *Cache) CacheMount(instance string) (layers.CacheMount, bool) {
	m, ok := c.mounts[instance]
	return m, ok
}

// CacheMounts lists the cache mounts the cache holds, by instance name.
func (c *Cache) CacheMounts() []layers.CacheMount {
	out := make([]layers.CacheMount, 0, len(c.mounts))
	for _, m := range c.mounts {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Instance < out[j].Instance })
	return out
}

// Len is the number of records in the cache.
func (c *Cache) Len() int { return len(c.records) }

// Lookup returns the record of a step's cache key and its layer (nil for
// a step that added none). The layer answers Digest, DiffID, Size and
// MediaType without a request; its bytes are downloaded when first read,
// and checked against its digest. It is a *remote.MountableLayer naming
// the cache's repository, so pushing it to the same registry mounts it
// instead of uploading it (see PushImage).
func (c *Cache) Lookup(key v1.Hash) (*layers.CacheRecord, v1.Layer, bool) {
	rec, ok := c.records[key]
	if !ok {
		return nil, nil, false
	}
	var l v1.Layer
	if rec.Layer != nil {
		l = c.layers[rec.Layer.Digest]
	}
	return rec, l, true
}

// cacheLayer is a layer of a registry cache, fetched when read.
type cacheLayer struct {
	// ctx bounds the fetches; v1.Layer's methods take none, so it is the
	// context ImportCache was given (as remote.Layer keeps its own).
	ctx   context.Context
	desc  layers.Descriptor
	cache *Cache
	opts  CacheOptions

	mu sync.Mutex // serializes the download into the store
}

var _ v1.Layer = (*cacheLayer)(nil)

func (l *cacheLayer) Digest() (v1.Hash, error)            { return l.desc.Digest, nil }
func (l *cacheLayer) DiffID() (v1.Hash, error)            { return l.desc.DiffID, nil }
func (l *cacheLayer) Size() (int64, error)                { return l.desc.Size, nil }
func (l *cacheLayer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }

// Compressed downloads the blob, into the store when there is one (and
// reads it from there when it is already stored).
func (l *cacheLayer) Compressed() (io.ReadCloser, error) {
	st := l.opts.Store
	if st == nil {
		return l.fetch()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !st.Blobs().Has(l.desc.Digest) {
		err := retryBroken(l.ctx, func() error {
			rc, err := l.fetch()
			if err != nil {
				return err
			}
			defer rc.Close()
			_, _, err = st.Blobs().Put(l.ctx, rc, &l.desc.Digest)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("cache layer %s from %s: %w", l.desc.Digest, l.cache.where, err)
		}
		l.opts.progress("cache layer %s: %d bytes", l.desc.Digest, l.desc.Size)
	}
	return st.Blobs().Open(l.desc.Digest)
}

// fetch streams the blob from the cache, checking its digest.
func (l *cacheLayer) fetch() (io.ReadCloser, error) {
	return l.cache.open(l.ctx, l.desc.Digest)
}

func (l *cacheLayer) Uncompressed() (io.ReadCloser, error) {
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	r, err := layers.Decompress(rc)
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("cache layer %s: %w", l.desc.Digest, err)
	}
	return &closeBoth{ReadCloser: r, under: rc}, nil
}

// closeBoth closes a decompressor and the blob it reads.
type closeBoth struct {
	io.ReadCloser
	under io.Closer
}

func (c *closeBoth) Close() error {
	err := c.ReadCloser.Close()
	if uerr := c.under.Close(); err == nil {
		err = uerr
	}
	return err
}

// CacheExport writes a build's cache to a registry or a local directory
// (--cache-to).
type CacheExport struct {
	spec CacheSpec
	ref  name.Reference
	opts CacheOptions
}

// NewCacheExport returns the exporter of spec.
func NewCacheExport(spec CacheSpec, opts CacheOptions) (*CacheExport, error) {
	if spec.Mode == "" {
		spec.Mode = CacheModeMin
	}
	switch spec.Type {
	case CacheTypeLocal:
		if spec.Dest == "" {
			return nil, errors.New("a local cache export needs dest=DIR")
		}
		if spec.Tag == "" {
			spec.Tag = "latest"
		}
		return &CacheExport{spec: spec, opts: opts}, nil
	case "", CacheTypeRegistry:
	default:
		return nil, fmt.Errorf("cache type %q: want registry or local", spec.Type)
	}
	r, err := ParseReference(spec.Ref, opts.Insecure)
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", spec.Ref, err)
	}
	return &CacheExport{spec: spec, ref: r, opts: opts}, nil
}

// ExportCache replaces the cache at the exporter's reference with
// entries (with mode=min only those marked Final). Layers the target
// repository lacks are mounted from the repository they came from when
// that is on the same registry (a layer taken from a registry cache),
// else uploaded (a layer the build made is read from the store); then
// the config blob; the manifest goes last, so the reference never names
// an incomplete cache. Nothing is merged with what was there.
func (e *CacheExport) ExportCache(ctx context.Context, entries []layers.CacheEntry) error {
	return e.ExportCacheWith(ctx, entries, nil)
}

// ExportsCacheMounts reports whether the export carries cache mounts
// (mounts=true).
func (e *CacheExport) ExportsCacheMounts() bool { return e.spec.Mounts }

// ExportCacheWith is ExportCache with the contents of cache mounts
// (ignored unless mounts=true). Blobs the destination has are not sent
// again: a cache mount whose content did not change has the same digest.
func (e *CacheExport) ExportCacheWith(ctx context.Context, entries []layers.CacheEntry, mounts []layers.CacheMount) error {
	if !e.spec.Mounts {
		mounts = nil
	}
	img, err := encodeCache(entries, mounts, e.spec.Mode == CacheModeMax)
	if err != nil {
		return fmt.Errorf("cache %s: %w", e.spec, err)
	}
	if e.spec.Type == CacheTypeLocal {
		e.opts.progress("exporting cache to %s: %d records, %d cache mounts, %d blobs", e.spec.Dest, len(img.cfg.Records), len(img.cfg.Mounts), len(img.layers))
		if err := writeLocalCache(ctx, e.spec.Dest, e.spec.Tag, img); err != nil {
			return fmt.Errorf("cache %s: %w", e.spec.Dest, err)
		}
		return nil
	}
	full := CanonicalName(e.ref)
	fail := func(err error) error {
		return fmt.Errorf("cache %s (registry %s): %w", full, registryHost(e.ref), err)
	}
	jobs := e.opts.Jobs
	if jobs <= 0 {
		jobs = pushJobs
	}
	ropts := append(e.opts.Conn.remoteOptions(ctx, jobs), retryOptions()...)
	e.opts.progress("exporting cache to %s: %d records, %d layers", full, len(img.cfg.Records), len(img.layers))
	if err := remote.Write(e.ref, &mountImage{Image: img, dest: e.ref}, ropts...); err != nil {
		return fail(err)
	}
	return nil
}

// blobDescriptor describes l's blob (making it, for a lazy layer).
func blobDescriptor(l v1.Layer, diffID v1.Hash, size int64) (layers.Descriptor, error) {
	d := layers.Descriptor{DiffID: diffID, UncompressedSize: size}
	var err error
	if d.Digest, err = l.Digest(); err != nil {
		return d, err
	}
	if d.Size, err = l.Size(); err != nil {
		return d, err
	}
	d.MediaType, err = l.MediaType()
	return d, err
}

// cacheImage is a cache manifest as a v1.Image, for remote.Write.
type cacheImage struct {
	cfg      cacheConfig
	rawCfg   []byte
	manifest *v1.Manifest
	raw      []byte
	layers   []v1.Layer
}

// encodeCache makes the cache manifest of entries (all, or only Final
// ones) and mounts.
func encodeCache(entries []layers.CacheEntry, mounts []layers.CacheMount, all bool) (*cacheImage, error) {
	img := &cacheImage{cfg: cacheConfig{Layers: []cacheLayerInfo{}, Records: []cacheRecord{}}}
	index := map[v1.Hash]int{}
	var descs []v1.Descriptor
	seen := map[v1.Hash]bool{}
	for _, e := range entries {
		if (!all && !e.Final) || e.Record == nil || seen[e.Key] {
			continue
		}
		if (e.Record.Layer == nil) != (e.Layer == nil) {
			continue
		}
		seen[e.Key] = true
		r := cacheRecord{Key: e.Key, Config: e.Record.Config}
		if d := e.Record.Layer; d != nil {
			if d.Lazy() {
				// A layer still only in a snapshot: its blob is made now.
				md, err := blobDescriptor(e.Layer, d.DiffID, d.UncompressedSize)
				if err != nil {
					return nil, fmt.Errorf("layer %s: %w", d.DiffID, err)
				}
				d = &md
			}
			i, ok := index[d.Digest]
			if !ok {
				i = len(descs)
				index[d.Digest] = i
				descs = append(descs, v1.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size})
				img.cfg.Layers = append(img.cfg.Layers, cacheLayerInfo{Digest: d.Digest, DiffID: d.DiffID, UncompressedSize: d.UncompressedSize})
				img.layers = append(img.layers, e.Layer)
			}
			r.Layer = &i
		}
		img.cfg.Records = append(img.cfg.Records, r)
	}
	for _, m := range mounts {
		if m.Layer == nil {
			continue
		}
		d := m.Desc
		i, ok := index[d.Digest]
		if !ok {
			i = len(descs)
			index[d.Digest] = i
			descs = append(descs, v1.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size})
			img.cfg.Layers = append(img.cfg.Layers, cacheLayerInfo{Digest: d.Digest, DiffID: d.DiffID, UncompressedSize: d.UncompressedSize})
			img.layers = append(img.layers, m.Layer)
		}
		img.cfg.Mounts = append(img.cfg.Mounts, cacheMountInfo{ID: m.ID, Instance: m.Instance, Overlay: m.Overlay, Layer: i})
	}
	var err error
	if img.rawCfg, err = json.Marshal(img.cfg); err != nil {
		return nil, err
	}
	cd, _, err := v1.SHA256(bytes.NewReader(img.rawCfg))
	if err != nil {
		return nil, err
	}
	if descs == nil {
		descs = []v1.Descriptor{}
	}
	img.manifest = &v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  CacheArtifactType,
		Config:        v1.Descriptor{MediaType: CacheConfigType, Digest: cd, Size: int64(len(img.rawCfg))},
		Layers:        descs,
	}
	if img.raw, err = json.Marshal(img.manifest); err != nil {
		return nil, err
	}
	return img, nil
}

func (c *cacheImage) Layers() ([]v1.Layer, error)         { return append([]v1.Layer(nil), c.layers...), nil }
func (c *cacheImage) MediaType() (types.MediaType, error) { return c.manifest.MediaType, nil }
func (c *cacheImage) Size() (int64, error)                { return int64(len(c.raw)), nil }
func (c *cacheImage) ConfigName() (v1.Hash, error)        { return c.manifest.Config.Digest, nil }
func (c *cacheImage) ConfigFile() (*v1.ConfigFile, error) {
	return nil, errors.New("a build cache has no image config")
}
func (c *cacheImage) RawConfigFile() ([]byte, error) { return c.rawCfg, nil }
func (c *cacheImage) Digest() (v1.Hash, error) {
	h, _, err := v1.SHA256(bytes.NewReader(c.raw))
	return h, err
}
func (c *cacheImage) Manifest() (*v1.Manifest, error) { return c.manifest.DeepCopy(), nil }
func (c *cacheImage) RawManifest() ([]byte, error)    { return c.raw, nil }
func (c *cacheImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	for i, d := range c.manifest.Layers {
		if d.Digest == h {
			return c.layers[i], nil
		}
	}
	return nil, fmt.Errorf("cache has no layer %s", h)
}
func (c *cacheImage) LayerByDiffID(h v1.Hash) (v1.Layer, error) {
	for i, d := range c.cfg.Layers {
		if d.DiffID == h {
			return c.layers[i], nil
		}
	}
	return nil, fmt.Errorf("cache has no layer with diff ID %s", h)
}

// ConfigLayer is the config blob, with the cache's config media type.
func (c *cacheImage) ConfigLayer() (v1.Layer, error) {
	return &rawBlob{b: c.rawCfg, d: c.manifest.Config.Digest, mt: CacheConfigType}, nil
}

var _ v1.Image = (*cacheImage)(nil)

// rawBlob is a small in-memory blob as a layer.
type rawBlob struct {
	b  []byte
	d  v1.Hash
	mt types.MediaType
}

func (r *rawBlob) Digest() (v1.Hash, error)            { return r.d, nil }
func (r *rawBlob) DiffID() (v1.Hash, error)            { return r.d, nil }
func (r *rawBlob) Size() (int64, error)                { return int64(len(r.b)), nil }
func (r *rawBlob) MediaType() (types.MediaType, error) { return r.mt, nil }
func (r *rawBlob) Compressed() (io.ReadCloser, error)  { return io.NopCloser(bytes.NewReader(r.b)), nil }
func (r *rawBlob) Uncompressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(r.b)), nil
}

// retryOptions retry 5xx and 429 answers with backoff, as Push does.
func retryOptions() []remote.Option {
	return []remote.Option{
		remote.WithRetryBackoff(remote.Backoff{Duration: 250 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 5}),
		remote.WithRetryStatusCodes(http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable,
			http.StatusGatewayTimeout, http.StatusTooManyRequests),
	}
}

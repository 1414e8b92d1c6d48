package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/layers"
)

// ListPushOptions configure PushList.
type ListPushOptions struct {
	PushOptions
	// All also pushes the list's images (buildah's default); without it
	// only the index is pushed, and every image must already be in the
	// destination repository.
	All bool
}

// PushList uploads the list named list to the registry reference dest
// (its own name when dest is "") and returns the pushed index digest.
// With opts.All its images go first: a stored image's blobs as Push sends
// them; an image that lives in a registry (see AddToList) is copied
// without downloading its layers when it is on dest's registry: its
// manifest goes by digest and its layers are mounted from its source
// repository, or skipped when dest's repository has them. Images dest
// already has (by digest) are skipped. Then the index goes, by tag (or by
// digest when dest has one). opts.Format converts the list (and its
// images) to OCI or docker media types; the images must then be pushed
// (All).
func PushList(ctx context.Context, store *layers.Store, list, dest string, opts ListPushOptions) (v1.Hash, error) {
	desc, err := lookupList(ctx, store, list)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("manifest push %s: %w", list, err)
	}
	if dest == "" {
		n, err := layers.NormalizeName(list)
		if err != nil || LocalOnly(n) {
			return v1.Hash{}, fmt.Errorf("manifest push %s: the list's name has no registry; give a destination such as docker://registry.example.com/app:1", list)
		}
		dest = n
	}
	dest = strings.TrimPrefix(dest, DockerTransport)
	unlock, err := store.Lock(ctx, false)
	if err != nil {
		return v1.Hash{}, err
	}
	defer unlock()
	idx, err := openList(ctx, store, desc.Digest, opts.Conn, dest)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("manifest push %s: %w", list, err)
	}
	if opts.All {
		return push(ctx, nil, idx, "", dest, opts.PushOptions)
	}
	return pushIndexOnly(ctx, idx, dest, opts.PushOptions)
}

// pushIndexOnly uploads idx's index alone, after checking that dest's
// repository has each of its images.
func pushIndexOnly(ctx context.Context, idx *listIndex, dest string, opts PushOptions) (v1.Hash, error) {
	r, err := ParseReference(dest, opts.Insecure)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("manifest push: %w", err)
	}
	full := CanonicalName(r)
	fail := func(err error) (v1.Hash, error) {
		return v1.Hash{}, fmt.Errorf("manifest push %s (registry %s): %w", full, registryHost(r), err)
	}
	if opts.Format != "" {
		want := types.OCIImageIndex
		if opts.Format == "docker" || opts.Format == "v2s2" {
			want = types.DockerManifestList
		}
		if idx.mediaType != want {
			return fail(optionError("ListPushOptions.All", fmt.Errorf("format %s changes the images' digests: push them too (All)", opts.Format)))
		}
	}
	ropts := append(opts.Conn.remoteOptions(ctx, pushJobs), retryOptions()...)
	for _, d := range idx.manifest.Manifests {
		if _, err := remote.Head(r.Context().Digest(d.Digest.String()), ropts...); err != nil {
			var te *transport.Error
			if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
				return fail(optionError("ListPushOptions.All", fmt.Errorf("the entry %s (%s) is not in %s: push it too (All)", d.Digest, platformText(d.Platform), repositoryName(r))))
			}
			return fail(err)
		}
	}
	if opts.Progress != nil {
		opts.Progress(fmt.Sprintf("pushing index %s to %s", idx.digest, full))
	}
	if err := remote.Put(r, idx, ropts...); err != nil {
		return fail(err)
	}
	if opts.Progress != nil {
		opts.Progress(fmt.Sprintf("pushed %s: %s", full, idx.digest))
	}
	return idx.digest, nil
}

// listIndex is a stored index, opened for a push: an entry whose layers
// are stored is read from the store; one whose layers are not (an image
// that lives in a registry) reads its manifest and config from the store
// and its layers from its source repository, and offers them for
// mounting.
type listIndex struct {
	// ctx bounds the layers' fetches: v1.Layer's methods take none.
	ctx       context.Context
	store     *layers.Store
	conn      Conn
	destReg   string // registry of the push destination
	digest    v1.Hash
	mediaType types.MediaType
	raw       []byte
	manifest  *v1.IndexManifest
}

var _ v1.ImageIndex = (*listIndex)(nil)

// openList opens the stored index h for a push to dest.
func openList(ctx context.Context, store *layers.Store, h v1.Hash, conn Conn, dest string) (*listIndex, error) {
	raw, err := store.Blobs().ReadAll(h)
	if err != nil {
		return nil, fmt.Errorf("index %s: %w", h, err)
	}
	if got, _, err := v1.SHA256(bytes.NewReader(raw)); err != nil || got != h {
		return nil, fmt.Errorf("index %s: the stored blob is corrupt", h)
	}
	im, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("index %s: %w", h, err)
	}
	mt := im.MediaType
	if mt == "" {
		mt = types.OCIImageIndex
	}
	x := &listIndex{ctx: ctx, store: store, conn: conn, digest: h, mediaType: mt, raw: raw, manifest: im}
	if r, err := ParseReference(dest, conn.Insecure); err == nil {
		x.destReg = r.Context().RegistryStr()
	}
	return x, nil
}

func (x *listIndex) MediaType() (types.MediaType, error) { return x.mediaType, nil }
func (x *listIndex) Digest() (v1.Hash, error)            { return x.digest, nil }
func (x *listIndex) Size() (int64, error)                { return int64(len(x.raw)), nil }
func (x *listIndex) RawManifest() ([]byte, error)        { return slices.Clone(x.raw), nil }
func (x *listIndex) IndexManifest() (*v1.IndexManifest, error) {
	return x.manifest.DeepCopy(), nil
}

func (x *listIndex) ImageIndex(h v1.Hash) (v1.ImageIndex, error) {
	return openList(x.ctx, x.store, h, x.conn, "")
}

// Image opens the entry h: from the store, with the layers the store
// lacks fetched from the entry's source (and all of them offered for
// mounting from there).
func (x *listIndex) Image(h v1.Hash) (v1.Image, error) {
	img, err := x.store.Image(x.ctx, h)
	if err != nil {
		return nil, fmt.Errorf("entry %s: %w", h, err)
	}
	sources, err := x.store.Sources(h)
	if err != nil {
		return nil, err
	}
	var src name.Reference
	for _, s := range sources {
		r, err := ParseReference(s+"@"+h.String(), x.conn.Insecure)
		if err != nil {
			continue
		}
		if src == nil || r.Context().RegistryStr() == x.destReg {
			src = r
		}
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, l := range m.Layers {
		if l.MediaType.IsDistributable() && !x.store.Blobs().Has(l.Digest) {
			missing = append(missing, l.Digest.String())
		}
	}
	if src == nil {
		if len(missing) > 0 {
			return nil, fmt.Errorf("entry %s: %d layers are not stored and no repository is known to have them (%s): add the image again from its registry (docker://REF)", h, len(missing), strings.Join(missing, ", "))
		}
		return img, nil
	}
	return &sourcedImage{Image: img, src: src, x: x}, nil
}

// sourcedImage is a stored manifest and config whose layers may be in
// its source repository only.
type sourcedImage struct {
	v1.Image
	src name.Reference
	x   *listIndex
}

func (s *sourcedImage) Layers() ([]v1.Layer, error) {
	ls, err := s.Image.Layers()
	if err != nil {
		return nil, err
	}
	out := make([]v1.Layer, len(ls))
	for i, l := range ls {
		if out[i], err = s.sourced(l); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (s *sourcedImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	if cn, err := s.Image.ConfigName(); err == nil && cn == h {
		return partial.ConfigLayer(s.Image)
	}
	l, err := s.Image.LayerByDigest(h)
	if err != nil {
		return nil, err
	}
	return s.sourced(l)
}

// ConfigLayer offers the config blob for mounting from the source too.
func (s *sourcedImage) ConfigLayer() (v1.Layer, error) {
	l, err := partial.ConfigLayer(s.Image)
	if err != nil {
		return nil, err
	}
	return &remote.MountableLayer{Layer: l, Reference: s.src}, nil
}

// sourced offers l for mounting from the source; a layer the store lacks
// is fetched from there (into the store) when its bytes are read.
func (s *sourcedImage) sourced(l v1.Layer) (v1.Layer, error) {
	d, err := l.Digest()
	if err != nil {
		return nil, err
	}
	if mt, err := l.MediaType(); err == nil && !mt.IsDistributable() {
		return l, nil
	}
	if !s.x.store.Blobs().Has(d) {
		size, err := l.Size()
		if err != nil {
			return nil, err
		}
		mt, err := l.MediaType()
		if err != nil {
			return nil, err
		}
		diffID, err := l.DiffID()
		if err != nil {
			return nil, err
		}
		src, conn := s.src, s.x.conn
		c := &Cache{ref: src, open: func(ctx context.Context, d v1.Hash) (io.ReadCloser, error) {
			rl, err := remote.Layer(src.Context().Digest(d.String()), conn.remoteOptions(ctx, pullJobs)...)
			if err != nil {
				return nil, err
			}
			return rl.Compressed()
		}}
		l = &cacheLayer{
			ctx:   s.x.ctx,
			desc:  layers.Descriptor{MediaType: mt, Digest: d, Size: size, DiffID: diffID},
			cache: c,
			opts:  CacheOptions{Conn: s.x.conn, Store: s.x.store},
		}
	}
	return &remote.MountableLayer{Layer: l, Reference: s.src}, nil
}

package layers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// blobLayer is a v1.Layer whose bytes live in a BlobStore. Its metadata
// comes from the Descriptor, so asking for digests or sizes reads nothing.
type blobLayer struct {
	store *BlobStore
	desc  Descriptor
}

var _ v1.Layer = (*blobLayer)(nil)

// Layer returns the stored blob d.Digest as a v1.Layer. Digest, DiffID, Size
// and MediaType are answered from d without touching the disk; Compressed
// opens the blob and Uncompressed decompresses it on the fly. The blob is
// not checked to exist until it is opened.
func (s *BlobStore) Layer(d Descriptor) v1.Layer {
	return &blobLayer{store: s, desc: d}
}

func (l *blobLayer) Digest() (v1.Hash, error) { return l.desc.Digest, nil }

func (l *blobLayer) DiffID() (v1.Hash, error) { return l.desc.DiffID, nil }

func (l *blobLayer) Size() (int64, error) { return l.desc.Size, nil }

func (l *blobLayer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }

func (l *blobLayer) Compressed() (io.ReadCloser, error) {
	return l.store.Open(l.desc.Digest)
}

func (l *blobLayer) Uncompressed() (io.ReadCloser, error) {
	f, err := l.store.Open(l.desc.Digest)
	if err != nil {
		return nil, err
	}
	r, err := Decompress(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("layer %s: %w", l.desc.Digest, err)
	}
	return &stackedCloser{ReadCloser: r, under: f}, nil
}

// stackedCloser closes a reader and then the reader it reads from.
type stackedCloser struct {
	io.ReadCloser
	under io.Closer
}

func (c *stackedCloser) Close() error {
	err := c.ReadCloser.Close()
	// The decompressor may already have closed the file.
	if uerr := c.under.Close(); err == nil && !errors.Is(uerr, os.ErrClosed) {
		err = uerr
	}
	return err
}

// Image returns the stored image whose manifest digest is h. The manifest
// and config are read now; layers are read from the blob store only when
// their contents are asked for.
func (s *Store) Image(ctx context.Context, h v1.Hash) (v1.Image, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.image(h)
}

// ImageIndex returns the stored index whose digest is h; its children are
// opened from the store on demand.
func (s *Store) ImageIndex(ctx context.Context, h v1.Hash) (v1.ImageIndex, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.imageIndex(h)
}

// readManifestBlob reads the blob h and checks it hashes to h.
func (s *Store) readManifestBlob(h v1.Hash) ([]byte, error) {
	b, err := s.blobs.ReadAll(h)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", h, ErrNotFound)
	} else if err != nil {
		return nil, err
	}
	got, _, err := v1.SHA256(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	if got != h {
		return nil, fmt.Errorf("blob %s is corrupt: its content hashes to %s", h, got)
	}
	return b, nil
}

func (s *Store) image(h v1.Hash) (v1.Image, error) {
	raw, err := s.readManifestBlob(h)
	if err != nil {
		return nil, fmt.Errorf("image %w", err)
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", h, err)
	}
	mt := m.MediaType
	if mt == "" {
		mt = types.OCIManifestSchema1
	}
	if !mt.IsImage() {
		return nil, fmt.Errorf("image %s: media type %q is not an image manifest", h, mt)
	}
	cfg, err := s.readManifestBlob(m.Config.Digest)
	if err != nil {
		return nil, fmt.Errorf("image %s: config %w", h, err)
	}
	return &storeImage{store: s, digest: h, mediaType: mt, raw: raw, manifest: m, rawConfig: cfg}, nil
}

func (s *Store) imageIndex(h v1.Hash) (v1.ImageIndex, error) {
	raw, err := s.readManifestBlob(h)
	if err != nil {
		return nil, fmt.Errorf("index %w", err)
	}
	im, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("index %s: %w", h, err)
	}
	mt := im.MediaType
	if mt == "" {
		mt = types.OCIImageIndex
	}
	if !mt.IsIndex() {
		return nil, fmt.Errorf("index %s: media type %q is not an index", h, mt)
	}
	return &storeIndex{store: s, digest: h, mediaType: mt, raw: raw}, nil
}

// storeImage is a v1.Image read from a Store.
type storeImage struct {
	store     *Store
	digest    v1.Hash
	mediaType types.MediaType
	raw       []byte
	manifest  *v1.Manifest
	rawConfig []byte
}

var _ v1.Image = (*storeImage)(nil)

func (i *storeImage) MediaType() (types.MediaType, error) { return i.mediaType, nil }
func (i *storeImage) Size() (int64, error)                { return int64(len(i.raw)), nil }
func (i *storeImage) Digest() (v1.Hash, error)            { return i.digest, nil }
func (i *storeImage) RawManifest() ([]byte, error)        { return slices.Clone(i.raw), nil }
func (i *storeImage) Manifest() (*v1.Manifest, error)     { return i.manifest.DeepCopy(), nil }
func (i *storeImage) ConfigName() (v1.Hash, error)        { return i.manifest.Config.Digest, nil }
func (i *storeImage) RawConfigFile() ([]byte, error)      { return slices.Clone(i.rawConfig), nil }

func (i *storeImage) ConfigFile() (*v1.ConfigFile, error) {
	cf, err := v1.ParseConfigFile(bytes.NewReader(i.rawConfig))
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", i.digest, err)
	}
	return cf, nil
}

func (i *storeImage) Layers() ([]v1.Layer, error) {
	cf, err := i.ConfigFile()
	if err != nil {
		return nil, err
	}
	diffIDs := cf.RootFS.DiffIDs
	if len(diffIDs) != len(i.manifest.Layers) {
		return nil, fmt.Errorf("image %s: %d layers but %d diff IDs", i.digest, len(i.manifest.Layers), len(diffIDs))
	}
	out := make([]v1.Layer, len(diffIDs))
	for n, l := range i.manifest.Layers {
		out[n] = i.store.blobs.Layer(Descriptor{MediaType: l.MediaType, Digest: l.Digest, Size: l.Size, DiffID: diffIDs[n]})
	}
	return out, nil
}

func (i *storeImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	if h == i.manifest.Config.Digest {
		return partial.ConfigLayer(i)
	}
	return i.findLayer(func(l v1.Layer) (v1.Hash, error) { return l.Digest() }, h)
}

func (i *storeImage) LayerByDiffID(h v1.Hash) (v1.Layer, error) {
	return i.findLayer(func(l v1.Layer) (v1.Hash, error) { return l.DiffID() }, h)
}

func (i *storeImage) findLayer(key func(v1.Layer) (v1.Hash, error), h v1.Hash) (v1.Layer, error) {
	ls, err := i.Layers()
	if err != nil {
		return nil, err
	}
	for _, l := range ls {
		if k, err := key(l); err == nil && k == h {
			return l, nil
		}
	}
	return nil, fmt.Errorf("image %s has no layer %s", i.digest, h)
}

// storeIndex is a v1.ImageIndex read from a Store.
type storeIndex struct {
	store     *Store
	digest    v1.Hash
	mediaType types.MediaType
	raw       []byte
}

var _ v1.ImageIndex = (*storeIndex)(nil)

func (x *storeIndex) MediaType() (types.MediaType, error) { return x.mediaType, nil }
func (x *storeIndex) Digest() (v1.Hash, error)            { return x.digest, nil }
func (x *storeIndex) Size() (int64, error)                { return int64(len(x.raw)), nil }
func (x *storeIndex) RawManifest() ([]byte, error)        { return slices.Clone(x.raw), nil }
func (x *storeIndex) Image(h v1.Hash) (v1.Image, error)   { return x.store.image(h) }

func (x *storeIndex) IndexManifest() (*v1.IndexManifest, error) {
	return v1.ParseIndexManifest(bytes.NewReader(x.raw))
}

func (x *storeIndex) ImageIndex(h v1.Hash) (v1.ImageIndex, error) { return x.store.imageIndex(h) }

package layers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// A layer a build step makes is committed as a snapshot: the directory it
// was made in becomes the snapshot of that layer (AdoptSnapshot), and only
// its diffID (the digest of its tar) is computed then. The compressed blob
// is made when the layer leaves the machine or is stored under a name:
// Materialize, or any of the layer's Digest, Size, MediaType or
// Compressed. It is made once per (diffID, compression, level) and
// remembered (cache/blobs/), so a second push or output compresses
// nothing. Layers of stages that are never exported are never compressed.

// Lazy reports whether d describes a layer without its blob yet: only
// DiffID and UncompressedSize are set.
func (d Descriptor) Lazy() bool { return d.Digest == (v1.Hash{}) }

// CommitSnapshot commits the layer made in dir (overlay upper-dir format)
// on top of the layers below (their diffIDs, bottom first). Where the
// store can adopt dir as the layer's snapshot, only the layer's tar is
// hashed now: the result is a lazy layer whose blob is made on demand.
// Elsewhere (vfs, rootless overlay, a layer below without a snapshot) the
// blob is made at once, as CommitDir does. dir is gone or left for the
// caller to remove afterwards.
func (s *Store) CommitSnapshot(ctx context.Context, dir string, below []v1.Hash, opts CommitOptions) (v1.Layer, Descriptor, error) {
	if !s.canAdopt(below) {
		d, err := s.blobs.CommitDir(ctx, dir, opts)
		if err != nil {
			return nil, Descriptor{}, err
		}
		return s.blobs.Layer(d), d, nil
	}
	diffID, size, err := DiffDir(ctx, dir, opts.TarOptions)
	if err != nil {
		return nil, Descriptor{}, err
	}
	diffIDs := append(append([]v1.Hash(nil), below...), diffID)
	res, err := s.adopt(ctx, dir, diffIDs, size, opts.SourceDateEpoch)
	if err != nil || res == adoptRefused {
		// The content is only in dir (when adopting failed, before it
		// moved anything): make the blob now.
		d, cerr := s.blobs.CommitDir(ctx, dir, opts)
		if cerr != nil {
			return nil, Descriptor{}, errors.Join(err, cerr)
		}
		if d.DiffID != diffID {
			if err != nil {
				return nil, Descriptor{}, err
			}
			return nil, Descriptor{}, fmt.Errorf("commit %s: the layer changed while it was committed", dir)
		}
		return s.blobs.Layer(d), d, nil
	}
	d := Descriptor{DiffID: diffID, UncompressedSize: size, TarEpoch: opts.SourceDateEpoch}
	return s.LazyLayer(diffIDs, d, opts), d, nil
}

// CommitBlob commits the layer made in dir on top of the layers below as
// a blob at once (one pass: tar, diffID, compression), for a layer that
// will leave the machine anyway, and then makes dir the layer's snapshot
// where the store can take it (else the caller removes it).
func (s *Store) CommitBlob(ctx context.Context, dir string, below []v1.Hash, opts CommitOptions) (v1.Layer, Descriptor, error) {
	return s.CommitBlobTo(ctx, dir, below, opts, nil)
}

// CommitBlobTo is CommitBlob whose compressed bytes also stream to sink
// (see BlobStore.CommitDirTo), when not nil.
func (s *Store) CommitBlobTo(ctx context.Context, dir string, below []v1.Hash, opts CommitOptions, sink BlobSink) (v1.Layer, Descriptor, error) {
	d, err := s.blobs.CommitDirTo(ctx, dir, opts, sink)
	if err != nil {
		return nil, Descriptor{}, err
	}
	diffIDs := append(append([]v1.Hash(nil), below...), d.DiffID)
	// Only a shortcut is lost when this fails: the blob is there, the
	// snapshot is extracted from it when needed.
	_, _ = s.adopt(ctx, dir, diffIDs, d.UncompressedSize, opts.SourceDateEpoch)
	return s.blobs.Layer(d), d, nil
}

// DiffDir is the diffID and size of the layer tar WriteTar makes of dir,
// computed without writing it anywhere.
func DiffDir(ctx context.Context, dir string, opts TarOptions) (v1.Hash, int64, error) {
	h := &hashCounter{h: sha256.New()}
	if err := WriteTar(ctx, h, dir, opts); err != nil {
		return v1.Hash{}, 0, fmt.Errorf("diff %s: %w", dir, err)
	}
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.h.Sum(nil))}, h.n, nil
}

// LazyLayer is the layer whose content is the snapshot of the chain
// diffIDs (bottom first, this layer last) and whose descriptor is d (a
// lazy one, or one whose blob exists). Its blob is made when first needed,
// compressed as opts says (its tar options come from d).
func (s *Store) LazyLayer(diffIDs []v1.Hash, d Descriptor, opts CommitOptions) v1.Layer {
	if !d.Lazy() {
		return s.blobs.Layer(d)
	}
	opts.TarOptions = TarOptions{SourceDateEpoch: d.TarEpoch}
	return &lazyLayer{s: s, diffIDs: append([]v1.Hash(nil), diffIDs...), desc: d, opts: opts}
}

// Relazy returns l compressed as opts says when it is a lazy layer whose
// blob is not made yet (a working container committed with another
// compression), else l.
func (s *Store) Relazy(l v1.Layer, opts CommitOptions) v1.Layer {
	ll, ok := asLazy(l)
	if !ok {
		return l
	}
	if ll.opts.Compression == opts.Compression && ll.opts.Level == opts.Level {
		return l
	}
	return s.LazyLayer(ll.diffIDs, ll.desc, opts)
}

// LayerDescriptor is l's Descriptor when l is a layer of this package's
// (stored or lazy), without making a blob.
func LayerDescriptor(l v1.Layer) (Descriptor, bool) {
	switch l := unwrap(l).(type) {
	case *lazyLayer:
		return l.Descriptor(), true
	case *blobLayer:
		return l.desc, true
	}
	return Descriptor{}, false
}

// Materialize makes the blobs of every lazy layer of ls, at most jobs at
// a time, stopping at the first error.
func (s *Store) Materialize(ctx context.Context, ls []v1.Layer, jobs int) error {
	if jobs < 1 {
		jobs = 1
	}
	sem := make(chan struct{}, jobs)
	var wg sync.WaitGroup
	errs := make([]error, len(ls))
	for i, l := range ls {
		ll, ok := asLazy(l)
		if !ok {
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return ctx.Err()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_, errs[i] = ll.materialize(ctx)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// lazyLayer is a v1.Layer backed by a snapshot until its blob is needed.
type lazyLayer struct {
	s       *Store
	diffIDs []v1.Hash
	desc    Descriptor
	opts    CommitOptions

	mu   sync.Mutex
	done *Descriptor
}

var _ v1.Layer = (*lazyLayer)(nil)

func (l *lazyLayer) DiffID() (v1.Hash, error) { return l.desc.DiffID, nil }

func (l *lazyLayer) Digest() (v1.Hash, error) {
	d, err := l.materialize(context.Background())
	return d.Digest, err
}

func (l *lazyLayer) Size() (int64, error) {
	d, err := l.materialize(context.Background())
	return d.Size, err
}

func (l *lazyLayer) MediaType() (types.MediaType, error) {
	c := l.opts.Compression
	if c == "" {
		c = Gzip
	}
	return c.MediaType(), nil
}

func (l *lazyLayer) Compressed() (io.ReadCloser, error) {
	d, err := l.materialize(context.Background())
	if err != nil {
		return nil, err
	}
	return l.s.blobs.Open(d.Digest)
}

// Uncompressed is the layer's tar, written from its snapshot (or read from
// its blob, once made).
func (l *lazyLayer) Uncompressed() (io.ReadCloser, error) {
	l.mu.Lock()
	done := l.done
	l.mu.Unlock()
	if done != nil {
		return l.s.blobs.Layer(*done).Uncompressed()
	}
	dir, err := l.s.snapshotSource(l.diffIDs)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(WriteTar(context.Background(), pw, dir, l.opts.TarOptions))
	}()
	return pr, nil
}

// Descriptor is the layer's descriptor: lazy until the blob is made.
func (l *lazyLayer) Descriptor() Descriptor {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done != nil {
		return *l.done
	}
	return l.desc
}

// materialize makes (or finds) the layer's blob.
func (l *lazyLayer) materialize(ctx context.Context) (Descriptor, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done != nil {
		return *l.done, nil
	}
	d, err := l.s.materialize(ctx, l.diffIDs, l.desc, l.opts)
	if err != nil {
		return Descriptor{}, err
	}
	l.done = &d
	return d, nil
}

// materialize returns the blob of the snapshot of chain diffIDs made with
// opts, from the memo when it was made before, else by writing the tar of
// the snapshot through the compressor; the tar must have the diffID the
// layer was committed with.
func (s *Store) materialize(ctx context.Context, diffIDs []v1.Hash, want Descriptor, opts CommitOptions) (Descriptor, error) {
	memo := s.blobMemoPath(want.DiffID, opts)
	if b, err := os.ReadFile(memo); err == nil {
		var d Descriptor
		if json.Unmarshal(b, &d) == nil && d.DiffID == want.DiffID && validHash(d.Digest) && s.blobs.Has(d.Digest) {
			return d, nil
		}
	}
	unlock, err := s.Lock(ctx, false)
	if err != nil {
		return Descriptor{}, err
	}
	defer unlock()
	dir, err := s.snapshotSource(diffIDs)
	if err != nil {
		return Descriptor{}, err
	}
	d, err := s.blobs.CommitDir(ctx, dir, opts)
	if err != nil {
		return Descriptor{}, err
	}
	if d.DiffID != want.DiffID {
		return Descriptor{}, fmt.Errorf("layer %s: its snapshot %s now has diff ID %s: the snapshot was changed; remove it (ibuild prune) and build again", want.DiffID, dir, d.DiffID)
	}
	if b, err := json.Marshal(d); err == nil {
		if err := os.MkdirAll(filepath.Dir(memo), 0o700); err == nil {
			_ = s.writeCacheFile(memo, b) // only an optimization
		}
	}
	return d, nil
}

// blobMemoPath is where the blob made of diffID with opts is remembered.
func (s *Store) blobMemoPath(diffID v1.Hash, opts CommitOptions) string {
	c := opts.Compression
	if c == "" {
		c = Gzip
	}
	return filepath.Join(s.root, "cache", "blobs", fmt.Sprintf("%s-%s-%d.json", diffID.Hex, c, opts.Level))
}

// snapshotSource is the directory holding the layer on top of the chain
// diffIDs alone (overlay upper-dir format), from which its tar is made.
func (s *Store) snapshotSource(diffIDs []v1.Hash) (string, error) {
	if len(diffIDs) == 0 {
		return "", errors.New("snapshot: no layer")
	}
	chains := ChainIDs(diffIDs)
	chain := chains[len(chains)-1]
	if s.snapshotter == SnapshotterNative {
		dir := s.snapshotDir(chain)
		if !isRealDir(dir) {
			return "", fmt.Errorf("layer %s: its snapshot is gone (pruned?) and it has no blob: build again", diffIDs[len(diffIDs)-1])
		}
		return dir, nil
	}
	st, err := s.containerStorage(true)
	if err != nil {
		return "", err
	}
	if _, err := st.Layer(chain.Hex); err != nil {
		return "", fmt.Errorf("layer %s: its snapshot is gone (pruned?) and it has no blob: build again", diffIDs[len(diffIDs)-1])
	}
	return s.csLayerDir(st, chain.Hex)
}

// hasSnapshot reports whether the snapshot of chain exists.
func (s *Store) hasSnapshot(chain v1.Hash) bool {
	if s.snapshotter == SnapshotterNative {
		return isRealDir(s.snapshotDir(chain))
	}
	st, err := s.containerStorage(true)
	if err != nil {
		return false
	}
	_, err = st.Layer(chain.Hex)
	return err == nil
}

// unwrap is the layer under wrappers that rename a layer's media type
// (they have an Unwrap method).
func unwrap(l v1.Layer) v1.Layer {
	for range 8 {
		u, ok := l.(interface{ Unwrap() v1.Layer })
		if !ok {
			break
		}
		l = u.Unwrap()
	}
	return l
}

func asLazy(l v1.Layer) (*lazyLayer, bool) {
	ll, ok := unwrap(l).(*lazyLayer)
	return ll, ok
}

// layerName names layer index (from 0) of an image in messages: by its
// blob digest when it has one, else by its diff ID, without making a blob.
func layerName(l v1.Layer, index int) string {
	if d, ok := LayerDescriptor(l); ok {
		if d.Lazy() {
			return fmt.Sprintf("layer %d (diff ID %s)", index+1, d.DiffID)
		}
		return fmt.Sprintf("layer %d (%s)", index+1, d.Digest)
	}
	digest, _ := l.Digest()
	return fmt.Sprintf("layer %d (%s)", index+1, digest)
}

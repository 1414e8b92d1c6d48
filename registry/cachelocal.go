package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/ibuild/ibuild/layers"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// A local cache (--cache-to type=local,dest=DIR, --cache-from
// type=local,src=DIR) is an OCI image layout directory holding the same
// cache manifest a registry cache is (see the format at the top of
// cache.go), listed in DIR/index.json with the annotation
// org.opencontainers.image.ref.name set to its tag ("latest" unless
// tag= says otherwise). CI systems that persist a folder between runs
// keep DIR. An export writes the blobs DIR lacks (a blob whose digest is
// there is not written again), then the manifest, then index.json
// (atomically: readers see the old cache or the new one), and last
// removes the blobs no manifest of index.json names any longer, so the
// directory does not grow with every export. Exports to one DIR are
// serialized with a lock on DIR.

// ImportLocalCache reads the cache tagged tag in the OCI layout dir: its
// manifest and config, no layer bytes (they are read from dir when a
// build needs them, and checked against their digests). A dir or tag that
// does not exist yet gives an empty cache with a Warning.
func ImportLocalCache(ctx context.Context, dir, tag string, opts CacheOptions) (*Cache, error) {
	if tag == "" {
		tag = "latest"
	}
	where := "type=local,src=" + dir
	c := newCache(dir, where)
	fail := func(err error) (*Cache, error) {
		return nil, fmt.Errorf("cache %s: %w", where, err)
	}
	c.open = func(_ context.Context, d v1.Hash) (io.ReadCloser, error) {
		return openLayoutBlob(dir, d)
	}
	idx, err := readLayoutIndex(dir)
	if errors.Is(err, fs.ErrNotExist) {
		c.Warning = fmt.Sprintf("cache %s does not exist yet: building without it", where)
		return c, nil
	}
	if err != nil {
		return fail(err)
	}
	var desc *v1.Descriptor
	for i := range idx.Manifests {
		if idx.Manifests[i].Annotations[layers.RefNameAnnotation] == tag {
			desc = &idx.Manifests[i]
		}
	}
	if desc == nil {
		c.Warning = fmt.Sprintf("cache %s has no cache tagged %s yet: building without it", where, tag)
		return c, nil
	}
	raw, err := readLayoutBlob(dir, desc.Digest, 4<<20)
	if err != nil {
		return fail(fmt.Errorf("manifest: %w", err))
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return fail(fmt.Errorf("manifest: %w", err))
	}
	if m.Config.MediaType != CacheConfigType {
		return fail(fmt.Errorf("not an ibuild cache: its config is a %s, not a %s", m.Config.MediaType, CacheConfigType))
	}
	cfg, err := readLayoutBlob(dir, m.Config.Digest, 64<<20)
	if err != nil {
		return fail(fmt.Errorf("config %s: %w", m.Config.Digest, err))
	}
	if err := c.decode(ctx, m, cfg, opts); err != nil {
		return fail(err)
	}
	opts.progress("imported cache %s: %d records, %d cache mounts", where, len(c.records), len(c.mounts))
	return c, nil
}

// blobPath is where the layout at dir keeps the blob d.
func blobPath(dir string, d v1.Hash) (string, error) {
	if d.Algorithm != "sha256" || len(d.Hex) != 64 || strings.Trim(d.Hex, "0123456789abcdef") != "" {
		return "", fmt.Errorf("bad blob digest %q", d)
	}
	return filepath.Join(dir, "blobs", d.Algorithm, d.Hex), nil
}

// openLayoutBlob opens the blob d; the reader fails at its end when the
// content does not match d.
func openLayoutBlob(dir string, d v1.Hash) (io.ReadCloser, error) {
	p, err := blobPath(dir, d)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	return &verifyingReader{f: f, want: d, h: sha256New()}, nil
}

// readLayoutBlob reads a small blob (at most max bytes), checked.
func readLayoutBlob(dir string, d v1.Hash, max int64) ([]byte, error) {
	rc, err := openLayoutBlob(dir, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("blob %s is over %d bytes", d, max)
	}
	return b, nil
}

// readLayoutIndex reads dir/index.json.
func readLayoutIndex(dir string) (*v1.IndexManifest, error) {
	f, err := os.Open(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	idx, err := v1.ParseIndexManifest(io.LimitReader(f, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("index.json: %w", err)
	}
	return idx, nil
}

// writeLocalCache writes img into the layout dir under tag (see the
// comment at the top of this file).
func writeLocalCache(ctx context.Context, dir, tag string, img *cacheImage) error {
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return err
	}
	unlock, err := layers.LockFile(ctx, dir, true)
	if err != nil {
		return err
	}
	defer unlock()
	layout := filepath.Join(dir, "oci-layout")
	if _, err := os.Stat(layout); errors.Is(err, fs.ErrNotExist) {
		if err := writeFileAtomic(dir, "oci-layout", func(w io.Writer) error {
			_, err := io.WriteString(w, `{"imageLayoutVersion":"1.0.0"}`)
			return err
		}); err != nil {
			return err
		}
	}
	for _, l := range img.layers {
		if err := writeLayoutLayer(ctx, dir, l); err != nil {
			return err
		}
	}
	if err := writeLayoutBytes(dir, img.manifest.Config.Digest, img.rawCfg); err != nil {
		return err
	}
	md, err := img.Digest()
	if err != nil {
		return err
	}
	if err := writeLayoutBytes(dir, md, img.raw); err != nil {
		return err
	}
	idx, err := readLayoutIndex(dir)
	if errors.Is(err, fs.ErrNotExist) {
		idx = &v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	} else if err != nil {
		return err
	}
	kept := idx.Manifests[:0]
	for _, d := range idx.Manifests {
		if d.Annotations[layers.RefNameAnnotation] != tag {
			kept = append(kept, d)
		}
	}
	idx.Manifests = append(kept, v1.Descriptor{
		MediaType:    img.manifest.MediaType,
		Digest:       md,
		Size:         int64(len(img.raw)),
		ArtifactType: CacheArtifactType,
		Annotations:  map[string]string{layers.RefNameAnnotation: tag},
	})
	raw, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(dir, "index.json", func(w io.Writer) error {
		_, err := w.Write(raw)
		return err
	}); err != nil {
		return err
	}
	return collectLayout(dir, idx)
}

// writeLayoutLayer streams l's compressed bytes into the layout, unless
// it has them; the digest is checked before the blob takes its name.
func writeLayoutLayer(ctx context.Context, dir string, l v1.Layer) error {
	d, err := l.Digest()
	if err != nil {
		return err
	}
	p, err := blobPath(dir, d)
	if err != nil {
		return err
	}
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	rc, err := l.Compressed()
	if err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	defer rc.Close()
	return writeVerified(ctx, dir, d, rc)
}

// writeLayoutBytes writes a small blob unless the layout has it.
func writeLayoutBytes(dir string, d v1.Hash, b []byte) error {
	p, err := blobPath(dir, d)
	if err != nil {
		return err
	}
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	return writeVerified(context.Background(), dir, d, bytes.NewReader(b))
}

// writeVerified writes r to the blob d of the layout dir, through a
// synced temporary file renamed into place once its digest is d.
func writeVerified(ctx context.Context, dir string, d v1.Hash, r io.Reader) error {
	return writeFileAtomic(dir, filepath.Join("blobs", d.Algorithm, d.Hex), func(w io.Writer) error {
		h := sha256New()
		buf := make([]byte, 256<<10)
		if _, err := io.CopyBuffer(io.MultiWriter(w, h), layers.ContextReader(ctx, r), buf); err != nil {
			return fmt.Errorf("blob %s: %w", d, err)
		}
		if got := hexSum(h); got != d.Hex {
			return fmt.Errorf("blob %s: the content's digest is sha256:%s", d, got)
		}
		return nil
	})
}

// collectLayout removes the blobs (and leftover temporary files) of
// the layout that no manifest of idx names. A manifest it cannot read
// (another tool's index, say) stops it: nothing is removed then.
func collectLayout(dir string, idx *v1.IndexManifest) error {
	keep := map[string]bool{}
	for _, d := range idx.Manifests {
		if d.MediaType != types.OCIManifestSchema1 && d.MediaType != types.DockerManifestSchema2 {
			return nil
		}
		raw, err := readLayoutBlob(dir, d.Digest, 4<<20)
		if err != nil {
			return nil
		}
		m, err := v1.ParseManifest(bytes.NewReader(raw))
		if err != nil {
			return nil
		}
		keep[d.Digest.Hex] = true
		keep[m.Config.Digest.Hex] = true
		for _, l := range m.Layers {
			keep[l.Digest.Hex] = true
		}
	}
	blobs := filepath.Join(dir, "blobs", "sha256")
	ents, err := os.ReadDir(blobs)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !keep[e.Name()] && !e.IsDir() {
			if err := os.Remove(filepath.Join(blobs, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// verifyingReader reads a blob file and fails at its end when the
// content's digest is not want.
type verifyingReader struct {
	f    *os.File
	want v1.Hash
	h    hash.Hash
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	n, err := v.f.Read(p)
	v.h.Write(p[:n])
	if err == io.EOF {
		if got := hexSum(v.h); got != v.want.Hex {
			return n, fmt.Errorf("blob %s: the content's digest is sha256:%s (the cache directory is corrupt)", v.want, got)
		}
	}
	return n, err
}

func (v *verifyingReader) Close() error { return v.f.Close() }

func sha256New() hash.Hash { return sha256.New() }

func hexSum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }

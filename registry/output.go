package registry

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/layers"
)

// Output types, as docker build's --output type= names them.
const (
	OutputOCI    = "oci"    // OCI image layout, archive or directory
	OutputDocker = "docker" // `docker load` archive
	OutputLocal  = "local"  // final root filesystem as a directory
	OutputTar    = "tar"    // final root filesystem as a tar archive
	OutputImage  = "image"  // the local image store, and pushes (handled by the caller)
	// OutputRegistry is type=image,push=true; ParseOutput returns it as
	// OutputImage with Push set.
	OutputRegistry = "registry"
)

// Output is one destination for a built image or index, as docker build's
// --output.
type Output struct {
	// Type is one of the Output* constants.
	Type string
	// Dest is a file or directory; "-" is standard output for archives.
	Dest string
	// Tar says Dest is an archive: always for docker and tar, by default
	// for oci (tar=false writes a layout directory), never for local.
	Tar bool
	// Name is the reference recorded in the archive or layout (optional);
	// for type=image, the name= value as given.
	Name string
	// ImageOutput holds what only type=image (and registry) outputs have.
	ImageOutput
	// Annotations are the annotation.KEY=VALUE attributes (type=image,
	// registry, oci and docker).
	Annotations []Annotation
}

// ParseOutput parses an --output value: comma-separated key=value pairs
// with keys type, dest, tar and name ("type=oci,dest=img.tar",
// "type=oci,dest=DIR,tar=false", "type=docker,dest=img.tar",
// "type=local,dest=DIR", "type=tar,dest=rootfs.tar"), the keys of
// type=image and type=registry (see ImageOutput) and annotation
// attributes (see ParseAnnotationAttr). A value without '=' is a local
// directory ("-" alone means a rootfs tar on standard output). Errors name
// the offending key.
func ParseOutput(spec string) (Output, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return Output{}, errors.New("empty output")
	}
	if !strings.Contains(spec, "=") {
		if spec == "-" {
			return Output{Type: OutputTar, Dest: "-", Tar: true}, nil
		}
		return Output{Type: OutputLocal, Dest: spec}, nil
	}
	fields, err := csv.NewReader(strings.NewReader(spec)).Read()
	if err != nil {
		return Output{}, fmt.Errorf("output %q: %w", spec, err)
	}
	var o Output
	var tarSet *bool
	seen := map[string]bool{}
	for _, f := range fields {
		k, v, ok := strings.Cut(strings.TrimSpace(f), "=")
		k = strings.ToLower(strings.TrimSpace(k))
		if !ok {
			return Output{}, fmt.Errorf("output %q: %q is not key=value", spec, f)
		}
		if seen[k] {
			return Output{}, fmt.Errorf("output %q: key %q given twice", spec, k)
		}
		seen[k] = true
		switch k {
		case "type":
			o.Type = strings.ToLower(v)
		case "dest":
			o.Dest = v
		case "name":
			o.Name = v
		case "tar":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return Output{}, fmt.Errorf("output %q: key \"tar\": %q is not a boolean", spec, v)
			}
			tarSet = &b
		default:
			if handled, err := o.setImageKey(k, v); handled {
				if err != nil {
					return Output{}, fmt.Errorf("output %q: key %q: %w", spec, k, err)
				}
				continue
			}
			return Output{}, fmt.Errorf("output %q: unknown key %q (want type, dest, tar or name; type=image also takes %s)", spec, k, imageKeyList)
		}
	}
	if o.Type == "" {
		o.Type = OutputLocal
	}
	bad := func(key, why string) (Output, error) {
		return Output{}, fmt.Errorf("output %q: key %q: %s", spec, key, why)
	}
	switch o.Type {
	case OutputOCI:
		o.Tar = tarSet == nil || *tarSet
	case OutputDocker, OutputTar:
		if tarSet != nil && !*tarSet {
			return bad("tar", "type="+o.Type+" is always an archive")
		}
		o.Tar = true
	case OutputLocal:
		if tarSet != nil {
			return bad("tar", "not valid for type=local (use type=tar)")
		}
	case OutputImage, OutputRegistry:
		if o.Dest != "" {
			return bad("dest", "not valid for type="+o.Type)
		}
		if tarSet != nil {
			return bad("tar", "not valid for type="+o.Type)
		}
		if err := o.finishImage(seen); err != nil {
			return Output{}, fmt.Errorf("output %q: %w", spec, err)
		}
		return o, nil
	default:
		return bad("type", fmt.Sprintf("unknown type %q (want oci, docker, local, tar, image or registry)", o.Type))
	}
	if o.Dest == "" {
		return bad("dest", "missing")
	}
	if o.Dest == "-" && !o.Tar {
		return bad("dest", "standard output needs an archive")
	}
	if o.Name != "" && (o.Type == OutputLocal || o.Type == OutputTar) {
		return bad("name", "not valid for type="+o.Type)
	}
	if err := o.checkNotImage(seen); err != nil {
		return Output{}, fmt.Errorf("output %q: %w", spec, err)
	}
	return o, nil
}

// refNameRE is the OCI ref.name grammar skopeo and umoci accept.
var refNameRE = regexp.MustCompile(`^[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*(?:/[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)*$`)

// ociBlob is one blob of an OCI layout, opened only when written.
type ociBlob struct {
	digest v1.Hash
	size   int64
	open   func() (io.ReadCloser, error)
}

// ociContent is what an OCI layout of one image or index holds.
type ociContent struct {
	top   v1.Descriptor
	blobs []ociBlob // sorted by digest, each once
	seen  map[v1.Hash]bool
}

// collectOCI lists the blobs of img or idx (exactly one is non-nil) and the
// descriptor that index.json points at, annotated with name if set.
func collectOCI(img v1.Image, idx v1.ImageIndex, refName string) (*ociContent, error) {
	if (img == nil) == (idx == nil) {
		return nil, errors.New("need exactly one of an image and an index")
	}
	if refName != "" && !refNameRE.MatchString(refName) {
		return nil, fmt.Errorf("invalid OCI reference name %q", refName)
	}
	c := &ociContent{seen: map[v1.Hash]bool{}}
	var err error
	if img != nil {
		c.top, err = c.addImage(img)
	} else {
		c.top, err = c.addIndex(idx)
	}
	if err != nil {
		return nil, err
	}
	if refName != "" {
		c.top.Annotations = map[string]string{layers.RefNameAnnotation: refName}
	}
	slices.SortFunc(c.blobs, func(a, b ociBlob) int { return strings.Compare(a.digest.Hex, b.digest.Hex) })
	return c, nil
}

func (c *ociContent) add(h v1.Hash, size int64, open func() (io.ReadCloser, error)) {
	if !c.seen[h] {
		c.seen[h] = true
		c.blobs = append(c.blobs, ociBlob{digest: h, size: size, open: open})
	}
}

func bytesOpener(b []byte) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
}

func (c *ociContent) addImage(img v1.Image) (v1.Descriptor, error) {
	ls, err := img.Layers()
	if err != nil {
		return v1.Descriptor{}, err
	}
	for _, l := range ls {
		if mt, err := l.MediaType(); err == nil && !mt.IsDistributable() {
			continue
		}
		d, err := l.Digest()
		if err != nil {
			return v1.Descriptor{}, err
		}
		n, err := l.Size()
		if err != nil {
			return v1.Descriptor{}, err
		}
		c.add(d, n, l.Compressed)
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return v1.Descriptor{}, err
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return v1.Descriptor{}, err
	}
	c.add(cfgName, int64(len(cfg)), bytesOpener(cfg))
	desc, err := c.addManifest(img)
	if err != nil {
		return v1.Descriptor{}, err
	}
	if cf, err := img.ConfigFile(); err == nil {
		desc.Platform = cf.Platform()
	}
	return desc, nil
}

func (c *ociContent) addIndex(idx v1.ImageIndex) (v1.Descriptor, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	for _, d := range im.Manifests {
		switch {
		case d.MediaType.IsIndex():
			child, err := idx.ImageIndex(d.Digest)
			if err == nil {
				_, err = c.addIndex(child)
			}
			if err != nil {
				return v1.Descriptor{}, fmt.Errorf("index child %s: %w", d.Digest, err)
			}
		case d.MediaType.IsImage():
			child, err := idx.Image(d.Digest)
			if err == nil {
				_, err = c.addImage(child)
			}
			if err != nil {
				return v1.Descriptor{}, fmt.Errorf("index child %s: %w", d.Digest, err)
			}
		default:
			return v1.Descriptor{}, fmt.Errorf("index child %s has unsupported media type %q", d.Digest, d.MediaType)
		}
	}
	return c.addManifest(idx)
}

// addManifest adds the manifest or index m itself.
func (c *ociContent) addManifest(m interface {
	RawManifest() ([]byte, error)
	Digest() (v1.Hash, error)
	MediaType() (types.MediaType, error)
}) (v1.Descriptor, error) {
	raw, err := m.RawManifest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	dg, err := m.Digest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	mt, err := m.MediaType()
	if err != nil {
		return v1.Descriptor{}, err
	}
	c.add(dg, int64(len(raw)), bytesOpener(raw))
	return v1.Descriptor{MediaType: mt, Size: int64(len(raw)), Digest: dg}, nil
}

const ociLayoutFile = `{"imageLayoutVersion":"1.0.0"}`

func marshalIndex(ds []v1.Descriptor) ([]byte, error) {
	return json.Marshal(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: ds})
}

// copyBlob copies b to w and checks its size and digest on the way.
func copyBlob(w io.Writer, b ociBlob) error {
	rc, err := b.open()
	if err != nil {
		return fmt.Errorf("blob %s: %w", b.digest, err)
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), io.LimitReader(rc, b.size))
	if err != nil {
		return fmt.Errorf("blob %s: %w", b.digest, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != b.size || got != b.digest.Hex {
		return fmt.Errorf("blob %s: content is sha256:%s, %d bytes (want %d)", b.digest, got, n, b.size)
	}
	return nil
}

// WriteOCILayout writes img or idx (exactly one non-nil) as an OCI image
// layout in dir, creating it if needed. index.json gets one entry for it,
// annotated org.opencontainers.image.ref.name=name when name is set; in an
// existing layout that entry replaces the one with the same name (or, with
// no name, the same digest), and blobs already present are kept. Every file
// is written to a temporary name, synced and renamed.
func WriteOCILayout(ctx context.Context, dir string, img v1.Image, idx v1.ImageIndex, name string) error {
	c, err := collectOCI(img, idx, name)
	if err != nil {
		return fmt.Errorf("oci layout %s: %w", dir, err)
	}
	blobDir := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobDir, 0o755); err != nil {
		return fmt.Errorf("oci layout: %w", err)
	}
	if err := writeFileAtomic(dir, "oci-layout", func(w io.Writer) error {
		_, err := io.WriteString(w, ociLayoutFile)
		return err
	}); err != nil {
		return fmt.Errorf("oci layout %s: %w", dir, err)
	}
	for _, b := range c.blobs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if fi, err := os.Stat(filepath.Join(blobDir, b.digest.Hex)); err == nil && fi.Size() == b.size {
			continue
		}
		err := writeFileAtomic(dir, filepath.Join("blobs", "sha256", b.digest.Hex), func(w io.Writer) error {
			return copyBlob(ctxWriter{ctx, w}, b)
		})
		if err != nil {
			return fmt.Errorf("oci layout %s: %w", dir, err)
		}
	}
	entries := []v1.Descriptor{}
	if raw, err := os.ReadFile(filepath.Join(dir, "index.json")); err == nil {
		old, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return fmt.Errorf("oci layout %s: existing index.json: %w", dir, err)
		}
		for _, d := range old.Manifests {
			n := d.Annotations[layers.RefNameAnnotation]
			if (name != "" && n == name) || (name == "" && n == "" && d.Digest == c.top.Digest) {
				continue
			}
			entries = append(entries, d)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("oci layout %s: %w", dir, err)
	}
	entries = append(entries, c.top)
	idxJSON, err := marshalIndex(entries)
	if err != nil {
		return err
	}
	return writeFileAtomic(dir, "index.json", func(w io.Writer) error {
		_, err := w.Write(idxJSON)
		return err
	})
}

// writeFileAtomic creates dir/rel with what fill writes: temporary file in
// dir, fsync, rename.
func writeFileAtomic(dir, rel string, fill func(io.Writer) error) error {
	return layers.WriteFileAtomic(filepath.Join(dir, rel), 0o644, fill)
}

// WriteOCIArchive writes img or idx (exactly one non-nil) to w as a tar of
// the OCI image layout WriteOCILayout would create in an empty directory.
// Blobs are streamed from their source and checked against their digests.
// Entries come in a fixed order (oci-layout, blobs/, blobs/sha256/, blobs by
// digest, index.json last) with fixed metadata, so the same image gives the
// same bytes. w is not closed.
func WriteOCIArchive(ctx context.Context, w io.Writer, img v1.Image, idx v1.ImageIndex, name string) error {
	c, err := collectOCI(img, idx, name)
	if err != nil {
		return fmt.Errorf("oci archive: %w", err)
	}
	idxJSON, err := marshalIndex([]v1.Descriptor{c.top})
	if err != nil {
		return err
	}
	tw := tar.NewWriter(ctxWriter{ctx, w})
	epoch := time.Unix(0, 0)
	file := func(name string, size int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: epoch, Format: tar.FormatUSTAR})
	}
	if err := file("oci-layout", int64(len(ociLayoutFile))); err != nil {
		return err
	}
	if _, err := io.WriteString(tw, ociLayoutFile); err != nil {
		return err
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch, Format: tar.FormatUSTAR}); err != nil {
			return err
		}
	}
	for _, b := range c.blobs {
		if err := file("blobs/sha256/"+b.digest.Hex, b.size); err != nil {
			return err
		}
		if err := copyBlob(tw, b); err != nil {
			return fmt.Errorf("oci archive: %w", err)
		}
	}
	if err := file("index.json", int64(len(idxJSON))); err != nil {
		return err
	}
	if _, err := tw.Write(idxJSON); err != nil {
		return err
	}
	return tw.Close()
}

// WriteDockerArchive writes img to w in the `docker load` / `podman load`
// format (manifest.json, config, layers), tagged with tags normalized as
// the store does ("demo" is localhost/demo:latest); with no tags the
// archive loads as an untagged image. w is not closed.
func WriteDockerArchive(ctx context.Context, w io.Writer, img v1.Image, tags []string) error {
	refs := map[name.Reference]v1.Image{}
	for _, t := range tags {
		n, err := layers.NormalizeName(t)
		if err != nil {
			return fmt.Errorf("docker archive: %w", err)
		}
		tag, err := name.NewTag(n)
		if err != nil {
			return fmt.Errorf("docker archive: tag %q: %w", t, err)
		}
		refs[tag] = img
	}
	if len(refs) == 0 {
		dg, err := img.Digest()
		if err != nil {
			return fmt.Errorf("docker archive: %w", err)
		}
		ref, err := name.NewDigest("localhost/untagged@" + dg.String())
		if err != nil {
			return fmt.Errorf("docker archive: %w", err)
		}
		refs[ref] = img
	}
	if err := tarball.MultiRefWrite(refs, ctxWriter{ctx, w}); err != nil {
		return fmt.Errorf("docker archive: %w", err)
	}
	return nil
}

// WriteRootFS extracts every layer of img, in order and applying
// whiteouts, into dir (created if needed): the image's final root
// filesystem. When not running as root, ownership is not reproduced and
// device nodes are skipped; warn (which may be nil) hears about it.
func WriteRootFS(ctx context.Context, dir string, img v1.Image, warn func(string)) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	ls, err := img.Layers()
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	rootless := os.Geteuid() != 0
	for i, l := range ls {
		d, _ := l.Digest()
		src := fmt.Sprintf("layer %d (%s)", i+1, d)
		if err := extractLayer(ctx, l, dir, layers.ExtractOptions{
			Whiteouts:   layers.ApplyWhiteouts,
			Source:      src,
			Rootless:    rootless,
			Warn:        warn,
			NoSameOwner: rootless,
		}); err != nil {
			return fmt.Errorf("rootfs %s: %w", src, err)
		}
	}
	return nil
}

func extractLayer(ctx context.Context, l v1.Layer, dir string, opts layers.ExtractOptions) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := layers.Extract(ctx, rc, dir, opts); err != nil {
		return err
	}
	// Read to the end, so a verifying reader checks the whole layer.
	_, err = io.Copy(io.Discard, rc)
	return err
}

// WriteRootFSTar writes img's final root filesystem to w as one tar stream
// (see layers.Flatten): entries hidden by higher layers or whiteouts are
// left out, names are confined to the root. w is not closed.
func WriteRootFSTar(ctx context.Context, w io.Writer, img v1.Image) error {
	ls, err := img.Layers()
	if err != nil {
		return fmt.Errorf("rootfs tar: %w", err)
	}
	if err := layers.Flatten(ctx, ctxWriter{ctx, w}, ls); err != nil {
		return fmt.Errorf("rootfs tar: %w", err)
	}
	return nil
}

// ctxWriter stops a stream when its context is done.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

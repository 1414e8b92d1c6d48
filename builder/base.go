package builder

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/builder/internal/copier"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
)

// resolveImage finds the image ref names for platform: "scratch" (nil),
// "oci-layout://PATH[:TAG]" (an OCI image layout on disk), or an image in
// the local store (by name, ID or digest). An index yields its manifest
// for platform.
func (b *build) resolveImage(ctx context.Context, ref string, platform v1.Platform) (v1.Image, error) {
	ref = b.contextImage(ref) // --build-context NAME=docker-image://REF
	if ref == "scratch" {
		return nil, nil
	}
	if strings.HasPrefix(ref, "oci-layout://") {
		return resolveLayout(strings.TrimPrefix(ref, "oci-layout://"), platform)
	}
	st := b.opts.Store
	desc, err := st.Lookup(ctx, ref)
	local := err == nil
	if err != nil && !errors.Is(err, layers.ErrNotFound) {
		return nil, err
	}
	if !local || (b.opts.Pull == registry.PullAlways && !localOnlyName(ref)) || !b.servesPlatform(ctx, desc, platform) {
		if desc, err = b.pull(ctx, ref, platform); err != nil {
			return nil, b.stageHint(ref, err)
		}
	}
	var img v1.Image
	if isIndex(desc.MediaType) {
		idx, err := st.ImageIndex(ctx, desc.Digest)
		if err != nil {
			return nil, err
		}
		if img, err = imageForPlatform(idx, platform, ref); err != nil {
			return nil, err
		}
	} else {
		if img, err = st.Image(ctx, desc.Digest); err != nil {
			return nil, err
		}
		if err := checkPlatform(img, platform, ref); err != nil {
			return nil, err
		}
	}
	b.recordImage(ref, platform, img)
	return b.withSource(img, ref), nil
}

// withSource marks the layers of an image named by a registry reference
// as coming from that repository, so that pushing a result built on it to
// another repository of the same registry mounts them instead of
// uploading their bytes.
func (b *build) withSource(img v1.Image, ref string) v1.Image {
	if localOnlyName(ref) {
		return img
	}
	n, err := layers.NormalizeName(ref)
	if err != nil {
		return img
	}
	r, err := registry.ParseReference(n, b.opts.registryConn().Insecure)
	if err != nil {
		return img
	}
	return &sourcedImage{Image: img, from: r}
}

// sourcedImage is an image whose layers are mountable from a repository.
type sourcedImage struct {
	v1.Image
	from name.Reference
}

func (s *sourcedImage) Layers() ([]v1.Layer, error) {
	ls, err := s.Image.Layers()
	if err != nil {
		return nil, err
	}
	out := make([]v1.Layer, len(ls))
	for i, l := range ls {
		out[i] = &remote.MountableLayer{Layer: l, Reference: s.from}
	}
	return out, nil
}

func (s *sourcedImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	l, err := s.Image.LayerByDigest(h)
	if err != nil {
		return nil, err
	}
	return &remote.MountableLayer{Layer: l, Reference: s.from}, nil
}

// pull fetches ref for platform from its registry under the build's pull
// policy, once per build for each ref and platform.
func (b *build) pull(ctx context.Context, ref string, platform v1.Platform) (v1.Descriptor, error) {
	key := ref + "|" + PlatformString(platform)
	b.mu.Lock()
	p, ok := b.pulls[key]
	if !ok {
		p = &pulled{}
		b.pulls[key] = p
	}
	b.mu.Unlock()
	p.once.Do(func() {
		p.desc, p.err = registry.Pull(ctx, b.opts.Store, ref, registry.PullOptions{
			Platform:  platform,
			Policy:    b.opts.Pull,
			Conn:      b.opts.registryConn(),
			Progress:  b.opts.pullProgress(),
			Transfers: TransferProgress(b.opts.Progress),
		})
	})
	return p.desc, p.err
}

// pulled is the outcome of one pull of a build.
type pulled struct {
	once sync.Once
	desc v1.Descriptor
	err  error
}

// servesPlatform reports whether the stored desc is an image, or an index
// whose manifest for platform is stored; a pulled index holds only the
// platforms pulled so far.
func (b *build) servesPlatform(ctx context.Context, desc v1.Descriptor, platform v1.Platform) bool {
	if !isIndex(desc.MediaType) {
		return true
	}
	idx, err := b.opts.Store.ImageIndex(ctx, desc.Digest)
	if err != nil {
		return true // let the caller report it
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return true
	}
	for _, d := range im.Manifests {
		if d.Platform != nil && !isIndex(d.MediaType) && registry.MatchPlatform(platform, *d.Platform) {
			_, err := idx.Image(d.Digest)
			return err == nil
		}
	}
	return true
}

// localOnlyName reports whether ref is a short name ("app", "a/b:1") or a
// "localhost/" name: names no registry serves, which PullAlways leaves to
// the local store.
func localOnlyName(ref string) bool {
	if strings.HasPrefix(ref, "localhost/") {
		return true
	}
	n, err := layers.NormalizeName(ref)
	return err != nil || strings.HasPrefix(n, "localhost/")
}

func isIndex(mt types.MediaType) bool {
	return mt == types.OCIImageIndex || mt == types.DockerManifestList
}

// checkPlatform fails when a single-platform image does not serve platform.
func checkPlatform(img v1.Image, want v1.Platform, ref string) error {
	cfg, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("%s: %w", ref, err)
	}
	have := v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}
	if have.OS == "" && have.Architecture == "" {
		return nil
	}
	if !registry.MatchPlatform(want, have) {
		return fmt.Errorf("image %s is for %s, not the requested platform %s", ref, PlatformString(have), PlatformString(want))
	}
	return nil
}

// imageForPlatform picks the manifest of idx that serves platform.
func imageForPlatform(idx v1.ImageIndex, platform v1.Platform, ref string) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var have []string
	for _, d := range im.Manifests {
		if d.Platform == nil || isIndex(d.MediaType) {
			continue
		}
		have = append(have, PlatformString(*d.Platform))
		if registry.MatchPlatform(platform, *d.Platform) {
			return idx.Image(d.Digest)
		}
	}
	return nil, fmt.Errorf("image %s has no manifest for platform %s (it has: %s)", ref, PlatformString(platform), strings.Join(have, ", "))
}

// resolveLayout opens PATH[:TAG] (or PATH@sha256:...) as an OCI layout.
func resolveLayout(spec string, platform v1.Platform) (v1.Image, error) {
	dir, tag, digest, err := splitLayoutRef(spec)
	if err != nil {
		return nil, err
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("oci-layout %s: %w", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("oci-layout %s: %w", dir, err)
	}
	var pick *v1.Descriptor
	for i := range im.Manifests {
		d := &im.Manifests[i]
		switch {
		case digest != "":
			if d.Digest.String() == digest {
				pick = d
			}
		case tag != "":
			name := d.Annotations[layers.RefNameAnnotation]
			norm, _ := layers.NormalizeName(tag)
			if name == tag || name == norm || strings.HasSuffix(name, ":"+tag) {
				pick = d
			}
		default:
			if len(im.Manifests) == 1 {
				pick = d
			}
		}
		if pick != nil {
			break
		}
	}
	if pick == nil {
		if tag == "" && digest == "" {
			return nil, fmt.Errorf("oci-layout %s holds %d images: name one with oci-layout://%s:TAG", dir, len(im.Manifests), dir)
		}
		return nil, fmt.Errorf("oci-layout %s has no image %s%s", dir, tag, digest)
	}
	if isIndex(pick.MediaType) {
		child, err := idx.ImageIndex(pick.Digest)
		if err != nil {
			return nil, err
		}
		return imageForPlatform(child, platform, "oci-layout://"+spec)
	}
	img, err := idx.Image(pick.Digest)
	if err != nil {
		return nil, err
	}
	return img, checkPlatform(img, platform, "oci-layout://"+spec)
}

// imageSource is an image used as a COPY --from source, shared by the
// steps of a build.
type imageSource struct {
	fs  *imageFS
	err error
}

// imageSource resolves ref once per build and returns its root filesystem.
func (b *build) imageSource(ctx context.Context, ref string, platform v1.Platform) (copier.Source, error) {
	key := ref + "|" + PlatformString(platform)
	b.mu.Lock()
	src, ok := b.images[key]
	b.mu.Unlock()
	if ok {
		return src.fs, src.err
	}
	src = &imageSource{}
	img, err := b.resolveImage(ctx, ref, platform)
	switch {
	case err != nil:
		src.err = err
	case img == nil:
		src.err = errors.New("scratch has no files to copy")
	default:
		dirs, err := b.opts.Store.Snapshots(ctx, img, b.warn)
		if err != nil {
			src.err = err
		} else {
			src.fs = &imageFS{layers.NewRootFS(dirs)}
		}
	}
	b.mu.Lock()
	b.images[key] = src
	b.mu.Unlock()
	if src.err != nil {
		return nil, src.err
	}
	return src.fs, nil
}

// splitLayoutRef splits "PATH[:TAG]" or "PATH@sha256:..." into its parts.
// The tag starts at the first ':' of the last path element that leaves an
// existing directory, so tags holding ':' ("app:1") work.
func splitLayoutRef(spec string) (dir, tag, digest string, err error) {
	if i := strings.LastIndex(spec, "@"); i >= 0 {
		return spec[:i], "", spec[i+1:], nil
	}
	if fi, err := os.Stat(spec); err == nil && fi.IsDir() {
		return spec, "", "", nil
	}
	slash := strings.LastIndex(spec, "/")
	for i := slash + 1; i < len(spec); i++ {
		if spec[i] != ':' {
			continue
		}
		if fi, err := os.Stat(spec[:i]); err == nil && fi.IsDir() {
			return spec[:i], spec[i+1:], "", nil
		}
	}
	return "", "", "", fmt.Errorf("oci-layout %s: no such OCI layout directory", spec)
}

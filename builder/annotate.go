package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/registry"
)

// checkAnnotations refuses annotations the build cannot place, as
// BuildKit's image exporter does: index annotations without an index, a
// platform the build does not make, and descriptor or index annotations
// with docker media types.
func checkAnnotations(anns []registry.Annotation, platforms []v1.Platform, format Format) error {
	for _, a := range anns {
		switch a.Type {
		case registry.AnnotationIndex, registry.AnnotationIndexDescriptor:
			if len(platforms) < 2 {
				return fmt.Errorf("annotation %s:%s: a single-platform build makes no index (build several platforms, or annotate the manifest)", a.Type, a.Key)
			}
		}
		if format == FormatDocker && a.Type != registry.AnnotationManifest {
			return fmt.Errorf("annotation %s:%s: docker media types have no %s annotations: build with FormatOCI", a.Type, a.Key, a.Type)
		}
		if a.Platform != nil && !slices.ContainsFunc(platforms, a.Applies) {
			var have []string
			for _, p := range platforms {
				have = append(have, PlatformString(p))
			}
			return fmt.Errorf("annotation %s[%s]:%s: the build makes no image for %s (it makes %s)", a.Type, PlatformString(*a.Platform), a.Key, PlatformString(*a.Platform), strings.Join(have, ", "))
		}
	}
	return nil
}

// annotateImages sets the manifest annotations of opts.Annotations on each
// platform's image.
func annotateImages(opts *Options, images []v1.Image, platforms []v1.Platform) error {
	for i, img := range images {
		anns := registry.SelectAnnotations(opts.Annotations, registry.AnnotationManifest, &platforms[i])
		if len(anns) == 0 {
			continue
		}
		bi, ok := img.(*builtImage)
		if !ok {
			images[i] = mutate.Annotations(img, anns).(v1.Image)
			continue
		}
		cfg := bi.cfg.DeepCopy()
		merged := registry.MergeAnnotations(bi.annotations, anns)
		out, err := assemble(cfg, slices.Clone(bi.layers), bi.format, merged)
		if err != nil {
			return err
		}
		images[i] = out
	}
	return nil
}

// descriptorAnnotations are the annotations of the result's own
// descriptor: manifest-descriptor for one image, index-descriptor for an
// index.
func descriptorAnnotations(opts *Options, res *Result, platforms []v1.Platform) map[string]string {
	if res.Index != nil {
		return registry.SelectAnnotations(opts.Annotations, registry.AnnotationIndexDescriptor, nil)
	}
	return registry.SelectAnnotations(opts.Annotations, registry.AnnotationManifestDescriptor, &platforms[0])
}

// addToManifestList adds the result's images to the list opts.Manifest
// (created, of the build's format, when missing), as buildah's build
// --manifest does.
func addToManifestList(ctx context.Context, opts *Options, res *Result, warn func(string)) error {
	var images []v1.Descriptor
	if res.Index != nil {
		im, err := res.Index.IndexManifest()
		if err != nil {
			return err
		}
		images = im.Manifests
	} else {
		d := res.Descriptor
		d.Annotations = nil
		images = []v1.Descriptor{d}
	}
	desc, err := registry.AddImagesToList(ctx, opts.Store, opts.Manifest, images, registry.ListCreateOptions{MediaType: opts.Format.indexType()})
	if err != nil {
		return fmt.Errorf("manifest list %s: %w", opts.Manifest, err)
	}
	raw, err := opts.Store.Blobs().ReadAll(desc.Digest)
	if err != nil {
		return err
	}
	im, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return err
	}
	seen := map[string]int{}
	for _, d := range im.Manifests {
		if d.Platform != nil {
			seen[PlatformString(*d.Platform)]++
		}
	}
	for _, d := range images {
		if d.Platform != nil && seen[PlatformString(*d.Platform)] > 1 {
			warn(fmt.Sprintf("manifest list %s now has %d entries for %s (buildah keeps older ones too): remove the old one with ibuild manifest remove %s DIGEST",
				opts.Manifest, seen[PlatformString(*d.Platform)], PlatformString(*d.Platform), opts.Manifest))
		}
	}
	opts.Progress.Emit(progress.Event{Kind: progress.Log, Time: opts.Now(),
		Message: fmt.Sprintf("added %d image(s) to manifest list %s: %s", len(images), opts.Manifest, desc.Digest)})
	return nil
}

// pushByDigest pushes the result to each repository of opts.PushByDigest
// by digest, with no tag.
func pushByDigest(ctx context.Context, opts *Options, res *Result) error {
	for _, repo := range opts.PushByDigest {
		r, err := registry.ParseReference(repo, opts.PushOptions.Insecure)
		if err != nil {
			return fmt.Errorf("push-by-digest: %w", err)
		}
		dest := r.Context().Digest(res.Digest.String()).String()
		var d v1.Hash
		if res.Image != nil {
			d, err = registry.PushImage(ctx, res.Image, dest, opts.PushOptions)
		} else {
			d, err = registry.PushIndex(ctx, res.Index, dest, opts.PushOptions)
		}
		if err != nil {
			return err
		}
		if d != res.Digest {
			return errors.New("internal error: pushed " + d.String() + ", built " + res.Digest.String())
		}
		res.Pushed = append(res.Pushed, Pushed{Ref: dest, Digest: d})
	}
	return nil
}

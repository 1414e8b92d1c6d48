package registry

import (
	"context"
	"encoding/json"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// RemoteImage is what InspectRemote reports of one image manifest.
type RemoteImage struct {
	Digest   v1.Hash         `json:"digest"`
	Platform *v1.Platform    `json:"platform,omitempty"`
	Manifest json.RawMessage `json:"manifest"`
	Config   json.RawMessage `json:"config"`
}

// RemoteInfo is a registry's view of a reference: the manifest (or index)
// and the config of each image, with no layer downloaded.
type RemoteInfo struct {
	Name      string          `json:"name"`
	Digest    v1.Hash         `json:"digest"`
	MediaType types.MediaType `json:"mediaType"`
	// Index is the raw index, for an index.
	Index json.RawMessage `json:"index,omitempty"`
	// Images are the image itself, or each image of the index.
	Images []RemoteImage `json:"images"`
}

// InspectRemote fetches ref's manifest or index and the config of every
// image it names, but no layer. opts.Insecure, TLSVerify and Transport
// apply; Policy and Platform do not.
func InspectRemote(ctx context.Context, ref string, opts PullOptions) (*RemoteInfo, error) {
	r, err := ParseReference(ref, opts.Insecure)
	if err != nil {
		return nil, err
	}
	full := CanonicalName(r)
	fail := func(err error) (*RemoteInfo, error) {
		return nil, fmt.Errorf("inspect %s: %w", full, explain(ctx, err, r, "pull", opts.Conn))
	}
	ropts := opts.remoteOptions(ctx)
	desc, err := remote.Get(r, ropts...)
	if err != nil {
		return fail(err)
	}
	info := &RemoteInfo{Name: full, Digest: desc.Digest, MediaType: desc.MediaType}
	image := func(img v1.Image, p *v1.Platform) error {
		dg, err := img.Digest()
		if err != nil {
			return err
		}
		m, err := img.RawManifest()
		if err != nil {
			return err
		}
		c, err := img.RawConfigFile()
		if err != nil {
			return fmt.Errorf("config: %w", err)
		}
		info.Images = append(info.Images, RemoteImage{Digest: dg, Platform: p, Manifest: m, Config: c})
		return nil
	}
	if !desc.MediaType.IsIndex() {
		img, err := desc.Image()
		if err == nil {
			err = image(img, nil)
		}
		if err != nil {
			return fail(err)
		}
		return info, nil
	}
	info.Index = desc.Manifest
	idx, err := desc.ImageIndex()
	if err != nil {
		return fail(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return fail(err)
	}
	for _, d := range im.Manifests {
		if !d.MediaType.IsImage() {
			continue
		}
		img, err := idx.Image(d.Digest)
		if err == nil {
			err = image(img, d.Platform)
		}
		if err != nil {
			return fail(fmt.Errorf("%s: %w", d.Digest, err))
		}
	}
	return info, nil
}

// RemoteIndex returns the index ref names (nil when ref names a single
// image), reading manifests lazily: the caller fetches what it needs.
func RemoteIndex(ctx context.Context, ref string, opts PullOptions) (v1.ImageIndex, error) {
	r, err := ParseReference(ref, opts.Insecure)
	if err != nil {
		return nil, err
	}
	desc, err := remote.Get(r, opts.remoteOptions(ctx)...)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", CanonicalName(r), err)
	}
	if !desc.MediaType.IsIndex() {
		return nil, nil
	}
	return desc.ImageIndex()
}

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/urfave/cli/v2"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
)

// imageOutputs turns the --output type=image and type=registry outputs
// into what the library does with a result: names that tag it in the
// store, pushes by tag and by digest, annotations, media types. It
// returns the names as given (for the metadata file's image.name) and
// those that want a NAME@DIGEST tag (name-canonical).
func imageOutputs(c *cli.Context, opts *builder.Options, outs []registry.Output) (names, canonical []string, err error) {
	names = slices.Clone(c.StringSlice("tag"))
	for _, o := range outs {
		if o.Type != registry.OutputImage {
			continue
		}
		opts.Annotations = append(opts.Annotations, o.Annotations...)
		if o.OCIMediaTypes != nil {
			want := builder.FormatDocker
			if *o.OCIMediaTypes {
				want = builder.FormatOCI
			}
			if c.IsSet("format") && opts.Format != want {
				return nil, nil, fmt.Errorf("--output oci-mediatypes=%t contradicts --format %s", *o.OCIMediaTypes, opts.Format)
			}
			opts.Format = want
		}
		outNames := o.Names
		if len(outNames) == 0 {
			outNames = c.StringSlice("tag")
		}
		if len(outNames) == 0 && (o.Push || o.NameCanonical) {
			return nil, nil, cli.Exit("--output type=image with push or name-canonical needs a name: name=REF in the output, or -t REF", 2)
		}
		for _, n := range outNames {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
			norm, err := layers.NormalizeName(n)
			if err != nil {
				return nil, nil, fmt.Errorf("--output name=%s: %w", n, err)
			}
			if o.Push && registry.LocalOnly(norm) {
				return nil, nil, fmt.Errorf("--output name=%s: the name has no registry to push to (e.g. name=registry.example.com/%s)", n, strings.TrimPrefix(norm, "localhost/"))
			}
			if o.Insecure {
				if r, err := registry.ParseReference(norm, nil); err == nil {
					opts.InsecureRegistries = append(opts.InsecureRegistries, r.Context().RegistryStr())
					opts.PushOptions.Insecure = append(opts.PushOptions.Insecure, r.Context().RegistryStr())
				}
			}
			switch {
			case o.PushByDigest:
				// Pushed by digest only: the name is a repository and
				// does not tag the stored result.
				opts.PushByDigest = appendNew(opts.PushByDigest, norm)
			case o.Push:
				opts.Push = appendNew(opts.Push, norm)
				opts.Tags = appendNew(opts.Tags, n)
			default:
				opts.Tags = appendNew(opts.Tags, n)
			}
			if o.NameCanonical {
				canonical = appendNew(canonical, norm)
			}
		}
	}
	return names, canonical, nil
}

func appendNew(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

// tagCanonical names the stored result REPOSITORY@DIGEST for each name.
func tagCanonical(c *cli.Context, st *layers.Store, res *builder.Result, names []string) error {
	if len(names) == 0 || !res.Stored {
		return nil
	}
	d := res.Descriptor
	d.Annotations = nil
	for _, n := range names {
		repo := n
		if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
			repo = repo[:i]
		}
		if i := strings.IndexByte(repo, '@'); i >= 0 {
			repo = repo[:i]
		}
		if err := st.Tag(c.Context, repo+"@"+res.Digest.String(), d); err != nil {
			return fmt.Errorf("name-canonical: %w", err)
		}
	}
	return nil
}

// metadataDescriptor is the result's descriptor as BuildKit reports it.
type metadataDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *v1.Platform      `json:"platform,omitempty"`
}

// writeMetadata writes buildx's --metadata-file: the result's digest, its
// config digest (one image), its descriptor and the names it was given,
// plus ibuild.build.platforms, the platforms built.
func writeMetadata(path string, res *builder.Result, names []string, platforms []v1.Platform) error {
	m := map[string]any{
		"containerimage.digest": res.Digest.String(),
		"containerimage.descriptor": metadataDescriptor{
			MediaType: string(res.Descriptor.MediaType), Digest: res.Descriptor.Digest.String(), Size: res.Descriptor.Size,
			Annotations: res.Descriptor.Annotations, Platform: res.Descriptor.Platform,
		},
	}
	if res.Image != nil {
		m["containerimage.config.digest"] = res.ID.String()
	} else if res.Index != nil {
		// An index descriptor names no platform (BuildKit's neither).
		m["containerimage.descriptor"] = metadataDescriptor{
			MediaType: string(res.Descriptor.MediaType), Digest: res.Descriptor.Digest.String(), Size: res.Descriptor.Size,
			Annotations: res.Descriptor.Annotations,
		}
	}
	if len(names) > 0 {
		m["image.name"] = strings.Join(names, ",")
	}
	ps := make([]string, len(platforms))
	for i, p := range platforms {
		ps[i] = builder.PlatformString(p)
	}
	m["ibuild.build.platforms"] = ps
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("--metadata-file: %w", err)
	}
	return nil
}

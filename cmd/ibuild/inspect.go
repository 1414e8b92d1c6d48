package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/urfave/cli/v2"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
)

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "show an image's manifest and config, or a working container's state, as JSON",
		ArgsUsage: "NAME|ID|docker://REF|CONTAINER",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "type", Usage: "image or container (default: an image, else a working container of that name)"},
			&cli.StringSliceFlag{Name: "insecure-registry", Usage: "reach this registry host[:port] over plain HTTP (docker:// only; repeatable)"},
			&cli.BoolFlag{Name: "tls-verify", Value: true, Usage: "verify the registry's TLS certificate (docker:// only)"},
			authfileFlag, certDirFlag,
		}, inspectAttestFlags()...),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("inspect needs one image name or ID", 2)
			}
			if ref, ok := strings.CutPrefix(c.Args().First(), "docker://"); ok {
				if wantsAttestations(c) {
					return inspectRemoteAttestations(c, ref)
				}
				info, err := registry.InspectRemote(c.Context, ref, registry.PullOptions{Conn: connOptions(c)})
				if err != nil {
					return err
				}
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(info)
			}
			st, err := openStore(c)
			if err != nil {
				return err
			}
			defer st.Close()
			ref := c.Args().First()
			typ := c.String("type")
			if typ != "" && typ != "image" && typ != "container" {
				return fmt.Errorf("--type: want image or container, not %q", typ)
			}
			if typ == "container" {
				return inspectContainer(st, ref)
			}
			desc, err := st.Lookup(c.Context, ref)
			if err != nil {
				if typ == "" {
					if cs, cerr := builder.InspectContainer(st, ref); cerr == nil {
						return printJSON(cs)
					}
					return fmt.Errorf("%w (nor a working container)", err)
				}
				return err
			}
			if wantsAttestations(c) {
				var idx v1.ImageIndex
				if desc.MediaType.IsIndex() {
					if idx, err = st.ImageIndex(c.Context, desc.Digest); err != nil {
						return err
					}
				}
				return printAttestations(c, ref, desc.Digest, idx)
			}
			out := map[string]any{"name": ref, "digest": desc.Digest.String(), "mediaType": desc.MediaType}
			if desc.MediaType == types.OCIImageIndex || desc.MediaType == types.DockerManifestList {
				idx, err := st.ImageIndex(c.Context, desc.Digest)
				if err != nil {
					return err
				}
				raw, err := idx.RawManifest()
				if err != nil {
					return err
				}
				out["index"] = json.RawMessage(raw)
				var images []map[string]any
				im, err := idx.IndexManifest()
				if err != nil {
					return err
				}
				for _, d := range im.Manifests {
					if !st.Blobs().Has(d.Digest) {
						// a pulled index holds only the platforms pulled
						images = append(images, map[string]any{"digest": d.Digest.String(), "platform": d.Platform, "stored": false})
						continue
					}
					img, err := idx.Image(d.Digest)
					if err != nil {
						return err
					}
					entry, err := imageJSON(img)
					if err != nil {
						return err
					}
					entry["platform"] = d.Platform
					images = append(images, entry)
				}
				out["images"] = images
			} else {
				img, err := st.Image(c.Context, desc.Digest)
				if err != nil {
					return err
				}
				entry, err := imageJSON(img)
				if err != nil {
					return err
				}
				for k, v := range entry {
					out[k] = v
				}
			}
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(out)
		},
	}
}

// inspectContainer prints the state of the working container name.
func inspectContainer(st *layers.Store, name string) error {
	cs, err := builder.InspectContainer(st, name)
	if err != nil {
		return fmt.Errorf("%w (list them with ibuild containers)", err)
	}
	return printJSON(cs)
}

func imageJSON(img v1.Image) (map[string]any, error) {
	rawMan, err := img.RawManifest()
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	id, err := img.ConfigName()
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"id":       id.String(),
		"manifest": json.RawMessage(rawMan),
		"config":   json.RawMessage(rawCfg),
	}, nil
}

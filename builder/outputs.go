package builder

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
)

// writeOutputs writes the result to every --output destination. Archives
// are written to a temporary name and renamed, so a failed build never
// leaves a partial archive under the requested name.
func writeOutputs(ctx context.Context, opts *Options, res *Result, warn func(string)) error {
	name := ""
	if len(res.Names) > 0 {
		name = res.Names[0]
	}
	for _, out := range opts.Outputs {
		var err error
		switch out.Type {
		case "image", "":
			// The store already has it.
		case "oci":
			img := res.Image
			if res.Index != nil {
				img = nil // the index, with its attestations
			}
			if !out.Tar {
				err = registry.WriteOCILayout(ctx, out.Dest, img, res.Index, name)
				break
			}
			err = writeFileAtomic(out.Dest, func(w io.Writer) error {
				return registry.WriteOCIArchive(ctx, w, img, res.Index, name)
			})
		case "docker":
			if res.Image == nil {
				return fmt.Errorf("output type=docker holds one image; a multi-platform build needs type=oci")
			}
			if res.Index != nil {
				warn("--output type=docker,dest=" + out.Dest + ": a docker archive holds no attestations: the SBOM and provenance are not in it (type=oci keeps them)")
			}
			err = writeFileAtomic(out.Dest, func(w io.Writer) error {
				return registry.WriteDockerArchive(ctx, w, res.Image, res.Names)
			})
		case "local":
			if res.Image == nil {
				return fmt.Errorf("output type=local needs a single-platform build")
			}
			err = registry.WriteRootFS(ctx, out.Dest, res.Image, warn)
		case "tar":
			if res.Image == nil {
				return fmt.Errorf("output type=tar needs a single-platform build")
			}
			err = writeFileAtomic(out.Dest, func(w io.Writer) error {
				return registry.WriteRootFSTar(ctx, w, res.Image)
			})
		default:
			err = fmt.Errorf("unknown output type %q", out.Type)
		}
		if err != nil {
			return fmt.Errorf("output type=%s,dest=%s: %w", out.Type, out.Dest, err)
		}
	}
	return nil
}

// writeFileAtomic writes dest through fn via a temporary file; "-" is
// standard output.
func writeFileAtomic(dest string, fn func(io.Writer) error) error {
	if dest == "-" {
		return fn(os.Stdout)
	}
	return layers.WriteFileAtomic(dest, 0o644, fn)
}

package builder

import (
	"context"
	"fmt"
	"slices"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/layers"
)

// SquashOptions controls SquashImage.
type SquashOptions struct {
	// Commit says how the squashed layer is compressed and whether its
	// mtimes are clamped (SourceDateEpoch).
	Commit layers.CommitOptions
	// Warn receives non-fatal problems, such as device nodes a rootless
	// process cannot recreate; nil discards them.
	Warn func(msg string)
}

// SquashImage returns img with its layers from index keep on merged into
// one layer, which it stores in store; the first keep layers stay as they
// are. With keep 0 the whole image becomes one layer with no whiteouts
// (--squash-all); otherwise the new layer keeps the whiteouts and opaque
// markers that hide files of the kept layers (see layers.Store.Squash).
// `ibuild build --squash` calls it with the final stage's base image's
// layer count and `--squash-all` with 0; `ibuild commit --squash` and
// `--squash-all` use it the same way on a working container's image.
//
// The history keeps every entry; of those that made the squashed layers,
// all but the last are marked empty_layer, so the non-empty entries still
// match the layers one to one and the last step's entry describes the
// merged layer. (docker build --squash marks them all empty and adds an
// entry dated now instead; that would make the result unreproducible.) A
// history that did not match the layers before is left as it is. The rest
// of the config, creation time included, is unchanged: with a fixed
// SOURCE_DATE_EPOCH the result is reproducible. One layer alone above
// kept ones, or none, leaves img unchanged.
//
// The manifest keeps img's format (OCI or docker) and annotations. As for
// any write to the store, the caller holds store.Lock(ctx, false) until
// the result is tagged or otherwise referenced.
func SquashImage(ctx context.Context, store *layers.Store, img v1.Image, keep int, opts SquashOptions) (v1.Image, error) {
	ls, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("squash: %w", err)
	}
	if keep < 0 || keep > len(ls) {
		return nil, fmt.Errorf("squash: cannot keep %d of %d layers", keep, len(ls))
	}
	if n := len(ls) - keep; n == 0 || (n == 1 && keep > 0) {
		return img, nil
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("squash: %w", err)
	}
	if len(cfg.RootFS.DiffIDs) != len(ls) {
		return nil, fmt.Errorf("squash: image is inconsistent: %d layers but %d diffIDs in its config", len(ls), len(cfg.RootFS.DiffIDs))
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("squash: %w", err)
	}
	desc, err := store.Squash(ctx, ls[keep:], layers.SquashOptions{
		CommitOptions: opts.Commit,
		All:           keep == 0,
		Warn:          opts.Warn,
	})
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.History = squashHistory(cfg.History, len(ls), keep)
	cfg.RootFS.DiffIDs = append(slices.Clone(cfg.RootFS.DiffIDs[:keep]), desc.DiffID)
	format := FormatOCI
	if m.MediaType == types.DockerManifestSchema2 {
		format = FormatDocker
	}
	out := append(slices.Clone(ls[:keep]), store.Blobs().Layer(desc))
	return assemble(cfg, out, format, m.Annotations)
}

// squashHistory marks empty all but the last of the history entries that
// made layers keep to n-1 (n layers in all), when the history's non-empty
// entries match the layers.
func squashHistory(h []v1.History, n, keep int) []v1.History {
	h = slices.Clone(h)
	var made []int // indexes of the entries that made layers
	for i := range h {
		if !h[i].EmptyLayer {
			made = append(made, i)
		}
	}
	if len(made) != n {
		return h
	}
	for _, i := range made[keep : n-1] {
		h[i].EmptyLayer = true
	}
	return h
}

// squashResult applies Options.Squash or Options.SquashAll to the result
// of the final stage s: its own layers, or all of them, become one.
func squashResult(ctx context.Context, opts *Options, s *stageRun) (v1.Image, error) {
	keep := 0
	switch {
	case opts.SquashAll:
	case opts.Squash:
		keep = s.baseLayers
	default:
		return s.result, nil
	}
	ls, err := s.result.Layers()
	if err != nil {
		return nil, err
	}
	if n := len(ls) - keep; n > 1 || (keep == 0 && n == 1) {
		s.b.emit(progress.Event{Kind: progress.Log, Stage: s.name,
			Message: fmt.Sprintf("squashing %d layers into one", n)})
	}
	img, err := SquashImage(ctx, opts.Store, s.result, keep, SquashOptions{
		Commit: layers.CommitOptions{
			Compression: opts.Compression,
			Level:       opts.CompressionLevel,
			TarOptions:  layers.TarOptions{SourceDateEpoch: opts.SourceDateEpoch},
		},
		Warn: s.b.warn,
	})
	if err != nil {
		return nil, fmt.Errorf("stage %s: %w", s.name, err)
	}
	return img, nil
}

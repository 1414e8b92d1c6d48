package builder

import (
	"context"
	"path"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/ibuild/ibuild/builder/internal/copier"
)

// workdir runs WORKDIR: a relative path is taken from the current one. The
// directory is created when the image lacks it (owned by the current USER,
// as BuildKit does), which makes a layer; otherwise no layer is made.
func (s *stageRun) workdir(ctx context.Context, c *instructions.WorkdirCommand) error {
	cfg := s.c.imageConfig()
	wd := c.Path
	if !path.IsAbs(wd) {
		cur := cfg.WorkingDir
		if cur == "" {
			cur = "/"
		}
		wd = path.Join(cur, wd)
	}
	wd = path.Clean(wd)
	cfg.WorkingDir = wd
	created, err := s.ensureDir(ctx, wd, cmdText(c))
	if err != nil {
		return err
	}
	if !created {
		s.c.addHistory(cmdText(c))
	}
	return nil
}

// ensureDir makes sure dir exists in the image, committing a layer that
// creates it when it does not. It reports whether it made a layer.
func (s *stageRun) ensureDir(ctx context.Context, dir, createdBy string) (bool, error) {
	rootfs, err := s.c.RootFS(ctx)
	if err != nil {
		return false, err
	}
	resolved, err := copier.ResolveIn(dir, rootfs.Lstat)
	if err != nil {
		return false, err
	}
	if fi, _, err := rootfs.Lstat(resolved); err == nil && fi.IsDir() {
		return false, nil
	}
	o := copier.Owner{}
	if u := s.c.imageConfig().User; u != "" {
		if o, err = copier.ResolveOwner(u, rootfs); err != nil {
			return false, err
		}
	}
	tmp, err := s.b.opts.Store.TempDir("layer-")
	if err != nil {
		return false, err
	}
	l := copier.NewLayerDir(tmp, rootfs, copier.StepTime(s.b.opts.SourceDateEpoch))
	if _, err := l.MkdirAll(resolved, o); err != nil {
		return false, err
	}
	if err := l.Finish(); err != nil {
		return false, err
	}
	desc, err := s.c.addLayerDir(ctx, tmp, createdBy)
	if err != nil {
		return false, err
	}
	s.layerSize = desc.ReportedSize()
	return true, nil
}

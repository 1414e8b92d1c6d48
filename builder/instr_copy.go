package builder

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/patternmatcher"

	"github.com/ibuild/ibuild/builder/internal/copier"
	"github.com/ibuild/ibuild/layers"
)

// copyCmd runs COPY: files from the build context, a stage (--from=name or
// index) or an image (--from=ref) into a new layer.
func (s *stageRun) copyCmd(ctx context.Context, c *instructions.CopyCommand) error {
	spec := &copier.Spec{Instr: "COPY", Link: c.Link, Parents: c.Parents}
	if err := s.fillSpec(ctx, spec, &c.SourcesAndDest, c.Chown, c.Chmod, c.ExcludePatterns); err != nil {
		return err
	}
	if c.From != "" {
		from, err := s.b.exp.Word(c.From, s.view())
		if err != nil {
			return err
		}
		src, name, err := s.fromSource(ctx, from)
		if err != nil {
			return err
		}
		spec.From, spec.FromName = src, name
	}
	return s.commitCopy(ctx, spec, cmdText(c))
}

// fillSpec fills the parts COPY and ADD share.
func (s *stageRun) fillSpec(ctx context.Context, spec *copier.Spec, sd *instructions.SourcesAndDest, chown, chmod string, exclude []string) error {
	spec.From, spec.FromName = s.b.ctx, "build context"
	spec.Srcs = append([]string(nil), sd.SourcePaths...)
	for _, sc := range sd.SourceContents {
		spec.Inline = append(spec.Inline, copier.InlineFile{Name: path.Base(sc.Path), Data: sc.Data})
	}
	if len(spec.Srcs)+len(spec.Inline) == 0 {
		return fmt.Errorf("%s needs at least one source", spec.Instr)
	}
	dest := sd.DestPath
	if dest == "" {
		// BuildKit: an empty destination (say, a variable that expands
		// to nothing) is the working directory.
		dest = "./"
	}
	wd := s.c.imageConfig().WorkingDir
	if s.platform.OS == "windows" {
		dest, wd = windowsPath(dest), windowsPath(wd)
	}
	if !path.IsAbs(dest) {
		if wd == "" {
			wd = "/"
		}
		trailing := strings.HasSuffix(dest, "/") || dest == "." || strings.HasSuffix(dest, "/.")
		dest = path.Join(wd, dest)
		if trailing {
			dest += "/"
		}
	}
	if dest != "/" && strings.HasSuffix(dest, "/.") {
		dest = strings.TrimSuffix(dest, ".")
	}
	spec.Dest = dest
	mode, err := copier.ParseChmod(chmod)
	if err != nil {
		return err
	}
	spec.Chmod = mode
	if chown != "" {
		var files copier.FileReader
		if rootfs, err := s.c.RootFS(ctx); err == nil {
			files = rootfs
		} else {
			return err
		}
		o, err := copier.ResolveOwner(chown, files)
		if err != nil {
			return fmt.Errorf("--chown=%s: %w", chown, err)
		}
		spec.Chown = &o
	}
	if len(exclude) > 0 {
		pm, err := patternmatcher.New(exclude)
		if err != nil {
			return fmt.Errorf("--exclude: %w", err)
		}
		spec.Exclude = pm
	}
	return nil
}

// fromSource is the tree of a stage (by name or index) or of an image.
func (s *stageRun) fromSource(ctx context.Context, from string) (copier.Source, string, error) {
	if nc := s.b.treeContext(from); nc != nil {
		return nc.tree, "context " + nc.name, nil
	}
	if i, ok := s.b.stageRef(from); ok {
		if i == s.index {
			return nil, "", fmt.Errorf("--from=%s refers to the stage itself", from)
		}
		dep := s.b.stages[i]
		rootfs, err := dep.RootFS(ctx)
		if err != nil {
			return nil, "", err
		}
		return &imageFS{rootfs}, "stage " + dep.name, nil
	}
	if s.b.containers != nil {
		if st, err := InspectContainer(s.b.containers, from); err == nil {
			c, err := st.container(s.b.containers)
			if err != nil {
				return nil, "", err
			}
			rootfs, err := c.RootFS(ctx)
			if err != nil {
				return nil, "", err
			}
			return &imageFS{rootfs}, "container " + from, nil
		}
	}
	src, err := s.b.imageSource(ctx, from, s.platform)
	if err != nil {
		return nil, "", fmt.Errorf("--from=%s: %w", from, err)
	}
	return src, "image " + from, nil
}

// commitCopy performs spec into a new layer and commits it.
func (s *stageRun) commitCopy(ctx context.Context, spec *copier.Spec, createdBy string) error {
	var base *layers.RootFS
	if !spec.Link {
		rootfs, err := s.c.RootFS(ctx)
		if err != nil {
			return err
		}
		base = rootfs
	}
	tmp, err := s.b.opts.Store.TempDir("layer-")
	if err != nil {
		return err
	}
	l := copier.NewLayerDir(tmp, base, copier.StepTime(s.b.opts.SourceDateEpoch))
	l.Epoch = s.b.opts.SourceDateEpoch
	if spec.Extract == nil {
		spec.Extract = func(ctx context.Context, l *copier.LayerDir, host, dir string, o *copier.Owner) error {
			return copier.ExtractArchive(ctx, l, host, dir, o, s.b.warn)
		}
	}
	if err := copier.Copy(ctx, l, spec); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	desc, err := s.c.addLayerDir(ctx, tmp, createdBy)
	if err != nil {
		return err
	}
	s.layerSize = desc.ReportedSize()
	return nil
}

// imageFS is a read-only image root filesystem as a COPY source.
type imageFS struct {
	r *layers.RootFS
}

func (i *imageFS) Lstat(p string) (fs.FileInfo, string, error) { return i.r.Lstat(p) }
func (i *imageFS) ReadDir(p string) ([]fs.DirEntry, error)     { return i.r.ReadDir(p) }
func (i *imageFS) Resolve(p string) (string, error)            { return i.r.Resolve(p) }
func (i *imageFS) FromContext() bool                           { return false }

// Immutable reports whether the image's files never change, so a copy
// may hard-link them.
func (i *imageFS) Immutable() bool { return i.r.Immutable() }

// windowsPath is a Windows image path as BuildKit resolves it in the
// image's file system: backslashes are separators and the system drive
// letter is dropped (`C:\app` is /app).
func windowsPath(p string) string {
	p = strings.ReplaceAll(p, `\`, "/")
	if len(p) >= 2 && p[1] == ':' && (p[0] == 'c' || p[0] == 'C') {
		p = p[2:]
	}
	return p
}

package builder

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/builder/sandbox"
	"github.com/ibuild/ibuild/layers"
)

// The three ways a RUN step runs (over an overlay, over the unpacked root
// with full isolation, and with --isolation none) share what is here: the
// command, the user, the mounts, running it, and committing an index diff.

// setCommand fills the step's command, standard input and user (resolved
// in files, the image's tree).
func (s *stageRun) setCommand(c *instructions.RunCommand, spec *sandbox.Spec, files fileReader) error {
	spec.Args, spec.Stdin = s.runArgs(c)
	if u := s.c.imageConfig().User; u != "" {
		var err error
		if spec.UID, spec.GID, spec.Groups, err = resolveRunUser(u, files); err != nil {
			return fmt.Errorf("USER %s: %w", u, err)
		}
	}
	return nil
}

// planMounts adds the generated files, the sandbox's special directories
// and the step's RUN --mount mounts to spec, and returns every mount point
// the step needs. close releases what the mounts hold (cache locks, secret
// files); it is never nil.
func (s *stageRun) planMounts(ctx context.Context, c *instructions.RunCommand, spec *sandbox.Spec, rootfs *layers.RootFS, tmp string) (points []mountPointSpec, close func(), err error) {
	files := filepath.Join(tmp, "files")
	if err := mkdirOnce(files); err != nil {
		return nil, func() {}, err
	}
	if err := writeGeneratedFiles(files, spec.Files); err != nil {
		return nil, func() {}, err
	}
	for _, p := range generatedFiles {
		points = append(points, mountPointSpec{path: p})
	}
	for _, p := range mountDirs {
		points = append(points, mountPointSpec{path: p, dir: true})
	}
	ms := instructions.GetMounts(c)
	if len(ms) == 0 {
		return points, func() {}, nil
	}
	rm, err := s.prepareMounts(ctx, ms, rootfs, tmp)
	if err != nil {
		return nil, func() {}, err
	}
	spec.Mounts = rm.mounts
	spec.Env = append(spec.Env, rm.env...)
	return append(points, rm.points...), rm.close, nil
}

// runSandbox runs the step, streaming its output as progress, and words a
// failure with the stage, the step, the command and its exit code.
func (s *stageRun) runSandbox(ctx context.Context, c *instructions.RunCommand, spec sandbox.Spec) error {
	err := sandbox.Run(ctx, spec, func(line string) {
		s.emit(progress.Event{Kind: progress.Log, Instruction: cmdText(c), Message: line})
	})
	var ee *sandbox.ExitError
	if err == nil || !errors.As(err, &ee) {
		return err
	}
	hint := ""
	if sandbox.SingleIDMapped() {
		hint = " (this user namespace maps a single uid and gid, so chown to any other id fails: give the user a range in /etc/subuid and /etc/subgid)"
	}
	return fmt.Errorf("stage %s, step %d/%d: command %q failed%s: %w", s.name, s.step, s.steps, strings.Join(spec.Args, " "), hint, err)
}

// commitChanges makes the layer of a step run over the unpacked root:
// none when nothing changed, else the changes laid out as an overlay upper
// directory, so the tar is the one the overlay path writes.
func (s *stageRun) commitChanges(ctx context.Context, c *instructions.RunCommand, root string, changes *layers.TreeChanges, tmp string) error {
	if changes.Empty() {
		s.c.addHistory(cmdText(c))
		return nil
	}
	upper := filepath.Join(tmp, "changes")
	if err := layers.WriteChangesDir(ctx, root, changes, upper); err != nil {
		return err
	}
	desc, err := s.c.addLayerDir(ctx, upper, cmdText(c))
	if err != nil {
		return stepCreated(err)
	}
	// The directory already holds what the layer holds.
	s.c.syncedUnpacked()
	s.layerSize = desc.Size
	return nil
}

// mkdirOnce makes dir unless it exists.
func mkdirOnce(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return nil
}

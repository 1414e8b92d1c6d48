package builder

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/ibuild/ibuild/builder/internal/copier"
	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/builder/sandbox"
	"github.com/ibuild/ibuild/layers"
)

// The three ways a RUN step runs (over an overlay, over the unpacked root
// with full isolation, and with --isolation none) share what is here: the
// command, the user, the mounts, running it, and committing an index diff.

// setCommand fills the step's command, standard input and user (resolved
// in files, the image's tree), and gives the step a HOME when the
// environment has none.
func (s *stageRun) setCommand(c *instructions.RunCommand, spec *sandbox.Spec, files copier.FileReader) error {
	spec.Args, spec.Stdin = s.runArgs(c)
	caps, err := s.b.opts.capabilities()
	if err != nil {
		return err
	}
	spec.Capabilities = caps
	if instructions.GetSecurity(c) == instructions.SecurityInsecure {
		if !s.b.opts.AllowInsecure {
			return &EntitlementError{Name: "security.insecure", Step: "RUN --security=insecure", Option: "AllowInsecure"}
		}
		spec.Insecure = true
	}
	// Without USER the step runs as uid 0, with root's supplementary
	// groups from /etc/group, as with BuildKit.
	u := s.c.imageConfig().User
	if u == "" {
		u = "0"
	}
	if spec.UID, spec.GID, spec.Groups, err = resolveRunUser(u, files); err != nil {
		return fmt.Errorf("USER %s: %w", u, err)
	}
	spec.Env = withHome(spec.Env, spec.UID, files)
	return nil
}

// withHome returns env with HOME set as docker's runtime (runc) sets it
// for a step: an ENV or ARG HOME that is not empty is kept; otherwise HOME
// is the home directory of the first /etc/passwd entry of the step's uid
// (as written there, even empty), or "/" when the image has no such entry
// or no /etc/passwd. It is never written to the image config.
func withHome(env []string, uid uint32, files copier.FileReader) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if k == "HOME" {
			if v != "" {
				return env
			}
			continue // an empty HOME is replaced, as runc does
		}
		out = append(out, kv)
	}
	home := "/"
	if e, ok := copier.LookupPasswd(files, "", int(uid)); ok {
		home = e.Home
	}
	return append(out, "HOME="+home)
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
	spec.Files, spec.FilesDir = generatedFileContent(), files
	for _, p := range generatedFiles {
		points = append(points, mountPointSpec{path: p})
	}
	for _, p := range mountDirs {
		points = append(points, mountPointSpec{path: p, dir: true})
	}
	if name, data, ok := shebangHeredoc(c); ok {
		script := filepath.Join(tmp, "heredoc-script")
		if err := os.WriteFile(script, []byte(data), 0o755); err != nil {
			return nil, func() {}, err
		}
		if err := os.Chmod(script, 0o755); err != nil {
			return nil, func() {}, err
		}
		spec.Mounts = append(spec.Mounts, sandbox.Mount{Type: sandbox.MountBind, Source: script, Target: path.Join(heredocScriptDir, name), File: true, ReadOnly: true})
	}
	ms := instructions.GetMounts(c)
	if len(ms) == 0 {
		return points, func() {}, nil
	}
	user := copier.Owner{UID: int(spec.UID), GID: int(spec.GID)}
	rm, err := s.prepareMounts(ctx, ms, s.b.df.RunMountExtras(c), user, rootfs, tmp)
	if err != nil {
		return nil, func() {}, err
	}
	spec.Mounts = append(spec.Mounts, rm.mounts...)
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
	desc, err := s.c.addLinkedLayerDir(ctx, upper, cmdText(c))
	if err != nil {
		return stepCreated(err)
	}
	// The directory already holds what the layer holds.
	s.c.syncedUnpacked()
	s.layerSize = desc.ReportedSize()
	return nil
}

// mkdirOnce makes dir unless it exists.
func mkdirOnce(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return nil
}

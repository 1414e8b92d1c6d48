package builder

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"golang.org/x/sys/unix"

	"github.com/ibuild/ibuild/builder/sandbox"
	"github.com/ibuild/ibuild/layers"
)

// chooseIsolation resolves IsolationAuto: root without CAP_SYS_ADMIN can
// make neither mounts nor namespaces, so its steps run with
// IsolationNone. The reason is "" when nothing was substituted.
func chooseIsolation(isolation Isolation) (Isolation, string) {
	if isolation == IsolationAuto && os.Geteuid() == 0 && !sandbox.CanMount() {
		return IsolationNone, "no CAP_SYS_ADMIN: no mount nor namespace can be made"
	}
	return isolation, ""
}

// runNone runs a RUN step with IsolationNone: chrooted into the stage's
// unpacked root file system, its changes found by comparing metadata
// indexes taken before and after it.
func (s *stageRun) runNone(ctx context.Context, c *instructions.RunCommand, network Network) error {
	if len(instructions.GetMounts(c)) > 0 {
		return errors.New("RUN --mount needs mounts, which isolation none (IsolationNone) does not make")
	}
	if network == NetworkNone {
		return errors.New("network none (NetworkNone) needs a network namespace, which isolation none (IsolationNone) does not make")
	}
	root, err := s.c.unpackedRoot(ctx)
	if err != nil {
		return err
	}
	spec := sandbox.Spec{
		Merged: root, Env: s.runEnv(), Dir: s.c.imageConfig().WorkingDir,
		Network: network, Isolation: IsolationNone,
	}
	if err := s.setCommand(c, &spec, layers.NewRootFS([]string{root})); err != nil {
		return err
	}
	gen, err := placeGeneratedFiles(root)
	if err != nil {
		return err
	}
	defer gen.remove()
	before, err := layers.IndexTree(ctx, root)
	if err != nil {
		return err
	}
	// Nothing is mounted on them here, but the /proc, /dev and /sys the
	// image lacks land in the layer as with the other isolations (and
	// docker build): see mountDirs.
	var dirs []mountPointSpec
	for _, p := range mountDirs {
		dirs = append(dirs, mountPointSpec{path: p, dir: true})
	}
	if _, err := makeMountPoints(root, dirs); err != nil {
		return err
	}
	if err := s.runSandbox(ctx, c, spec); err != nil {
		return err
	}
	changes, _, err := layers.DiffTree(ctx, before, gen.paths)
	if err != nil {
		return err
	}
	gen.keepTimes()
	tmp, err := s.b.opts.Store.TempDir("run-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	return s.commitChanges(ctx, c, root, changes, tmp)
}

// generated are the generated files a step with IsolationNone sees,
// written as plain files where the image has none (nothing can be bound
// over the image's own) and removed after the step; they never reach a
// layer. Their directory's times are put back.
type generated struct {
	root  string
	paths []string // slash paths relative to root
	// etc is /etc's times before the files were made and right after.
	etcBefore, etcMade [2]unix.Timespec
	etcAfter           *[2]unix.Timespec
}

// placeGeneratedFiles writes /etc/hosts and /etc/resolv.conf into root
// where absent. Nothing is made when /etc is
// not a directory.
func placeGeneratedFiles(root string) (*generated, error) {
	g := &generated{root: root}
	etc := filepath.Join(root, "etc")
	var st unix.Stat_t
	if err := unix.Lstat(etc, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return g, nil
	}
	g.etcBefore = [2]unix.Timespec{st.Atim, st.Mtim}
	content := generatedFileContent()
	for _, p := range generatedFiles {
		target := filepath.Join(root, filepath.FromSlash(p))
		if _, err := os.Lstat(target); err == nil {
			continue
		}
		if err := os.WriteFile(target, []byte(content[p]), 0o644); err != nil {
			g.remove()
			return nil, err
		}
		g.paths = append(g.paths, strings.TrimPrefix(p, "/"))
	}
	if err := unix.Lstat(etc, &st); err == nil {
		g.etcMade = [2]unix.Timespec{st.Atim, st.Mtim}
	}
	return g, nil
}

// keepTimes records /etc's times after the step: if the step changed
// /etc, they are what remove puts back.
func (g *generated) keepTimes() {
	var st unix.Stat_t
	if len(g.paths) == 0 || unix.Lstat(filepath.Join(g.root, "etc"), &st) != nil {
		return
	}
	if st.Mtim != g.etcMade[1] {
		g.etcAfter = &[2]unix.Timespec{st.Atim, st.Mtim}
	}
}

// remove deletes the files placeGeneratedFiles made and restores /etc's
// times.
func (g *generated) remove() {
	if len(g.paths) == 0 {
		return
	}
	for _, p := range g.paths {
		os.RemoveAll(filepath.Join(g.root, filepath.FromSlash(p)))
	}
	ts := g.etcBefore
	if g.etcAfter != nil {
		ts = *g.etcAfter
	}
	unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(g.root, "etc"), ts[:], unix.AT_SYMLINK_NOFOLLOW)
	g.paths = nil
}

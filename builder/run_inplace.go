package builder

import (
	"context"
	"errors"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"golang.org/x/sys/unix"

	"github.com/ibuild/ibuild/builder/sandbox"
	"github.com/ibuild/ibuild/layers"
)

// runInPlace runs a RUN step with full isolation over the stage's
// unpacked root file system instead of an overlay: the vfs fallback,
// where overlay cannot be mounted. The sandbox mounts /proc, /dev, /sys,
// the generated files and the RUN --mount mounts on mount points made
// here beforehand, so the metadata index taken before the step already
// holds them; what the step changed is the index diff, and the mount
// points are removed afterwards unless the step made them its own. The
// /proc, /dev and /sys mount points are made after the index, so those
// the image lacked stay in the layer (see mountDirs).
func (s *stageRun) runInPlace(ctx context.Context, c *instructions.RunCommand, network Network, isolation Isolation) error {
	rootfs, err := s.c.RootFS(ctx)
	if err != nil {
		return err
	}
	root, err := s.c.unpackedRoot(ctx)
	if err != nil {
		return err
	}
	tmp, err := s.b.opts.Store.TempDir("run-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	spec := sandbox.Spec{
		Merged: root, Env: s.runEnv(), Dir: s.c.imageConfig().WorkingDir, Hostname: sandboxHostname,
		Network: network, Isolation: isolation,
	}
	if err := s.setCommand(c, &spec, layers.NewRootFS([]string{root})); err != nil {
		return err
	}
	points, release, err := s.planMounts(ctx, c, &spec, rootfs, tmp)
	defer release()
	if err != nil {
		return err
	}
	// /proc, /dev and /sys are made after the index, so that those the
	// image lacked land in the layer as they do on an overlay.
	var temporary, persistent []mountPointSpec
	for _, pt := range points {
		if persistentPoint(pt.path) {
			persistent = append(persistent, pt)
		} else {
			temporary = append(temporary, pt)
		}
	}
	made, err := makeMountPoints(root, temporary)
	defer made.remove(nil)
	if err != nil {
		return err
	}
	before, err := layers.IndexTree(ctx, root)
	if err != nil {
		return err
	}
	if _, err := makeMountPoints(root, persistent); err != nil {
		return err
	}
	made.snapshotTimes()
	if err := s.runSandbox(ctx, c, spec); err != nil {
		return err
	}
	changes, _, err := layers.DiffTree(ctx, before, nil)
	if err != nil {
		return err
	}
	// The mount points the step left alone go; what the layer holds stays.
	made.remove(changes.Paths)
	return s.commitChanges(ctx, c, root, changes, tmp)
}

// madePoints are the mount points makeMountPoints created in an unpacked
// root, and the times of the existing directories they were made in.
type madePoints struct {
	root    string
	created []string // slash paths relative to root, parents first
	// parents are existing directories that received a created path:
	// their times before, right before the step, and after it.
	parents map[string]*parentTimes
	done    bool
}

type parentTimes struct {
	before, made [2]unix.Timespec
}

// makeMountPoints creates in root the mount points of points that are
// missing (and their missing parents) as the sandbox would: directories
// 0755, files empty 0644, owned by root. A symlink, or a file where a
// directory is needed, ends a point's walk: the sandbox skips it too.
func makeMountPoints(root string, points []mountPointSpec) (*madePoints, error) {
	m := &madePoints{root: root, parents: map[string]*parentTimes{}}
	for _, pt := range points {
		comps := strings.Split(strings.Trim(path.Clean(pt.path), "/"), "/")
		cur := ""
		for i, comp := range comps {
			parent := cur
			cur = path.Join(cur, comp)
			last := i == len(comps)-1
			full := filepath.Join(root, filepath.FromSlash(cur))
			var st unix.Stat_t
			err := unix.Lstat(full, &st)
			if err == nil {
				isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
				if st.Mode&unix.S_IFMT == unix.S_IFLNK || (!last && !isDir) || (last && isDir != pt.dir) {
					break
				}
				continue
			}
			if !errors.Is(err, unix.ENOENT) {
				return m, err
			}
			if !slices.Contains(m.created, parent) {
				if _, ok := m.parents[parent]; !ok {
					var ps unix.Stat_t
					if err := unix.Lstat(filepath.Join(root, filepath.FromSlash(parent)), &ps); err != nil {
						return m, err
					}
					m.parents[parent] = &parentTimes{before: [2]unix.Timespec{ps.Atim, ps.Mtim}}
				}
			}
			if last && !pt.dir {
				if err := os.WriteFile(full, nil, 0o644); err != nil {
					return m, err
				}
				m.created = append(m.created, cur)
				if err := os.Chmod(full, 0o644); err != nil {
					return m, err
				}
				break
			}
			if err := os.Mkdir(full, 0o755); err != nil {
				return m, err
			}
			m.created = append(m.created, cur)
			if err := os.Chmod(full, 0o755); err != nil {
				return m, err
			}
		}
	}
	return m, nil
}

// snapshotTimes records the parents' times once the mount points exist.
func (m *madePoints) snapshotTimes() {
	for p, t := range m.parents {
		var st unix.Stat_t
		if unix.Lstat(filepath.Join(m.root, filepath.FromSlash(p)), &st) == nil {
			t.made = [2]unix.Timespec{st.Atim, st.Mtim}
		}
	}
}

// remove deletes the created mount points, deepest first, except those
// in keep (paths a layer holds) and directories the step filled; it puts
// back the times of parents the step did not change. Only the first call
// does anything.
func (m *madePoints) remove(keep []string) {
	if m == nil || m.done {
		return
	}
	m.done = true
	after := map[string][2]unix.Timespec{}
	for p := range m.parents {
		var st unix.Stat_t
		if unix.Lstat(filepath.Join(m.root, filepath.FromSlash(p)), &st) == nil {
			after[p] = [2]unix.Timespec{st.Atim, st.Mtim}
		}
	}
	kept := map[string]bool{}
	for _, p := range keep {
		kept[p] = true
	}
	created := slices.Clone(m.created)
	slices.SortStableFunc(created, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, p := range created {
		if kept[p] {
			continue
		}
		// A directory the step filled is in keep; failing to remove one
		// that is not leaves the root as the sandbox made it.
		os.Remove(filepath.Join(m.root, filepath.FromSlash(p)))
	}
	for p, t := range m.parents {
		ts := t.before
		if a, ok := after[p]; ok && a[1] != t.made[1] {
			ts = a // the step changed it: its times are the step's
		}
		unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(m.root, filepath.FromSlash(p)), ts[:], unix.AT_SYMLINK_NOFOLLOW)
	}
}

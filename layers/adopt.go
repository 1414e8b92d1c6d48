package layers

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	digest "github.com/opencontainers/go-digest"
	"go.podman.io/storage"
	graphdriver "go.podman.io/storage/drivers"
	"go.podman.io/storage/pkg/archive"
	"go.podman.io/storage/pkg/unshare"
	"golang.org/x/sys/unix"
)

// AdoptSnapshot makes dir, the directory a layer was just committed from
// (overlay upper-dir format: overlay whiteouts and opaque directories),
// the snapshot of that layer, so that a later step needs no extraction of
// the blob it was committed to: the directory's entries are moved, not
// copied. diffIDs are the image's layers up to and including this one;
// epoch is the commit's SOURCE_DATE_EPOCH, whose clamping of mtimes is
// applied to the directory so that it equals what extracting the layer
// would give. It reports false, leaving dir alone, when the snapshot
// already exists, when the layer below has no snapshot, or when the
// snapshotter cannot take a directory (vfs, or overlay without root
// privileges, whose whiteout format differs); the caller then removes dir.
func (s *Store) AdoptSnapshot(ctx context.Context, dir string, diffIDs []v1.Hash, size int64, epoch *time.Time) (bool, error) {
	res, err := s.adopt(ctx, dir, diffIDs, size, epoch)
	return res == adoptDone, err
}

// adoptResult says what adopt did with a directory.
type adoptResult int

const (
	// adoptRefused: the snapshotter cannot take the directory (or the
	// layer below has no snapshot); it is left alone.
	adoptRefused adoptResult = iota
	// adoptDone: the directory became the snapshot.
	adoptDone
	// adoptExists: the snapshot existed already (same chain, so the same
	// content); the directory is left alone.
	adoptExists
)

// canAdopt reports whether a directory committed on top of the layers
// below can become its layer's snapshot.
func (s *Store) canAdopt(below []v1.Hash) bool {
	if s.snapshotter == SnapshotterNative {
		return true
	}
	st, err := s.containerStorage(true)
	if err != nil {
		return false
	}
	s.cs.mu.Lock()
	driver := s.cs.driver
	s.cs.mu.Unlock()
	if driver != SnapshotterOverlay || os.Geteuid() != 0 || unshare.IsRootless() {
		return false
	}
	if len(below) == 0 {
		return true
	}
	chains := ChainIDs(below)
	_, err = st.Layer(chains[len(chains)-1].Hex)
	return err == nil
}

func (s *Store) adopt(ctx context.Context, dir string, diffIDs []v1.Hash, size int64, epoch *time.Time) (adoptResult, error) {
	if len(diffIDs) == 0 {
		return adoptRefused, nil
	}
	unlock, err := s.Lock(ctx, false)
	if err != nil {
		return adoptRefused, err
	}
	defer unlock()
	chains := ChainIDs(diffIDs)
	chain := chains[len(chains)-1]
	diffID := diffIDs[len(diffIDs)-1]
	if !validHash(chain) || !validHash(diffID) {
		return adoptRefused, fmt.Errorf("adopt snapshot: invalid diff ID %q", diffID)
	}
	if s.snapshotter == SnapshotterNative {
		return s.adoptNative(ctx, dir, chain, epoch)
	}
	st, err := s.containerStorage(true)
	if err != nil {
		return adoptRefused, fmt.Errorf("adopt snapshot: %w", err)
	}
	s.cs.mu.Lock()
	driver := s.cs.driver
	s.cs.mu.Unlock()
	if driver != SnapshotterOverlay || os.Geteuid() != 0 || unshare.IsRootless() {
		return adoptRefused, nil
	}
	parent := ""
	if len(chains) > 1 {
		parent = chains[len(chains)-2].Hex
		if _, err := st.Layer(parent); err != nil {
			return adoptRefused, nil
		}
	}
	lockPath := s.snapshotDir(chain) + ".lock"
	if _, err := st.Layer(chain.Hex); err == nil {
		return adoptExists, nil
	}
	unlockSnap, err := LockFile(ctx, lockPath, true)
	if err != nil {
		return adoptRefused, err
	}
	defer unlockSnap()
	touchNow(lockPath)
	if _, err := st.Layer(chain.Hex); err == nil {
		return adoptExists, nil
	}
	if err := normalizeSnapshotDir(dir, epoch); err != nil {
		return adoptRefused, fmt.Errorf("adopt snapshot: %w", err)
	}
	d := &dirDiffer{src: dir, diffID: diffID, size: size}
	opts := &graphdriver.ApplyDiffWithDifferOpts{}
	out, err := st.PrepareStagedLayer(opts, d)
	if err != nil {
		if out != nil {
			_ = st.CleanupStagedLayer(out)
		}
		if d.moved {
			return adoptRefused, fmt.Errorf("adopt snapshot: %w", err)
		}
		return adoptRefused, nil
	}
	if _, err := st.ApplyStagedLayer(storage.ApplyStagedLayerOptions{
		ID: chain.Hex, ParentLayer: parent, DiffOutput: out, DiffOptions: opts,
	}); err != nil {
		_ = st.CleanupStagedLayer(out)
		if errors.Is(err, storage.ErrDuplicateID) {
			return adoptExists, nil
		}
		return adoptRefused, fmt.Errorf("adopt snapshot: %w", err)
	}
	return adoptDone, nil
}

// adoptNative renames dir to the native snapshot of chain.
func (s *Store) adoptNative(ctx context.Context, dir string, chain v1.Hash, epoch *time.Time) (adoptResult, error) {
	target := s.snapshotDir(chain)
	if isRealDir(target) {
		return adoptExists, nil
	}
	lockPath := target + ".lock"
	unlock, err := LockFile(ctx, lockPath, true)
	if err != nil {
		return adoptRefused, err
	}
	defer unlock()
	touchNow(lockPath)
	if isRealDir(target) {
		return adoptExists, nil
	}
	if err := normalizeSnapshotDir(dir, epoch); err != nil {
		return adoptRefused, fmt.Errorf("adopt snapshot: %w", err)
	}
	if err := os.Rename(dir, target); err != nil {
		return adoptRefused, fmt.Errorf("adopt snapshot: %w", err)
	}
	syncDir(filepath.Dir(target))
	return adoptDone, nil
}

// normalizeSnapshotDir makes dir what extracting its tar would give: the
// root 0755 (the tar has no entry for it), no sockets (a tar cannot hold
// them), and mtimes clamped to epoch.
func normalizeSnapshotDir(dir string, epoch *time.Time) error {
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	var clamp int64
	if epoch != nil {
		clamp = epoch.Unix()
	}
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSocket != 0 {
			return removeKeepingParentTimes(p)
		}
		if epoch == nil || p == dir {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if st.Mtim.Sec < clamp || (st.Mtim.Sec == clamp && st.Mtim.Nsec == 0) {
			return nil
		}
		if d.IsDir() {
			dirs = append(dirs, p) // after its children, which change its mtime
			return nil
		}
		return clampTimes(p, clamp)
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := clampTimes(dirs[i], clamp); err != nil {
			return err
		}
	}
	return nil
}

func clampTimes(p string, sec int64) error {
	ts := []unix.Timespec{{Sec: sec}, {Sec: sec}}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// dirDiffer is a containers/storage Differ that "applies" a layer by
// moving the entries of an already written directory into the staging
// directory.
type dirDiffer struct {
	src    string
	diffID v1.Hash
	size   int64
	moved  bool
}

func (d *dirDiffer) ApplyDiff(dest string, _ *archive.TarOptions, _ *graphdriver.DifferOptions) (graphdriver.DriverWithDifferOutput, error) {
	out := graphdriver.DriverWithDifferOutput{
		Size:               d.size,
		UncompressedDigest: digest.Digest(d.diffID.String()),
	}
	ents, err := os.ReadDir(d.src)
	if err != nil {
		return out, err
	}
	if err := os.Chmod(dest, 0o755); err != nil {
		return out, err
	}
	for _, e := range ents {
		d.moved = true
		if err := os.Rename(filepath.Join(d.src, e.Name()), filepath.Join(dest, e.Name())); err != nil {
			return out, err
		}
	}
	mode := os.FileMode(0o755)
	out.RootDirMode = &mode
	return out, nil
}

func (d *dirDiffer) Close() error { return nil }

// removeKeepingParentTimes removes p without changing its directory's
// mtime.
func removeKeepingParentTimes(p string) error {
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Dir(p), &st); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		return err
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	return unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Dir(p), ts, unix.AT_SYMLINK_NOFOLLOW)
}

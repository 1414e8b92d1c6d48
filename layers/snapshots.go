package layers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ChainIDs returns the OCI chain ID of every layer: the first is its diffID,
// each next one is sha256 of "<previous chain ID> <diffID>". A chain ID
// names a layer together with everything below it.
func ChainIDs(diffIDs []v1.Hash) []v1.Hash {
	out := make([]v1.Hash, len(diffIDs))
	for i, d := range diffIDs {
		if i == 0 {
			out[i] = d
			continue
		}
		sum := sha256.Sum256([]byte(out[i-1].String() + " " + d.String()))
		out[i] = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	}
	return out
}

// Snapshots returns directories whose merged view, bottom to top, is the
// image's root filesystem: pass them to NewRootFS, which understands both
// .wh. markers and overlay whiteouts. Each layer is stored once, keyed by
// its chain ID, and shared by every image with the same layers below and
// including it; the number and layout of the directories depend on the
// snapshotter (see WithSnapshotter):
//
//   - native: one directory per layer, Root/snapshots/<chain ID hex>,
//     holding that layer alone extracted with KeepWhiteouts;
//   - overlay: one directory per layer, the containers/storage layer's diff
//     directory (overlay whiteouts and opaque directories);
//   - vfs: one directory, the top layer's complete tree.
//
// Layers below one whose root directory is opaque are left out: the
// opaque root hides all they hold (see belowOpaqueRoot).
//
// Each layer is created once: callers in any goroutine or process wait on a
// per-layer flock for whoever creates it, and the content is checked
// against the layer's diffID; a killed process never leaves a partial
// snapshot that a later call would use (native snapshots are renamed into
// place when complete; containers/storage discards incomplete layers).
// Snapshots are read-only by convention: callers must not modify them.
// warn receives non-fatal extraction problems (rootless ownership and the
// like); it may be nil.
func (s *Store) Snapshots(ctx context.Context, img v1.Image, warn func(string)) ([]string, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("snapshots: config: %w", err)
	}
	ls, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("snapshots: %w", err)
	}
	diffIDs := cf.RootFS.DiffIDs
	if len(diffIDs) != len(ls) {
		return nil, fmt.Errorf("snapshots: image has %d layers but %d diff IDs", len(ls), len(diffIDs))
	}
	unlock, err := s.Lock(ctx, false)
	if err != nil {
		return nil, err
	}
	defer unlock()
	chains := ChainIDs(diffIDs)
	if s.snapshotter != SnapshotterNative {
		dirs, err := s.csSnapshots(ctx, ls, diffIDs, chains)
		return belowOpaqueRoot(dirs), err
	}
	dirs := make([]string, len(ls))
	for i, l := range ls {
		d, err := s.snapshot(ctx, chains[i], diffIDs[i], l, i, warn)
		if err != nil {
			return nil, err
		}
		dirs[i] = d
	}
	return belowOpaqueRoot(dirs), nil
}

// belowOpaqueRoot drops the layers an opaque root hides: a layer whose
// root directory is opaque (a .wh..wh..opq at the top of its tar) hides
// everything the layers below it hold, as the OCI image spec says. The
// kernel's overlay ignores the opaque mark on a lower layer's root, so
// the hidden layers must not be among the lowers at all; every other
// reader (RootFS, Extract, Flatten, Squash) honours the mark itself and
// sees the same tree.
func belowOpaqueRoot(dirs []string) []string {
	for i := len(dirs) - 1; i > 0; i-- {
		if isOpaqueLayerDir(dirs[i]) {
			return dirs[i:]
		}
	}
	return dirs
}

func (s *Store) snapshotDir(chain v1.Hash) string {
	return filepath.Join(s.root, "snapshots", chain.Hex)
}

func isRealDir(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.IsDir()
}

// snapshot returns the snapshot of one layer, extracting it if needed. The
// caller holds the shared store lock.
func (s *Store) snapshot(ctx context.Context, chain, diffID v1.Hash, l v1.Layer, index int, warn func(string)) (string, error) {
	if !validHash(chain) || !validHash(diffID) {
		return "", fmt.Errorf("snapshot: invalid diff ID %q", diffID)
	}
	dir := s.snapshotDir(chain)
	lockPath := dir + ".lock"
	if isRealDir(dir) {
		// Record the use, for Prune's grace period.
		if err := touchNow(lockPath); errors.Is(err, fs.ErrNotExist) {
			if f, err := os.OpenFile(lockPath, os.O_WRONLY|os.O_CREATE, 0o644); err == nil {
				f.Close()
			}
		}
		return dir, nil
	}
	unlock, err := LockFile(ctx, lockPath, true)
	if err != nil {
		return "", err
	}
	defer unlock()
	touchNow(lockPath)
	if isRealDir(dir) {
		return dir, nil // another caller extracted it while we waited
	}
	src := layerName(l, index)
	tmp, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), "snapshot-"+chain.Hex[:12]+"-")
	if err != nil {
		return "", fmt.Errorf("snapshot %s: %w", src, err)
	}
	done := false
	defer func() {
		if !done {
			forceRemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", fmt.Errorf("snapshot %s: %w", src, err)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		return "", fmt.Errorf("snapshot %s: %w", src, err)
	}
	defer rc.Close()
	h := sha256.New()
	tr := io.TeeReader(rc, h)
	err = Extract(ctx, tr, tmp, ExtractOptions{
		Whiteouts:   KeepWhiteouts,
		Source:      src,
		Rootless:    os.Geteuid() != 0,
		RecordOwner: true,
		Warn:        warn,
	})
	if err != nil {
		return "", fmt.Errorf("snapshot: %w", err) // Extract names src
	}
	// Hash what the tar reader left (end-of-archive padding) too.
	if _, err := io.Copy(io.Discard, tr); err != nil {
		return "", fmt.Errorf("snapshot %s: %w", src, err)
	}
	if got := (v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}); got != diffID {
		return "", fmt.Errorf("snapshot %s: content has diff ID %s, the image config says %s", src, got, diffID)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("snapshot %s: %w", src, err)
	}
	done = true
	syncDir(filepath.Dir(dir))
	return dir, nil
}

// removeSnapshot deletes the snapshot with chain ID hex chainHex and its
// lock file; it reports the bytes freed and whether a snapshot existed.
// The caller holds the exclusive store lock.
func (s *Store) removeSnapshot(chainHex string) (int64, bool, error) {
	dir := filepath.Join(s.root, "snapshots", chainHex)
	var n int64
	removed := false
	if lexists(dir) {
		n = treeSize(dir)
		if err := forceRemoveAll(dir); err != nil {
			return 0, false, fmt.Errorf("remove snapshot %s: %w", chainHex, err)
		}
		removed = true
	}
	if err := os.Remove(dir + ".lock"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return n, removed, fmt.Errorf("remove snapshot %s: %w", chainHex, err)
	}
	return n, removed, nil
}

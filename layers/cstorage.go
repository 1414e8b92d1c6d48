package layers

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.podman.io/storage"
	graphdriver "go.podman.io/storage/drivers"
	"go.podman.io/storage/types"
)

// Snapshotter names accepted by WithSnapshotter.
const (
	// SnapshotterAuto picks containers/storage with the overlay driver when
	// running as root and the kernel and file system support it, vfs when
	// they do not, and SnapshotterNative for unprivileged processes.
	SnapshotterAuto = "auto"
	// SnapshotterOverlay is containers/storage with the overlay driver: one
	// diff directory per layer, overlay whiteouts.
	SnapshotterOverlay = "overlay"
	// SnapshotterVFS is containers/storage with the vfs driver: every layer
	// is a full copy of the tree up to it.
	SnapshotterVFS = "vfs"
	// SnapshotterNative is ibuild's own snapshot directories: each layer
	// extracted alone with its .wh. markers kept.
	SnapshotterNative = "native"
)

// StoreOption configures OpenStore.
type StoreOption func(*storeConfig)

type storeConfig struct {
	snapshotter string
	warn        func(string)
}

// WithWarnings passes OpenStore's non-fatal findings to warn, such as a
// store root other users could enter (which OpenStore tightens).
func WithWarnings(warn func(string)) StoreOption {
	return func(c *storeConfig) { c.warn = warn }
}

// WithSnapshotter selects how Snapshots materializes layers: one of
// SnapshotterAuto (the default), SnapshotterOverlay, SnapshotterVFS or
// SnapshotterNative.
func WithSnapshotter(name string) StoreOption {
	return func(c *storeConfig) { c.snapshotter = name }
}

// resolveSnapshotter turns a requested snapshotter into the one a store
// uses: native, overlay, vfs, or auto (overlay, falling back to vfs), which
// only remains for root (which includes the root of a user namespace: the
// ibuild command re-executes an unprivileged build into one). Other
// unprivileged processes get native snapshots.
func resolveSnapshotter(name string) (string, error) {
	switch name {
	case "", SnapshotterAuto:
		if os.Geteuid() != 0 {
			return SnapshotterNative, nil
		}
		return SnapshotterAuto, nil
	case SnapshotterOverlay, SnapshotterVFS, SnapshotterNative:
		return name, nil
	}
	return "", fmt.Errorf("unknown snapshotter %q (want auto, overlay, vfs or native)", name)
}

// cstorage is the store's lazily opened containers/storage backend.
type cstorage struct {
	mu     sync.Mutex
	store  storage.Store // nil until first use
	driver string        // overlay or vfs, once store is set
}

// Snapshotter is the snapshotter the store uses: "native", "overlay" or
// "vfs", or "auto" while containers/storage has not been opened yet.
func (s *Store) Snapshotter() string {
	s.cs.mu.Lock()
	defer s.cs.mu.Unlock()
	if s.cs.store != nil {
		return s.cs.driver
	}
	return s.snapshotter
}

// ResolvedSnapshotter is the snapshotter the store uses, "native",
// "overlay" or "vfs": while auto is unresolved it opens containers/storage
// (creating it), which settles on overlay or falls back to vfs.
func (s *Store) ResolvedSnapshotter() (string, error) {
	if s.snapshotter == SnapshotterNative {
		return SnapshotterNative, nil
	}
	if _, err := s.containerStorage(true); err != nil {
		return "", err
	}
	return s.Snapshotter(), nil
}

// Close releases the containers/storage backend if Snapshots, Prune or
// Remove opened it. The Store remains usable; a later call reopens it.
func (s *Store) Close() error {
	s.cs.mu.Lock()
	defer s.cs.mu.Unlock()
	if s.cs.store == nil {
		return nil
	}
	_, err := s.cs.store.Shutdown(false)
	s.cs.store = nil
	if err != nil {
		return fmt.Errorf("close storage %s: %w", s.root, err)
	}
	return nil
}

// containerStorage returns the containers/storage backend, opening it on
// first use. With create false it returns nil, nil when the store has
// never created one (so Prune does not create it) or the snapshotter is
// native.
func (s *Store) containerStorage(create bool) (storage.Store, error) {
	s.cs.mu.Lock()
	defer s.cs.mu.Unlock()
	if s.cs.store != nil || s.snapshotter == SnapshotterNative {
		return s.cs.store, nil
	}
	graphRoot := filepath.Join(s.root, "storage")
	if !create && !isRealDir(graphRoot) {
		return nil, nil
	}
	drivers := []string{s.snapshotter}
	if s.snapshotter == SnapshotterAuto {
		drivers = []string{SnapshotterOverlay, SnapshotterVFS}
		// A root that fell back to vfs before keeps using it.
		if isRealDir(filepath.Join(graphRoot, "vfs-layers")) && !isRealDir(filepath.Join(graphRoot, "overlay-layers")) {
			drivers = []string{SnapshotterVFS}
		}
	}
	var errs []error
	for _, d := range drivers {
		opts := types.StoreOptions{
			GraphRoot:       graphRoot,
			RunRoot:         filepath.Join(s.root, "storage-run"),
			GraphDriverName: d,
		}
		if d == SnapshotterOverlay {
			// ibuild never mounts through the driver, so the home needs
			// no private bind mount (which would outlive a killed process).
			opts.GraphDriverOptions = []string{"overlay.skip_mount_home=true"}
		}
		st, err := storage.GetStore(opts)
		if err == nil {
			s.cs.store, s.cs.driver = st, d
			return st, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", d, err))
		if s.snapshotter != SnapshotterAuto || !driverUnsupported(err) {
			break
		}
	}
	return nil, fmt.Errorf("open storage %s: %w", graphRoot, errors.Join(errs...))
}

func driverUnsupported(err error) bool {
	return errors.Is(err, graphdriver.ErrNotSupported) ||
		errors.Is(err, graphdriver.ErrPrerequisites) ||
		errors.Is(err, graphdriver.ErrIncompatibleFS)
}

// csSnapshots is Snapshots on containers/storage: one storage layer per
// chain ID, child of the previous one. The caller holds the shared store
// lock.
func (s *Store) csSnapshots(ctx context.Context, ls []v1.Layer, diffIDs, chains []v1.Hash) ([]string, error) {
	st, err := s.containerStorage(true)
	if err != nil {
		return nil, fmt.Errorf("snapshots: %w", err)
	}
	for i, l := range ls {
		parent := ""
		if i > 0 {
			parent = chains[i-1].Hex
		}
		if err := s.csLayer(ctx, st, chains[i], parent, diffIDs[i], l, i); err != nil {
			return nil, err
		}
	}
	if len(ls) == 0 {
		return nil, nil
	}
	s.cs.mu.Lock()
	driver := s.cs.driver
	s.cs.mu.Unlock()
	if driver == SnapshotterVFS {
		// A vfs layer holds the whole tree up to it.
		dir, err := s.csLayerDir(st, chains[len(chains)-1].Hex)
		if err != nil {
			return nil, fmt.Errorf("snapshots: %w", err)
		}
		return []string{dir}, nil
	}
	dirs := make([]string, len(ls))
	for i := range ls {
		if dirs[i], err = s.csLayerDir(st, chains[i].Hex); err != nil {
			return nil, fmt.Errorf("snapshots: layer %d: %w", i+1, err)
		}
	}
	return dirs, nil
}

// csLayerDir is the directory holding storage layer id's files: for
// overlay its diff directory (its own files, with overlay whiteouts and
// opaque directories), for vfs the whole tree up to it. Neither mounts
// anything: vfs's Get only returns the directory and its Put is a no-op.
func (s *Store) csLayerDir(st storage.Store, id string) (string, error) {
	s.cs.mu.Lock()
	driver := s.cs.driver
	s.cs.mu.Unlock()
	if driver == SnapshotterVFS {
		gd, err := st.GraphDriver()
		if err != nil {
			return "", err
		}
		return gd.Get(id, graphdriver.MountOpts{})
	}
	return st.DifferTarget(id)
}

// sniffRootEntry passes r through and, once it is drained, reports via
// hasRoot whether the tar it carries has an entry for its root directory.
// hasRoot may be called more than once.
func sniffRootEntry(r io.Reader) (_ io.Reader, hasRoot func() bool) {
	pr, pw := io.Pipe()
	found := make(chan bool, 1)
	go func() {
		has := false
		tr := tar.NewReader(pr)
		for {
			hdr, err := tr.Next()
			if err != nil {
				break
			}
			if path.Clean("/"+hdr.Name) == "/" {
				has = true
			}
		}
		io.Copy(io.Discard, pr)
		found <- has
	}()
	var once sync.Once
	var has bool
	return io.TeeReader(r, pw), func() bool {
		once.Do(func() {
			pw.Close()
			has = <-found
		})
		return has
	}
}

// csLayer makes sure the storage layer for chain exists, creating it from
// l. Creations of one chain are serialized by the same per-snapshot lock
// file as native snapshots; its mtime records the last use for Prune.
func (s *Store) csLayer(ctx context.Context, st storage.Store, chain v1.Hash, parent string, diffID v1.Hash, l v1.Layer, index int) error {
	if !validHash(chain) || !validHash(diffID) {
		return fmt.Errorf("snapshot: invalid diff ID %q", diffID)
	}
	src := layerName(l, index)
	check := func(lay *storage.Layer) error {
		if lay.UncompressedDigest.String() != diffID.String() {
			return fmt.Errorf("snapshot %s: stored layer %s has diff ID %s, the image config says %s", src, chain.Hex, lay.UncompressedDigest, diffID)
		}
		return nil
	}
	lockPath := s.snapshotDir(chain) + ".lock"
	if lay, err := st.Layer(chain.Hex); err == nil {
		touchOrCreate(lockPath)
		return check(lay)
	}
	unlock, err := LockFile(ctx, lockPath, true)
	if err != nil {
		return err
	}
	defer unlock()
	touchNow(lockPath)
	if lay, err := st.Layer(chain.Hex); err == nil {
		return check(lay) // another process created it while we waited
	}
	rc, err := l.Uncompressed()
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", src, err)
	}
	defer rc.Close()
	h := sha256.New()
	sniffed, hasRoot := sniffRootEntry(ctxReader{ctx: ctx, r: rc})
	defer hasRoot()
	tr := io.TeeReader(sniffed, h)
	lay, _, err := st.PutLayer(chain.Hex, parent, nil, "", false, &storage.LayerOptions{}, tr)
	if errors.Is(err, storage.ErrDuplicateID) {
		if lay, err = st.Layer(chain.Hex); err == nil {
			return check(lay)
		}
	}
	if err != nil {
		return s.explainUnpack(ctx, l, src, err)
	}
	_, err = io.Copy(io.Discard, tr)
	got := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
	if err == nil && got != diffID {
		err = fmt.Errorf("content has diff ID %s, the image config says %s", got, diffID)
	}
	if err == nil {
		err = check(lay)
	}
	if err == nil && !hasRoot() {
		// Without an entry for "/" the drivers leave the layer's root
		// 0555; native snapshots, and so builds, see 0755.
		var dir string
		if dir, err = s.csLayerDir(st, chain.Hex); err == nil {
			err = os.Chmod(dir, 0o755)
		}
	}
	if err != nil {
		if derr := st.DeleteLayer(chain.Hex); derr != nil {
			err = errors.Join(err, fmt.Errorf("delete bad layer: %w", derr))
		}
		return fmt.Errorf("snapshot %s: %w", src, err)
	}
	return nil
}

// explainUnpack words err, containers/storage's failure to unpack the
// layer l (src names it), with what extracting l alone with Extract says:
// the storage library's messages name no tar entry ("no such file or
// directory" for a hard link to nothing), Extract's name the entry and,
// for a hard link, its target. This runs only after a failure.
func (s *Store) explainUnpack(ctx context.Context, l v1.Layer, src string, err error) error {
	plain := fmt.Errorf("snapshot %s: %w", src, err)
	if ctx.Err() != nil || errors.Is(err, storage.ErrDuplicateID) {
		return plain
	}
	dir, terr := s.TempDir("unpack-check-")
	if terr != nil {
		return plain
	}
	defer forceRemoveAll(dir)
	rc, rerr := l.Uncompressed()
	if rerr != nil {
		return plain
	}
	defer rc.Close()
	xerr := Extract(ctx, rc, dir, ExtractOptions{Whiteouts: KeepWhiteouts, Source: src, Rootless: os.Geteuid() != 0, RecordOwner: true})
	if xerr == nil {
		return plain
	}
	return fmt.Errorf("snapshot: %v (containers/storage: %w)", xerr, err)
}

// touchOrCreate refreshes path's mtime, creating the file if needed.
func touchOrCreate(path string) {
	if err := touchNow(path); err != nil {
		if f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644); err == nil {
			f.Close()
		}
	}
}

// csDelete deletes the storage layers doomed selects, children before
// parents. A doomed layer below a layer that stays is kept. It returns the
// number of layers deleted and their size. The caller holds the exclusive
// store lock.
func (s *Store) csDelete(ctx context.Context, doomed func(storage.Layer) bool) (int, int64, error) {
	st, err := s.containerStorage(false)
	if err != nil || st == nil {
		return 0, 0, err
	}
	all, err := st.Layers()
	if err != nil {
		return 0, 0, fmt.Errorf("storage layers: %w", err)
	}
	byID := map[string]storage.Layer{}
	children := map[string]int{}
	for _, l := range all {
		byID[l.ID] = l
		if l.Parent != "" {
			children[l.Parent]++
		}
	}
	var queue []string
	for _, l := range all {
		if children[l.ID] == 0 && doomed(l) {
			queue = append(queue, l.ID)
		}
	}
	slices.Sort(queue)
	n, size := 0, int64(0)
	for len(queue) > 0 {
		if err := ctx.Err(); err != nil {
			return n, size, err
		}
		id := queue[0]
		queue = queue[1:]
		l := byID[id]
		if err := st.DeleteLayer(id); err != nil {
			return n, size, fmt.Errorf("delete storage layer %s: %w", id, err)
		}
		n++
		size += max(l.UncompressedSize, 0)
		if p, ok := byID[l.Parent]; ok {
			children[p.ID]--
			if children[p.ID] == 0 && doomed(p) {
				queue = append(queue, p.ID)
			}
		}
	}
	return n, size, nil
}

// csPrune deletes storage layers whose chain ID live does not hold and
// that were last used (per-snapshot lock mtime, or creation when there is
// no lock file) before
// cutoff.
func (s *Store) csPrune(ctx context.Context, live *marks, cutoff time.Time) (int, int64, error) {
	return s.csDelete(ctx, func(l storage.Layer) bool {
		h := v1.Hash{Algorithm: "sha256", Hex: l.ID}
		if live.chains[h] {
			return false
		}
		used := l.Created
		if fi, err := os.Lstat(filepath.Join(s.root, "snapshots", l.ID+".lock")); err == nil {
			used = fi.ModTime()
		}
		return used.Before(cutoff)
	})
}

// SnapshotIDs lists the chain IDs that have a snapshot, in the native
// snapshots/ directory or in containers/storage, sorted.
func (s *Store) SnapshotIDs(ctx context.Context) ([]v1.Hash, error) {
	unlock, err := s.Lock(ctx, false)
	if err != nil {
		return nil, err
	}
	defer unlock()
	seen := map[v1.Hash]bool{}
	ents, err := os.ReadDir(filepath.Join(s.root, "snapshots"))
	if err != nil {
		return nil, fmt.Errorf("snapshot IDs: %w", err)
	}
	for _, e := range ents {
		if h := (v1.Hash{Algorithm: "sha256", Hex: e.Name()}); e.IsDir() && validHash(h) {
			seen[h] = true
		}
	}
	st, err := s.containerStorage(false)
	if err != nil {
		return nil, fmt.Errorf("snapshot IDs: %w", err)
	}
	if st != nil {
		ls, err := st.Layers()
		if err != nil {
			return nil, fmt.Errorf("snapshot IDs: %w", err)
		}
		for _, l := range ls {
			if h := (v1.Hash{Algorithm: "sha256", Hex: l.ID}); validHash(h) {
				seen[h] = true
			}
		}
	}
	out := make([]v1.Hash, 0, len(seen))
	for h := range seen {
		out = append(out, h)
	}
	slices.SortFunc(out, func(a, b v1.Hash) int { return strings.Compare(a.Hex, b.Hex) })
	return out, nil
}

package layers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// RefNameAnnotation is the index.json annotation that names an image.
const RefNameAnnotation = "org.opencontainers.image.ref.name"

// ErrNotFound is wrapped by errors about images, names and digests the store
// does not know.
var ErrNotFound = errors.New("image not known")

// PruneGrace is how old an unreferenced blob, snapshot or temporary file must
// be before Prune deletes it. See Store for the locking rule it backs up.
const PruneGrace = 10 * time.Minute

// Store is ibuild's local storage root. The root directory is a valid OCI
// image layout (oci-layout, index.json, blobs/sha256/), so tools such as
// `skopeo inspect oci:ROOT:NAME` and umoci read it directly; index.json holds
// one entry per image name, annotated with RefNameAnnotation. Besides the
// layout it holds:
//
//	snapshots/<chain id hex>/   one extracted directory per layer (native Snapshots)
//	snapshots/<hex>.lock        per-snapshot lock; its mtime is the last use
//	storage/, storage-run/      containers/storage roots (overlay or vfs Snapshots)
//	roots/<name>.json           extra garbage-collection roots (SetRoot)
//	cache/records/<key>.json    build cache records; their layers are roots (CacheGet)
//	cache/layers/<key>.json     layer memos (LayerMemo)
//	cache/<name>/               other cache data (context indexes, step histories; CacheDir)
//	cache/<id>-<hash>[-N]/      RUN --mount=type=cache instances and their .lock files (CacheMountsDir)
//	containers/<name>/          working containers: state.json and lock (ContainersDir)
//	sources/<manifest hex>.json repositories a manifest's blobs can be fetched from (AddSources)
//	tmp/                        temporary files and directories
//	store.lock, index.lock      flock(2) files (also lists.lock, sources.lock: see UpdateList)
//
// Locking rule. store.lock is taken shared by everything that writes or
// starts to reference content (WriteImage, WriteIndex, Snapshots, Tag,
// Untag, SetRoot) and exclusively by what deletes it (Prune, Remove), so
// deletion never overlaps a write. Content is only safe from deletion once
// it is referenced by index.json or a root: a caller that writes blobs and
// tags them later (a build) should hold Lock(ctx, false) from its first
// write until its Tag or SetRoot. As a safety net for writers that do not,
// Prune and the snapshot sweep keep anything modified less than PruneGrace
// before the prune started; WriteImage and Snapshots refresh the mtime of
// every blob and snapshot they reuse, so reused content counts as fresh.
// index.json itself is rewritten (temp, fsync, rename) under an exclusive
// index.lock, so concurrent Tag calls from any number of processes never
// lose an entry. The locks are not reentrant across deletion: a goroutine
// holding a shared Lock must not call Prune or Remove.
//
// Snapshots live either in snapshots/ (the native snapshotter) or in a
// containers/storage store under storage/ and storage-run/ (overlay or vfs
// driver; see WithSnapshotter), which is opened on first use and released
// by Close.
type Store struct {
	root        string
	blobs       *BlobStore
	snapshotter string // native, overlay, vfs or auto (root only)
	cs          cstorage
}

// OpenStore opens the store at root, creating it if needed. Call Close when
// done with it. The root is made StoreMode (0700), as containers/storage
// makes its own: an existing root that other users could enter is
// tightened, and WithWarnings hears about it (or why it could not be).
func OpenStore(ctx context.Context, root string, opts ...StoreOption) (*Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var cfg storeConfig
	for _, o := range opts {
		o(&cfg)
	}
	snap, err := resolveSnapshotter(cfg.snapshotter)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", root, err)
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", root, err)
	}
	if err := makePrivateRoot(abs, cfg.warn); err != nil {
		return nil, fmt.Errorf("open store %s: %w", root, err)
	}
	blobs, err := OpenBlobStore(abs)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", root, err)
	}
	s := &Store{root: abs, blobs: blobs, snapshotter: snap}
	for _, d := range []string{"snapshots", "roots"} {
		if err := os.MkdirAll(filepath.Join(abs, d), 0o755); err != nil {
			return nil, fmt.Errorf("open store %s: %w", root, err)
		}
	}
	if err := s.createIfAbsent("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return nil, err
	}
	var layoutFile struct {
		Version string `json:"imageLayoutVersion"`
	}
	b, err := os.ReadFile(filepath.Join(abs, "oci-layout"))
	if err == nil {
		err = json.Unmarshal(b, &layoutFile)
	}
	if err != nil || layoutFile.Version != "1.0.0" {
		return nil, fmt.Errorf("open store %s: not an OCI image layout 1.0.0 (oci-layout: %q)", root, b)
	}
	empty, _ := json.Marshal(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{}})
	if err := s.createIfAbsent("index.json", empty); err != nil {
		return nil, err
	}
	return s, nil
}

// StoreMode is the mode of a store's root directory: only its owner may
// enter it. Snapshots hold image files as the image has them, setuid-root
// binaries and device nodes included, and working containers are mounted
// below it; a root other users could traverse would hand them those files.
const StoreMode fs.FileMode = 0o700

// makePrivateRoot creates the store root dir with StoreMode, or tightens
// an existing one that others could enter, saying so through warn (which
// may be nil) when it already held a store. A root this process cannot tighten (another user's) is
// used as it is, after a warning.
func makePrivateRoot(dir string, warn func(string)) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(dir, StoreMode); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	perm := fi.Mode().Perm()
	if perm&0o077 == 0 {
		return nil
	}
	say := func(format string, args ...any) {
		if warn != nil {
			warn(fmt.Sprintf(format, args...))
		}
	}
	// A directory that holds no store yet exposed nothing: made private
	// without a word (t.TempDir and mkdir give 0755 directories).
	fresh := !lexists(filepath.Join(dir, "oci-layout"))
	if err := os.Chmod(dir, StoreMode); err != nil {
		say("store %s is mode %04o, so other users can reach the image files in it (setuid binaries, devices); could not make it %04o: %v (fix with chmod %o %s as its owner)",
			dir, perm, StoreMode, err, StoreMode, dir)
		return nil
	}
	if !fresh {
		say("store %s was mode %04o, open to other users; made it %04o", dir, perm, StoreMode)
	}
	return nil
}

// Root is the store's root directory (absolute).
func (s *Store) Root() string { return s.root }

// Blobs is the store's blob store, rooted at Root.
func (s *Store) Blobs() *BlobStore { return s.blobs }

// TempDir creates a new directory under Root/tmp, on the same file system as
// the snapshots and blobs, so its contents can be renamed into place. The
// caller removes it. Prune removes leftovers older than PruneGrace, so hold a
// shared Lock while using it for longer.
func (s *Store) TempDir(prefix string) (string, error) {
	if strings.ContainsRune(prefix, '/') {
		return "", fmt.Errorf("temp dir prefix %q contains a slash", prefix)
	}
	d, err := os.MkdirTemp(filepath.Join(s.root, "tmp"), prefix)
	if err != nil {
		return "", fmt.Errorf("temp dir: %w", err)
	}
	return d, nil
}

// ContainersDir is Root/containers, which holds one directory per working
// container (see the builder's From). It may not exist yet.
func (s *Store) ContainersDir() string { return filepath.Join(s.root, "containers") }

// CacheMountsDir is Root/cache, where the instances of RUN
// --mount=type=cache live beside the cache's other folders (see the
// layout above). It is created, mode 0700, on first use.
func (s *Store) CacheMountsDir() (string, error) {
	d := filepath.Join(s.root, "cache")
	if err := os.MkdirAll(d, 0o700); err != nil {
		return "", fmt.Errorf("cache mounts: %w", err)
	}
	return d, nil
}

// TempRoot is Root/tmp, where TempDir makes its directories; Open removes
// what was left there.
func (s *Store) TempRoot() string { return filepath.Join(s.root, "tmp") }

// Lock takes flock(2) on Root/store.lock, shared or exclusive, waiting until
// it is granted or ctx is done. The returned function releases it and may be
// called more than once. See Store for who takes which kind.
func (s *Store) Lock(ctx context.Context, exclusive bool) (unlock func(), err error) {
	return LockFile(ctx, filepath.Join(s.root, "store.lock"), exclusive)
}

var rootNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$`)

// SetRoot records digests as extra garbage-collection roots under name
// (Root/roots/<name>.json), replacing the previous set of that name; an
// empty set removes the root. Prune and Remove keep every root blob and,
// when it is a manifest or index, everything it references, plus the
// snapshot of any root digest that is a chain ID.
func (s *Store) SetRoot(ctx context.Context, name string, digests []v1.Hash) error {
	if !rootNameRE.MatchString(name) {
		return fmt.Errorf("set root: invalid name %q", name)
	}
	for _, h := range digests {
		if !validHash(h) {
			return fmt.Errorf("set root %s: invalid digest %q", name, h)
		}
	}
	unlock, err := s.Lock(ctx, false)
	if err != nil {
		return err
	}
	defer unlock()
	p := filepath.Join(s.root, "roots", name+".json")
	if len(digests) == 0 {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("set root %s: %w", name, err)
		}
		return nil
	}
	hs := slices.Clone(digests)
	slices.SortFunc(hs, func(a, b v1.Hash) int { return strings.Compare(a.String(), b.String()) })
	hs = slices.Compact(hs)
	b, err := json.Marshal(rootFile{Digests: hs})
	if err != nil {
		return err
	}
	if err := s.writeAtomic(p, b); err != nil {
		return fmt.Errorf("set root %s: %w", name, err)
	}
	return nil
}

type rootFile struct {
	Digests []v1.Hash `json:"digests"`
}

func (s *Store) readRoots() ([]v1.Hash, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, "roots"))
	if err != nil {
		return nil, fmt.Errorf("read roots: %w", err)
	}
	var out []v1.Hash
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.root, "roots", e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read roots: %w", err)
		}
		var rf rootFile
		if err := json.Unmarshal(b, &rf); err != nil {
			return nil, fmt.Errorf("read root %s: %w", e.Name(), err)
		}
		out = append(out, rf.Digests...)
	}
	return out, nil
}

func (s *Store) readIndex() (*v1.IndexManifest, error) {
	b, err := os.ReadFile(filepath.Join(s.root, "index.json"))
	if err != nil {
		return nil, fmt.Errorf("read index.json: %w", err)
	}
	im, err := v1.ParseIndexManifest(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("read index.json: %w", err)
	}
	return im, nil
}

// updateIndex applies fn to index.json under the exclusive index lock and
// replaces the file atomically. fn's error aborts the update.
func (s *Store) updateIndex(ctx context.Context, fn func(*v1.IndexManifest) error) error {
	unlock, err := LockFile(ctx, filepath.Join(s.root, "index.lock"), true)
	if err != nil {
		return err
	}
	defer unlock()
	im, err := s.readIndex()
	if err != nil {
		return err
	}
	if err := fn(im); err != nil {
		return err
	}
	im.SchemaVersion = 2
	im.MediaType = types.OCIImageIndex
	if im.Manifests == nil {
		im.Manifests = []v1.Descriptor{}
	}
	slices.SortStableFunc(im.Manifests, func(a, b v1.Descriptor) int {
		return strings.Compare(a.Annotations[RefNameAnnotation], b.Annotations[RefNameAnnotation])
	})
	b, err := json.Marshal(im)
	if err != nil {
		return err
	}
	if old, err := os.ReadFile(filepath.Join(s.root, "index.json")); err == nil && bytes.Equal(old, b) {
		return nil // nothing changed (re-tagging a cached build): no write, no fsync
	}
	if err := s.writeAtomic(filepath.Join(s.root, "index.json"), b); err != nil {
		return fmt.Errorf("write index.json: %w", err)
	}
	return nil
}

// writeAtomic replaces path with b: temp file in Root/tmp, fsync, rename,
// fsync of the directory.
func (s *Store) writeAtomic(path string, b []byte) error {
	return s.replaceFile(path, b, true)
}

// replaceFile replaces path with b through a temp file in Root/tmp (which
// Open clears of leftovers), fsynced with its directory when durable.
func (s *Store) replaceFile(path string, b []byte, durable bool) error {
	tmp, err := s.writeTempFile(filepath.Base(path), b, durable)
	if err != nil {
		return err
	}
	return renameDurable(tmp, path, durable)
}

// createIfAbsent creates Root/name holding b unless it exists; concurrent
// openers agree because the file appears atomically via link(2).
func (s *Store) createIfAbsent(name string, b []byte) error {
	p := filepath.Join(s.root, name)
	if _, err := os.Lstat(p); err == nil {
		return nil
	}
	tmp, err := s.writeTemp(name, b)
	if err != nil {
		return fmt.Errorf("create %s: %w", p, err)
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, p); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create %s: %w", p, err)
	}
	syncDir(s.root)
	return nil
}

func (s *Store) writeTemp(name string, b []byte) (string, error) {
	return s.writeTempFile(name, b, true)
}

// writeTempFile writes b to a new file in Root/tmp, fsynced when sync is
// set, and returns its path.
func (s *Store) writeTempFile(name string, b []byte, sync bool) (string, error) {
	return writeTempIn(filepath.Join(s.root, "tmp"), name+"-*", 0o644, sync, bytesFill(b))
}

// touchNow sets path's mtime to now, so Prune treats it as fresh.
func touchNow(path string) error {
	now := time.Now()
	return os.Chtimes(path, now, now)
}

// forceRemoveAll removes path like os.RemoveAll, first making directories
// writable if a rootless extraction left some that are not.
func forceRemoveAll(path string) error {
	if err := os.RemoveAll(path); err == nil {
		return nil
	}
	var fix func(string)
	fix = func(p string) {
		fi, err := os.Lstat(p)
		if err != nil || !fi.IsDir() {
			return
		}
		os.Chmod(p, 0o700)
		ents, _ := os.ReadDir(p)
		for _, e := range ents {
			if e.IsDir() {
				fix(filepath.Join(p, e.Name()))
			}
		}
	}
	fix(path)
	return os.RemoveAll(path)
}

// PruneReport says what Prune deleted.
type PruneReport struct {
	Blobs     int
	Snapshots int
	Bytes     int64
}

// Prune deletes blobs and snapshots that no index.json entry (followed
// through indexes and manifests to configs and layers) and no root
// references, and leftovers in Root/tmp. It holds the exclusive lock, and
// keeps anything modified less than PruneGrace before it was called (see
// Store for why).
func (s *Store) Prune(ctx context.Context) (PruneReport, error) {
	var rep PruneReport
	cutoff := time.Now().Add(-PruneGrace)
	unlock, err := s.Lock(ctx, true)
	if err != nil {
		return rep, err
	}
	defer unlock()
	live, err := s.reachable()
	if err != nil {
		return rep, err
	}
	old := func(p string) bool {
		fi, err := os.Lstat(p)
		return err == nil && fi.ModTime().Before(cutoff)
	}
	hs, err := s.blobs.List()
	if err != nil {
		return rep, err
	}
	for _, h := range hs {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		p := s.blobs.Path(h)
		fi, err := os.Lstat(p)
		if live.blobs[h] || err != nil || !fi.ModTime().Before(cutoff) {
			continue
		}
		if err := s.blobs.Delete(h); err != nil {
			return rep, err
		}
		rep.Blobs++
		rep.Bytes += fi.Size()
	}
	// Storage layers go first: the native sweep below removes the lock
	// files whose mtimes say when a storage layer was last used.
	n, size, err := s.csPrune(ctx, live, cutoff)
	rep.Snapshots += n
	rep.Bytes += size
	if err != nil {
		return rep, fmt.Errorf("prune: %w", err)
	}
	snapDir := filepath.Join(s.root, "snapshots")
	ents, err := os.ReadDir(snapDir)
	if err != nil {
		return rep, fmt.Errorf("prune: %w", err)
	}
	seen := map[string]bool{}
	for _, e := range ents {
		hexName := strings.TrimSuffix(e.Name(), ".lock")
		h := v1.Hash{Algorithm: "sha256", Hex: hexName}
		if seen[hexName] || !validHash(h) || live.chains[h] {
			continue
		}
		seen[hexName] = true
		// The lock file's mtime is the snapshot's last use.
		lastUse := filepath.Join(snapDir, hexName+".lock")
		if !lexists(lastUse) {
			lastUse = filepath.Join(snapDir, hexName)
		}
		if !old(lastUse) {
			continue
		}
		n, removed, err := s.removeSnapshot(hexName)
		if err != nil {
			return rep, err
		}
		if removed {
			rep.Snapshots++
			rep.Bytes += n
		}
	}
	if err := s.pruneSources(live, cutoff); err != nil {
		return rep, err
	}
	tmpDir := filepath.Join(s.root, "tmp")
	ents, err = os.ReadDir(tmpDir)
	if err != nil {
		return rep, fmt.Errorf("prune: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(tmpDir, e.Name())
		if !old(p) {
			continue
		}
		rep.Bytes += treeSize(p)
		if err := forceRemoveAll(p); err != nil {
			return rep, fmt.Errorf("prune: %w", err)
		}
	}
	return rep, nil
}

// marks is a set of live (or doomed) blobs and snapshot chain IDs.
type marks struct {
	blobs  map[v1.Hash]bool
	chains map[v1.Hash]bool
}

func newMarks() *marks {
	return &marks{blobs: map[v1.Hash]bool{}, chains: map[v1.Hash]bool{}}
}

// reachable marks everything index.json and the roots reference.
func (s *Store) reachable() (*marks, error) {
	m := newMarks()
	im, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	for _, d := range im.Manifests {
		if err := s.mark(m, d); err != nil {
			return nil, err
		}
	}
	roots, err := s.readRoots()
	if err != nil {
		return nil, err
	}
	for _, h := range roots {
		m.chains[h] = true
		if err := s.mark(m, v1.Descriptor{Digest: h, MediaType: s.sniffMediaType(h)}); err != nil {
			return nil, err
		}
	}
	cached, chains, err := s.cacheLayers()
	if err != nil {
		return nil, err
	}
	for _, h := range cached {
		m.blobs[h] = true
	}
	// The snapshots of lazy layers records name are those layers'
	// only copy.
	for _, h := range chains {
		m.chains[h] = true
	}
	return m, nil
}

// mark adds d and everything it references to m. A missing blob references
// nothing; an unreadable manifest is an error, since guessing could delete
// live data.
func (s *Store) mark(m *marks, d v1.Descriptor) error {
	if m.blobs[d.Digest] {
		return nil
	}
	m.blobs[d.Digest] = true
	if !d.MediaType.IsIndex() && !d.MediaType.IsImage() {
		return nil
	}
	b, err := s.blobs.ReadAll(d.Digest)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	if d.MediaType.IsIndex() {
		im, err := v1.ParseIndexManifest(bytes.NewReader(b))
		if err != nil {
			return fmt.Errorf("index %s: %w", d.Digest, err)
		}
		for _, c := range im.Manifests {
			if err := s.mark(m, c); err != nil {
				return err
			}
		}
		return nil
	}
	man, err := v1.ParseManifest(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("manifest %s: %w", d.Digest, err)
	}
	m.blobs[man.Config.Digest] = true
	for _, l := range man.Layers {
		m.blobs[l.Digest] = true
	}
	if cb, err := s.blobs.ReadAll(man.Config.Digest); err == nil {
		if cf, err := v1.ParseConfigFile(bytes.NewReader(cb)); err == nil {
			for _, c := range ChainIDs(cf.RootFS.DiffIDs) {
				m.chains[c] = true
			}
		}
	}
	return nil
}

// sniffMediaType guesses what a root blob is, so that a pinned manifest
// keeps its layers. Anything that is not a small JSON manifest or index is
// a plain blob.
func (s *Store) sniffMediaType(h v1.Hash) types.MediaType {
	if n, err := s.blobs.Size(h); err != nil || n > 4<<20 {
		return ""
	}
	b, err := s.blobs.ReadAll(h)
	if err != nil || !bytes.HasPrefix(bytes.TrimSpace(b), []byte("{")) {
		return ""
	}
	var probe struct {
		MediaType types.MediaType `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
		Config    json.RawMessage `json:"config"`
		Layers    json.RawMessage `json:"layers"`
	}
	if json.Unmarshal(b, &probe) != nil {
		return ""
	}
	switch {
	case probe.MediaType.IsIndex() || probe.MediaType.IsImage():
		return probe.MediaType
	case probe.MediaType == "" && probe.Manifests != nil:
		return types.OCIImageIndex
	case probe.MediaType == "" && probe.Config != nil && probe.Layers != nil:
		return types.OCIManifestSchema1
	}
	return ""
}

func lexists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// treeSize is the apparent size of the files under p.
func treeSize(p string) int64 {
	var n int64
	filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

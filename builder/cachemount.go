package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/ibuild/ibuild/builder/internal/copier"
	"github.com/ibuild/ibuild/builder/sandbox"
	"github.com/ibuild/ibuild/layers"
)

// cacheMount is type=cache: a directory kept in the store under
// STOREROOT/cache, locked for the step as sharing says.
//
// Without from= (or with from=scratch, or from a stage or image without
// layers) the cache is one directory per id, made with mode, uid and gid
// when new. With from=, BuildKit's rule: the cache is the from= tree with
// the cache's writes over it, one instance per id and from= content (a
// rebuilt stage with other content starts a new one). ibuild keeps the
// writes as the persistent upper directory of an overlay on the tree's
// snapshot directories, so nothing is copied. source= is the path of the
// cache (or of the tree) that is mounted, resolved inside it; it must
// exist. With from= and no source=, mode, uid or gid mount the tree's
// /cache directory, made with them when the tree has none (BuildKit
// creates it with a mkdir over the tree).
//
// A cache whose paths ibuild resolves or changes before the step (from=,
// source=, U) is used by one step at a time: sharing=shared waits as
// locked does, so no step can swap a path for a symlink meanwhile, and an
// overlay's upper directory is never in two mounts at once.
func (s *stageRun) cacheMount(ctx context.Context, m *instructions.Mount, r *runMounts, scratch string, chown bool, user copier.Owner) (*sandbox.Mount, error) {
	id := m.CacheID
	if id == "" {
		id = m.Target
	}
	if id == "" {
		return nil, errors.New("needs a target")
	}
	if s.b.cache != nil {
		s.b.cache.noteCacheMount(cacheKey(id, m))
	}
	var from *fromTree
	if m.From != "" && !strings.EqualFold(m.From, "scratch") {
		t, err := s.mountFrom(ctx, m.From)
		if err != nil {
			return nil, err
		}
		if t.chain != "" {
			from = t
		}
	}
	mode, uid, gid := uint64(0o755), uint64(0), uint64(0)
	if m.Mode != nil {
		mode = *m.Mode
	}
	if m.UID != nil {
		uid = *m.UID
	}
	if m.GID != nil {
		gid = *m.GID
	}
	source := path.Clean("/" + m.Source)
	// BuildKit's mkdir over the tree (setCacheUIDGID).
	mkdirCache := from != nil && source == "/" && (m.Mode != nil || m.UID != nil || m.GID != nil)
	if mkdirCache {
		source = "/cache"
	}

	root, err := s.b.opts.Store.CacheMountsDir()
	if err != nil {
		return nil, err
	}
	base := filepath.Join(root, cacheDirName(cacheKey(id, m)))
	if from != nil {
		key := from.chain
		if mkdirCache {
			key += fmt.Sprintf(" mkdir /cache %o %d:%d", mode, uid, gid)
		}
		sum := sha256.Sum256([]byte(key))
		base += "-from-" + hex.EncodeToString(sum[:8])
	}
	exclusive := from != nil || source != "/" || chown
	dir, unlock, err := lockCache(ctx, base, m.CacheSharing, exclusive)
	if err != nil {
		return nil, fmt.Errorf("lock cache %s: %w", id, err)
	}
	r.unlock = append(r.unlock, unlock)

	if from == nil {
		if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
			// A new instance: one an imported cache holds starts with its
			// content, its root made as a new cache's would be.
			if _, err := s.importCacheMount(ctx, filepath.Base(base), dir, false, func(tmp string) (string, error) {
				if err := os.Chown(tmp, int(uid), int(gid)); err != nil {
					return "", err
				}
				return tmp, os.Chmod(tmp, unixMode(uint32(mode)))
			}); err != nil {
				return nil, fmt.Errorf("cache %s: %w", id, err)
			}
		}
		if err := os.Mkdir(dir, 0o755); err == nil {
			if err := os.Chown(dir, int(uid), int(gid)); err != nil {
				return nil, err
			}
			if err := os.Chmod(dir, unixMode(uint32(mode))); err != nil {
				return nil, err
			}
		} else if !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		view := layers.NewRootFS([]string{dir})
		sub, fi, err := cacheSource(view, source, id)
		if err != nil {
			return nil, err
		}
		host := filepath.Join(dir, filepath.FromSlash(sub))
		if chown {
			if err := chownTree(host, user); err != nil {
				return nil, fmt.Errorf("U: %w", err)
			}
		}
		return &sandbox.Mount{Type: sandbox.MountBind, Source: host, ReadOnly: m.ReadOnly, File: !fi.IsDir()}, nil
	}

	upper, work := filepath.Join(dir, "upper"), filepath.Join(dir, "work")
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		if _, err := s.importCacheMount(ctx, filepath.Base(base), dir, true, func(tmp string) (string, error) {
			upper, err := seededLayout(tmp, from)
			if err != nil {
				return "", err
			}
			return upper, os.Chmod(tmp, 0o700)
		}); err != nil {
			return nil, fmt.Errorf("cache %s: %w", id, err)
		}
	}
	if err := newSeededCache(dir, from, mkdirCache, mode, copier.Owner{UID: int(uid), GID: int(gid)}); err != nil {
		return nil, fmt.Errorf("cache %s from %s: %w", id, m.From, err)
	}
	view := layers.NewRootFS(append(append([]string(nil), from.dirs...), upper))
	sub, fi, err := cacheSource(view, source, id)
	if err != nil {
		return nil, err
	}
	if chown {
		if err := chownUpper(view, upper, sub, user); err != nil {
			return nil, fmt.Errorf("U: %w", err)
		}
	}
	stage := filepath.Join(scratch, "merged")
	if err := os.Mkdir(stage, 0o755); err != nil {
		return nil, err
	}
	for _, d := range append([]string{upper, work}, from.dirs...) {
		if strings.ContainsAny(d, ":,") {
			return nil, fmt.Errorf("cannot use %s in an overlay (it holds ':' or ',')", d)
		}
	}
	return &sandbox.Mount{
		Type: sandbox.MountOverlay, Lowers: from.dirs, Upper: upper, Work: work, Stage: stage,
		Sub: sub, File: !fi.IsDir(), ReadOnly: m.ReadOnly,
	}, nil
}

// lockCache locks the cache instance base for a step as sharing says and
// returns its directory: shared (a shared lock, or an exclusive one when
// exclusive is set), locked (exclusive), or private (the first instance,
// base, base-1, ..., that no one else holds).
func lockCache(ctx context.Context, base string, sharing instructions.ShareMode, exclusive bool) (string, func(), error) {
	switch sharing {
	case instructions.MountSharingShared, "":
		unlock, err := layers.LockFile(ctx, base+".lock", exclusive)
		return base, unlock, err
	case instructions.MountSharingLocked:
		unlock, err := layers.LockFile(ctx, base+".lock", true)
		return base, unlock, err
	case instructions.MountSharingPrivate:
		// The first instance no one else uses; a new one when all are.
		for n := 0; ; n++ {
			dir := base
			if n > 0 {
				dir = base + "-" + strconv.Itoa(n)
			}
			unlock, ok, err := layers.TryLockFile(dir+".lock", true)
			if err != nil || ok {
				return dir, unlock, err
			}
		}
	}
	return "", nil, fmt.Errorf("sharing=%s: want shared, private or locked", sharing)
}

// cacheSource resolves source inside the cache's view (symlinks are
// followed inside it, never out of it) and describes what is there.
func cacheSource(view *layers.RootFS, source, id string) (string, fs.FileInfo, error) {
	sub, err := view.Resolve(source)
	if err != nil {
		return "", nil, fmt.Errorf("source %s: %w", source, err)
	}
	fi, _, err := view.Lstat(sub)
	if err != nil {
		what := source
		if sub != source {
			what += " (" + sub + " inside the cache)"
		}
		return "", nil, fmt.Errorf("source %s does not exist in cache %s (a new cache holds only what from= gives it)", what, id)
	}
	if !fi.IsDir() && !fi.Mode().IsRegular() {
		return "", nil, fmt.Errorf("source %s in cache %s is not a directory or a regular file", source, id)
	}
	return sub, fi, nil
}

// seededLayout makes the upper and work directories of a seeded cache
// instance in tmp, the upper one owned as the tree's root is (as a
// snapshot over it would be), and returns the upper one.
func seededLayout(tmp string, from *fromTree) (string, error) {
	upper := filepath.Join(tmp, "upper")
	for _, d := range []string{upper, filepath.Join(tmp, "work")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", err
		}
		if err := os.Chmod(d, 0o755); err != nil {
			return "", err
		}
	}
	if fi, host, err := from.rootfs.Lstat("/"); err == nil {
		uid, gid := copier.StatOwner(fi, host)
		if err := os.Chown(upper, uid, gid); err != nil {
			return "", err
		}
	}
	return upper, nil
}

// newSeededCache makes the instance directory dir of a cache over the
// tree from, unless it exists: an empty upper directory whose root has the
// tree's root owner (as a snapshot over it would), a work directory, and
// with mkdirCache a /cache directory with mode and o where the tree has
// none. It is made under a temporary name and renamed into place, so an
// interrupted start leaves no half-made instance.
func newSeededCache(dir string, from *fromTree, mkdirCache bool, mode uint64, o copier.Owner) error {
	if _, err := os.Lstat(dir); err == nil {
		return nil
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".new-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	upper, err := seededLayout(tmp, from)
	if err != nil {
		return err
	}
	if mkdirCache {
		if _, _, err := from.rootfs.Lstat("/cache"); errors.Is(err, fs.ErrNotExist) {
			c := filepath.Join(upper, "cache")
			if err := os.Mkdir(c, 0o700); err != nil {
				return err
			}
			if err := os.Chown(c, o.UID, o.GID); err != nil {
				return err
			}
			if err := os.Chmod(c, unixMode(uint32(mode))); err != nil {
				return err
			}
		}
	}
	if err := os.Chmod(tmp, 0o700); err != nil {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil && !errors.Is(err, fs.ErrExist) && !errors.Is(err, syscall.ENOTEMPTY) {
		return err
	}
	return nil
}

// cacheKey identifies a cache: its id, and the uid, gid and mode it is
// made with when any is given. As in BuildKit, where such a cache grows
// from a directory made with them, "id=x,uid=1" and "id=x" are two caches.
func cacheKey(id string, m *instructions.Mount) string {
	if m.UID == nil && m.GID == nil && m.Mode == nil {
		return id
	}
	show := func(p *uint64, format string) string {
		if p == nil {
			return "-"
		}
		return fmt.Sprintf(format, *p)
	}
	return id + "\x00uid=" + show(m.UID, "%d") + ",gid=" + show(m.GID, "%d") + ",mode=" + show(m.Mode, "%o")
}

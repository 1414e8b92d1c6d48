package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/layers"
)

// Cache mounts that travel: --cache-to ...,mounts=true exports the
// content of the RUN --mount=type=cache instances the build's steps name
// (each as a layer blob, content-addressed), and a build on another
// machine imports an instance from --cache-from the first time a step
// mounts it and the store has none of its own. See docs/cache.md.

// CacheMountSource is a CacheSource that also holds cache mount contents
// (a cache exported with mounts=true).
type CacheMountSource interface {
	// CacheMount returns the content of the cache mount instance (a
	// directory name as layers.CacheMount.Instance says).
	CacheMount(instance string) (layers.CacheMount, bool)
	// CacheMounts lists every instance the source holds.
	CacheMounts() []layers.CacheMount
}

// CacheMountExporter is a CacheExporter that can also export cache mount
// contents.
type CacheMountExporter interface {
	CacheExporter
	// ExportsCacheMounts reports whether it wants them (mounts=true).
	ExportsCacheMounts() bool
	// ExportCacheWith exports entries and mounts.
	ExportCacheWith(ctx context.Context, entries []layers.CacheEntry, mounts []layers.CacheMount) error
}

// seededInstance matches the suffix of a from= cache instance's name.
var seededInstance = regexp.MustCompile(`^-from-[0-9a-f]{16}$`)

// noteCacheMount records that a RUN step of this build names the cache
// mount id (whether the step ran or was taken from the cache); id is the
// cache's identity, its uid, gid and mode included (cacheKey).
func (cs *cacheSession) noteCacheMount(id string) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.mountIDs == nil {
		cs.mountIDs = map[string]bool{}
	}
	cs.mountIDs[id] = true
}

// exportCache hands entries to every --cache-to exporter; those that want
// cache mounts also get them, made once for all.
func (cs *cacheSession) exportCache(ctx context.Context, opts *Options, entries []layers.CacheEntry) error {
	var mounts []layers.CacheMount
	made := false
	for _, exp := range opts.CacheTo {
		me, ok := exp.(CacheMountExporter)
		if !ok || !me.ExportsCacheMounts() {
			if err := exp.ExportCache(ctx, entries); err != nil {
				return fmt.Errorf("cache export (CacheTo): %w", err)
			}
			continue
		}
		if !made {
			var err error
			if mounts, err = cs.cacheMounts(ctx, opts); err != nil {
				return fmt.Errorf("cache export (CacheTo): cache mounts: %w", err)
			}
			made = true
		}
		if err := me.ExportCacheWith(ctx, entries, mounts); err != nil {
			return fmt.Errorf("cache export (CacheTo): %w", err)
		}
	}
	return nil
}

// cacheMounts makes the blobs of the cache mount instances of the ids
// this build's steps name: each instance the store has (the id's own
// directory, and one per from= seed), committed as a layer while no step
// uses it; and instances an imported cache holds that the store lacks
// (a step that would have filled them was cached), carried over as they
// are. An instance whose files did not change since it was last
// committed is not read again (its metadata is compared).
func (cs *cacheSession) cacheMounts(ctx context.Context, opts *Options) ([]layers.CacheMount, error) {
	cs.mu.Lock()
	ids := make([]string, 0, len(cs.mountIDs))
	for id := range cs.mountIDs {
		ids = append(ids, id)
	}
	cs.mu.Unlock()
	sort.Strings(ids)
	root, err := opts.Store.CacheMountsDir()
	if err != nil {
		return nil, err
	}
	var out []layers.CacheMount
	have := map[string]bool{}
	ents, err := os.ReadDir(root)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for _, id := range ids {
		base := cacheDirName(id)
		for _, e := range ents {
			name := e.Name()
			overlay := false
			switch {
			case name == base:
			case strings.HasPrefix(name, base) && seededInstance.MatchString(name[len(base):]):
				overlay = true
			default:
				continue
			}
			if !e.IsDir() {
				continue
			}
			m, err := cs.commitCacheMount(ctx, opts, id, filepath.Join(root, name), overlay)
			if err != nil {
				return nil, fmt.Errorf("cache mount %s: %w", id, err)
			}
			out = append(out, m)
			have[name] = true
		}
		for _, src := range cs.imported {
			ms, ok := src.(CacheMountSource)
			if !ok {
				continue
			}
			for _, m := range ms.CacheMounts() {
				if m.ID == id && !have[m.Instance] {
					out = append(out, m)
					have[m.Instance] = true
				}
			}
		}
	}
	return out, nil
}

// mountMemo is what the store remembers of an instance it committed: its
// files' metadata digest, and the blob.
type mountMemo struct {
	Fingerprint string            `json:"fingerprint"`
	Desc        layers.Descriptor `json:"desc"`
	// MaxCtime is the newest ctime among the files (ns): a memo younger
	// than a tick after it is not trusted (a file changed twice within
	// one tick keeps its metadata).
	MaxCtime int64 `json:"maxCtime"`
	Made     int64 `json:"made"`
}

// commitCacheMount commits the instance dir (its upper directory for an
// overlay instance) as a layer blob in the store, under an exclusive lock
// on the instance, unless its memo says the blob is up to date.
func (cs *cacheSession) commitCacheMount(ctx context.Context, opts *Options, id, dir string, overlay bool) (layers.CacheMount, error) {
	m := layers.CacheMount{ID: id, Instance: filepath.Base(dir), Overlay: overlay}
	unlock, err := layers.LockFile(ctx, dir+".lock", true)
	if err != nil {
		return m, err
	}
	defer unlock()
	content := dir
	if overlay {
		content = filepath.Join(dir, "upper")
	}
	fp, maxCtime, err := fingerprintTree(ctx, content)
	if err != nil {
		return m, err
	}
	fp = fmt.Sprintf("%s %s %d", fp, opts.Compression, opts.CompressionLevel)
	memoDir, err := opts.Store.CacheDir("mounts")
	if err != nil {
		return m, err
	}
	memoPath := filepath.Join(memoDir, m.Instance+".json")
	if b, err := os.ReadFile(memoPath); err == nil {
		var memo mountMemo
		if json.Unmarshal(b, &memo) == nil && memo.Fingerprint == fp && memo.Made-memo.MaxCtime > int64(racyTick) &&
			opts.Store.Blobs().Has(memo.Desc.Digest) {
			m.Desc, m.Layer = memo.Desc, opts.Store.Blobs().Layer(memo.Desc)
			return m, nil
		}
	}
	desc, err := opts.Store.Blobs().CommitDir(ctx, content, layers.CommitOptions{Compression: opts.Compression, Level: opts.CompressionLevel})
	if err != nil {
		return m, err
	}
	memo, err := json.Marshal(mountMemo{Fingerprint: fp, Desc: desc, MaxCtime: maxCtime, Made: time.Now().UnixNano()})
	if err == nil {
		_ = opts.Store.WriteCacheFile(memoPath, memo)
	}
	m.Desc, m.Layer = desc, opts.Store.Blobs().Layer(desc)
	return m, nil
}

// racyTick is more than a timestamp tick of any kernel clock.
const racyTick = 20 * time.Millisecond

// fingerprintTree digests the metadata of everything under dir (path,
// type, mode, owner, size, inode, mtime and ctime): any change to a file,
// its content or its attributes changes its ctime, so an equal digest
// means an unchanged tree. It returns the newest ctime too.
func fingerprintTree(ctx context.Context, dir string) (string, int64, error) {
	h := sha256.New()
	var maxCtime int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no stat", p)
		}
		ctime := st.Ctim.Nano()
		maxCtime = max(maxCtime, ctime)
		rel, _ := filepath.Rel(dir, p)
		h.Write([]byte(strconv.Quote(rel)))
		fmt.Fprintf(h, " %o %d %d %d %d %d %d %d\n", st.Mode, st.Uid, st.Gid, st.Size, st.Ino, st.Dev, st.Mtim.Nano(), ctime)
		return nil
	})
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), maxCtime, nil
}

// importCacheMount fills the new cache instance dir with what an
// imported cache (--cache-from of a cache exported with mounts=true)
// holds for it, if one does; it reports whether it did. prepare makes the
// instance's layout in a temporary directory and returns where the
// content goes. The instance appears whole or not at all (a temporary
// directory renamed into place). A blob that cannot be fetched or
// unpacked is a warning: the step starts with an empty cache, as it
// would without --cache-from.
func (s *stageRun) importCacheMount(ctx context.Context, instance, dir string, overlay bool, prepare func(tmp string) (string, error)) (bool, error) {
	var found *layers.CacheMount
	for _, src := range s.b.cache.imported {
		ms, ok := src.(CacheMountSource)
		if !ok {
			continue
		}
		if m, ok := ms.CacheMount(instance); ok && m.Overlay == overlay && m.Layer != nil {
			found = &m
			break
		}
	}
	if found == nil {
		return false, nil
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".import-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(tmp)
	warn := func(err error) (bool, error) {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		s.b.warn(fmt.Sprintf("cache mount %s: could not import it from the build cache (%v): the step starts with an empty cache", found.ID, err))
		return false, nil
	}
	content, err := prepare(tmp)
	if err != nil {
		return false, err
	}
	rc, err := found.Layer.Uncompressed()
	if err != nil {
		return warn(err)
	}
	wo := layers.KeepWhiteouts
	if overlay {
		wo = layers.OverlayWhiteouts
	}
	err = layers.Extract(ctx, rc, content, layers.ExtractOptions{Whiteouts: wo, Source: "cache mount " + found.ID, Warn: s.b.warn})
	rc.Close()
	if err != nil {
		return warn(err)
	}
	if err := os.Rename(tmp, dir); err != nil && !errors.Is(err, fs.ErrExist) && !errors.Is(err, syscall.ENOTEMPTY) {
		return false, err
	}
	s.emit(progress.Event{Kind: progress.Log, Message: fmt.Sprintf("cache mount %s: imported %d bytes from the build cache", found.ID, found.Desc.Size)})
	return true, nil
}

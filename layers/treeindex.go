package layers

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// TreeIndex is a metadata index of a directory tree: for every path, what
// stat, its xattrs and its symlink target say, never its content. Two
// indexes of the same tree taken before and after a process ran tell what
// it changed (see DiffTree): a write updates a file's ctime, so a file
// whose metadata is unchanged is unchanged.
type TreeIndex struct {
	root    string
	entries map[string]treeMeta // by slash path relative to root, "" excluded
}

// treeMeta is what the index keeps of one path.
type treeMeta struct {
	ino, nlink, rdev uint64
	size             int64
	mtime, ctime     int64 // ns
	btime            int64 // ns, 0 where the file system has none
	mode, uid, gid   uint32
	xattrs           uint64 // FNV-1a of names and values; 0 for none
	link             string // symlink target
}

func (m *treeMeta) isDir() bool { return m.mode&unix.S_IFMT == unix.S_IFDIR }

// Len is the number of paths indexed.
func (ix *TreeIndex) Len() int { return len(ix.entries) }

// IndexTree indexes the tree at root with one walker per CPU. Symlinks
// are not followed; a path that vanishes during the walk is left out.
func IndexTree(ctx context.Context, root string) (*TreeIndex, error) {
	entries, err := walkTree(ctx, root)
	if err != nil {
		return nil, err
	}
	return &TreeIndex{root: root, entries: entries}, nil
}

// walkTree lists every path under root with its metadata: directories are
// a shared stack the workers pop from and push to.
func walkTree(ctx context.Context, root string) (map[string]treeMeta, error) {
	workers := max(runtime.GOMAXPROCS(0), 2)
	var (
		mu      sync.Mutex
		cond    = sync.NewCond(&mu)
		stack   = []string{""}
		pending = 1 // directories pushed and not yet done
		werr    error
	)
	results := make([]map[string]treeMeta, workers)
	var wg sync.WaitGroup
	for w := range workers {
		results[w] = make(map[string]treeMeta)
		wg.Add(1)
		go func(out map[string]treeMeta) {
			defer wg.Done()
			for {
				mu.Lock()
				for len(stack) == 0 && pending > 0 && werr == nil {
					cond.Wait()
				}
				if pending == 0 || werr != nil {
					mu.Unlock()
					cond.Broadcast()
					return
				}
				dir := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				mu.Unlock()
				subdirs, err := indexDir(ctx, root, dir, out)
				mu.Lock()
				if err != nil && werr == nil {
					werr = err
				}
				stack = append(stack, subdirs...)
				pending += len(subdirs) - 1
				mu.Unlock()
				cond.Broadcast()
			}
		}(results[w])
	}
	wg.Wait()
	if werr != nil {
		return nil, werr
	}
	all := results[0]
	for _, r := range results[1:] {
		for k, v := range r {
			all[k] = v
		}
	}
	return all, nil
}

// indexDir records the children of the directory rel into out and returns
// the subdirectories to walk.
func indexDir(ctx context.Context, root, rel string, out map[string]treeMeta) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	full := filepath.Join(root, filepath.FromSlash(rel))
	fd, err := unix.Open(full, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if rel != "" && (errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP)) {
			return nil, nil // replaced while walking
		}
		return nil, fmt.Errorf("index %s: %w", full, err)
	}
	f := os.NewFile(uintptr(fd), full)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("index %s: %w", full, err)
	}
	var subdirs []string
	for _, n := range names {
		var st unix.Statx_t
		if err := unix.Statx(fd, n, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS|unix.STATX_BTIME, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return nil, fmt.Errorf("index %s: %w", filepath.Join(full, n), err)
		}
		p := n
		if rel != "" {
			p = rel + "/" + n
		}
		ns := func(t unix.StatxTimestamp) int64 { return t.Sec*1e9 + int64(t.Nsec) }
		m := treeMeta{
			ino: st.Ino, nlink: uint64(st.Nlink), rdev: unix.Mkdev(st.Rdev_major, st.Rdev_minor), size: int64(st.Size),
			mtime: ns(st.Mtime), ctime: ns(st.Ctime), mode: uint32(st.Mode), uid: st.Uid, gid: st.Gid,
		}
		if st.Mask&unix.STATX_BTIME != 0 {
			m.btime = ns(st.Btime)
		}
		switch uint32(st.Mode) & unix.S_IFMT {
		case unix.S_IFLNK:
			if m.link, err = readlinkat(fd, n); err != nil && !errors.Is(err, unix.ENOENT) {
				return nil, fmt.Errorf("index %s: %w", filepath.Join(full, n), err)
			}
		case unix.S_IFDIR:
			subdirs = append(subdirs, p)
		}
		if m.xattrs, err = xattrHash(filepath.Join(full, n)); err != nil {
			return nil, fmt.Errorf("index %s: %w", filepath.Join(full, n), err)
		}
		out[p] = m
	}
	return subdirs, nil
}

// xattrHash hashes the names and values of path's xattrs; 0 when it has
// none.
func xattrHash(path string) (uint64, error) {
	var small [256]byte
	n, err := unix.Llistxattr(path, small[:])
	var names []byte
	switch {
	case err == nil:
		names = small[:n]
	case errors.Is(err, unix.ERANGE):
		if names, err = xattrCall(func(b []byte) (int, error) { return unix.Llistxattr(path, b) }); err != nil {
			return 0, err
		}
	case errors.Is(err, unix.ENOTSUP), errors.Is(err, unix.ENOENT):
		return 0, nil
	default:
		return 0, err
	}
	if len(names) == 0 {
		return 0, nil
	}
	h := fnv.New64a()
	for _, k := range strings.Split(strings.TrimSuffix(string(names), "\x00"), "\x00") {
		v, err := xattrCall(func(b []byte) (int, error) { return unix.Lgetxattr(path, k, b) })
		if err != nil && !errors.Is(err, unix.ENODATA) {
			return 0, err
		}
		h.Write([]byte(k))
		h.Write([]byte{0})
		h.Write(v)
		h.Write([]byte{0})
	}
	return h.Sum64() | 1, nil
}

// TreeChanges is what changed in a tree between two indexes.
type TreeChanges struct {
	// Paths are the new or changed paths, the parents of each and, under
	// an opaque directory, everything, sorted parents first.
	Paths []string
	// Opaque are directories that replaced a directory (another inode, or
	// the same inode number born again) or another file: what was there
	// before is gone as a whole, as overlay marks them.
	Opaque map[string]bool
	// Removed are the topmost paths that no longer exist.
	Removed []string
}

// Empty reports whether nothing changed.
func (c *TreeChanges) Empty() bool { return len(c.Paths) == 0 && len(c.Removed) == 0 }

// DiffTree indexes before's tree again and says what changed since,
// leaving out the paths in ignore (slash paths relative to the root) and
// everything under them.
func DiffTree(ctx context.Context, before *TreeIndex, ignore []string) (*TreeChanges, *TreeIndex, error) {
	entries, err := walkTree(ctx, before.root)
	if err != nil {
		return nil, nil, err
	}
	after := &TreeIndex{root: before.root, entries: entries}
	ignored := func(p string) bool {
		for _, ig := range ignore {
			if p == ig || strings.HasPrefix(p, ig+"/") {
				return true
			}
		}
		return false
	}
	ch := &TreeChanges{Opaque: map[string]bool{}}
	include := map[string]bool{}
	var add func(p string)
	add = func(p string) {
		for p != "" && p != "." && !include[p] {
			include[p] = true
			p = pathDir(p)
		}
	}
	for p, m := range after.entries {
		if ignored(p) {
			continue
		}
		old, ok := before.entries[p]
		if ok && old == m {
			continue
		}
		add(p)
		if m.isDir() && ok && (!old.isDir() || old.ino != m.ino || old.btime != m.btime) {
			ch.Opaque[p] = true
		}
	}
	// Everything under an opaque directory is new.
	if len(ch.Opaque) > 0 {
		for p := range after.entries {
			for q := pathDir(p); q != ""; q = pathDir(q) {
				if ch.Opaque[q] {
					add(p)
					break
				}
			}
		}
	}
	for p := range before.entries {
		if ignored(p) {
			continue
		}
		if _, ok := after.entries[p]; ok {
			continue
		}
		parent := pathDir(p)
		if parent != "" {
			pm, ok := after.entries[parent]
			pb := before.entries[parent]
			if !ok || !pm.isDir() || ch.Opaque[parent] || pb.ino != pm.ino || pb.btime != pm.btime {
				continue // gone with its parent, or hidden by an opaque one
			}
		}
		ch.Removed = append(ch.Removed, p)
		add(parent)
	}
	for p := range include {
		ch.Paths = append(ch.Paths, p)
	}
	sortParentsFirst(ch.Paths)
	sortParentsFirst(ch.Removed)
	return ch, after, nil
}

func pathDir(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return ""
	}
	return p[:i]
}

// sortParentsFirst sorts slash paths by depth, then by name.
func sortParentsFirst(ps []string) {
	depth := func(p string) int { return strings.Count(p, "/") }
	slices.SortFunc(ps, func(a, b string) int {
		if da, db := depth(a), depth(b); da != db {
			return da - db
		}
		return strings.Compare(a, b)
	})
}

// WriteChangesDir makes dst (which must not exist, on the same file
// system as the tree for hardlinks) an overlay-upper-style directory
// holding changes: the changed files hardlinked (copied when that fails),
// directories, symlinks and special files recreated with their owner,
// mode, times and xattrs, removed paths as 0/0 character devices and
// opaque directories marked user.overlay.opaque=y. WriteTar and CommitDir
// read it as they read an overlay upper directory, so the layer has their
// entry format.
func WriteChangesDir(ctx context.Context, root string, ch *TreeChanges, dst string) error {
	if err := os.Mkdir(dst, 0o755); err != nil {
		return err
	}
	var dirs []string
	for _, p := range ch.Paths {
		if err := ctx.Err(); err != nil {
			return err
		}
		src := filepath.Join(root, filepath.FromSlash(p))
		to := filepath.Join(dst, filepath.FromSlash(p))
		isDir, err := copyChange(src, to)
		if err != nil {
			return fmt.Errorf("layer of changes: %s: %w", p, err)
		}
		if isDir {
			dirs = append(dirs, p)
			if ch.Opaque[p] {
				if err := markOpaque(to); err != nil {
					return fmt.Errorf("layer of changes: %s: %w", p, err)
				}
			}
		}
	}
	for _, p := range ch.Removed {
		to := filepath.Join(dst, filepath.FromSlash(p))
		if err := unix.Mknod(to, unix.S_IFCHR, 0); err != nil {
			return fmt.Errorf("layer of changes: whiteout %s: %w", p, err)
		}
	}
	// Directory times last, deepest first: filling them moved them.
	for i := len(dirs) - 1; i >= 0; i-- {
		var st unix.Stat_t
		src := filepath.Join(root, filepath.FromSlash(dirs[i]))
		if err := unix.Lstat(src, &st); err != nil {
			return err
		}
		ts := []unix.Timespec{st.Atim, st.Mtim}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(dst, filepath.FromSlash(dirs[i])), ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	return nil
}

// copyChange reproduces src at to and says whether it is a directory.
func copyChange(src, to string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return false, err
	}
	typ := st.Mode & unix.S_IFMT
	switch typ {
	case unix.S_IFREG:
		if err := os.Link(src, to); err == nil {
			return false, nil
		}
		if err := copyRegular(src, to); err != nil {
			return false, err
		}
	case unix.S_IFDIR:
		if err := os.Mkdir(to, 0o700); err != nil {
			return false, err
		}
	case unix.S_IFLNK:
		target, err := os.Readlink(src)
		if err != nil {
			return false, err
		}
		if err := os.Symlink(target, to); err != nil {
			return false, err
		}
	case unix.S_IFSOCK:
		return false, nil // tar cannot hold it
	default:
		if err := unix.Mknod(to, st.Mode, int(st.Rdev)); err != nil {
			return false, err
		}
	}
	if err := unix.Lchown(to, int(st.Uid), int(st.Gid)); err != nil {
		return false, err
	}
	if typ != unix.S_IFLNK {
		if err := unix.Fchmodat(unix.AT_FDCWD, to, st.Mode&0o7777, 0); err != nil {
			return false, err
		}
	}
	if err := copyXattrs(src, to); err != nil {
		return false, err
	}
	if typ != unix.S_IFDIR {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, to, []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return false, err
		}
	}
	return typ == unix.S_IFDIR, nil
}

func copyRegular(src, to string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = out.ReadFrom(in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

func copyXattrs(src, to string) error {
	names, err := xattrCall(func(b []byte) (int, error) { return unix.Llistxattr(src, b) })
	if errors.Is(err, unix.ENOTSUP) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, k := range strings.Split(strings.TrimSuffix(string(names), "\x00"), "\x00") {
		if k == "" || isOverlayXattr(k) {
			continue
		}
		v, err := xattrCall(func(b []byte) (int, error) { return unix.Lgetxattr(src, k, b) })
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return err
		}
		if err := unix.Lsetxattr(to, k, v, 0); err != nil {
			return fmt.Errorf("set xattr %s: %w", k, err)
		}
	}
	return nil
}

// markOpaque marks dir opaque as overlay does, in the user namespace of
// xattrs (settable without CAP_SYS_ADMIN), else the trusted one.
func markOpaque(dir string) error {
	err := unix.Lsetxattr(dir, "user.overlay.opaque", []byte("y"), 0)
	if err == nil {
		return nil
	}
	if err2 := unix.Lsetxattr(dir, "trusted.overlay.opaque", []byte("y"), 0); err2 != nil {
		return fmt.Errorf("mark opaque: %w", errors.Join(err, err2))
	}
	return nil
}

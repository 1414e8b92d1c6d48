package layers

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// WhiteoutMode says what Extract does with OCI whiteout entries.
type WhiteoutMode int

const (
	// ApplyWhiteouts makes .wh.NAME remove NAME and .wh..wh..opq remove
	// what earlier layers put in its directory; the markers themselves are
	// not written. Use it to flatten layers, in order, into one rootfs.
	ApplyWhiteouts WhiteoutMode = iota
	// KeepWhiteouts writes the markers as the empty files they are in the
	// tar, as for a snapshot of one layer alone.
	KeepWhiteouts
)

// ExtractOptions controls Extract.
type ExtractOptions struct {
	Whiteouts WhiteoutMode
	// Source names the layer in errors and warnings, e.g. its digest.
	Source string
	// Rootless skips device nodes and tolerates ownership the process cannot
	// set (ids outside its user namespace); each is reported through Warn.
	Rootless bool
	// Warn receives non-fatal problems; nil discards them.
	Warn func(msg string)
	// NoSameOwner leaves ownership to the extracting process (no chown).
	NoSameOwner bool
	// RecordOwner, when a chown is not permitted (rootless), records the
	// entry's owner in the OwnerXattr attribute instead of warning, so the
	// owner survives into layers made from the extracted tree (snapshots).
	RecordOwner bool
}

// maxExtractSymlinks bounds symlink resolution, as the kernel's ELOOP does.
const maxExtractSymlinks = 255

// Extract unpacks the uncompressed layer tar r into root, creating root if
// needed. It never writes outside root: entry names, hardlink targets and
// symlinks met while resolving a path are all interpreted as if root were
// "/", names that climb above the root are rejected, and the last component
// of every path is created or changed without following symlinks.
//
// An entry replaces what is at its path, except that a directory entry over
// a directory only updates its metadata; a non-directory over a directory
// removes that tree. Owners (unless NoSameOwner), modes including
// setuid/setgid/sticky, xattrs and times are set; directory times are set
// last. Errors name opts.Source and the entry.
func Extract(ctx context.Context, r io.Reader, root string, opts ExtractOptions) error {
	src := opts.Source
	if src == "" {
		src = "layer"
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fmt.Errorf("extract %s: %w", src, err)
	}
	rootFd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("extract %s: %w", src, &os.PathError{Op: "open", Path: root, Err: err})
	}
	x := &extractor{
		ctx:    ctx,
		root:   root,
		rootFd: rootFd,
		opts:   opts,
		src:    src,
		cache:  dirRef{fd: -1},
		buf:    make([]byte, copyBufSize),
	}
	if opts.Whiteouts == ApplyWhiteouts {
		x.written = make(map[string]struct{})
	}
	defer x.close()
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("extract %s: %w", src, err)
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("extract %s: read tar: %w", src, err)
		}
		if err := x.entry(hdr, tr); err != nil {
			return fmt.Errorf("extract %s: %s: %w", src, hdr.Name, err)
		}
	}
	if err := x.finishDirs(); err != nil {
		return fmt.Errorf("extract %s: %w", src, err)
	}
	return nil
}

type extractor struct {
	ctx    context.Context
	root   string
	rootFd int
	opts   ExtractOptions
	src    string
	// cache holds the last resolved parent directory; entries come sorted,
	// so consecutive ones usually share it.
	cacheName string
	cache     dirRef
	stale     bool // something the cached resolution went through may have changed
	// written holds the resolved paths this layer created (ApplyWhiteouts
	// only), which an opaque marker must keep.
	written map[string]struct{}
	dirs    []dirMeta
	buf     []byte
}

// dirRef is an open directory inside the root and its resolved path
// ("" is the root itself), which contains no symlinks.
type dirRef struct {
	fd   int
	path string
}

// dirMeta is what is set on a directory once everything is extracted.
type dirMeta struct {
	path         string
	mode         uint32
	fixMode      bool
	atime, mtime time.Time
}

func (x *extractor) close() {
	x.dropCache()
	unix.Close(x.rootFd)
}

func (x *extractor) dropCache() {
	if x.cache.fd >= 0 {
		unix.Close(x.cache.fd)
	}
	x.cache, x.cacheName, x.stale = dirRef{fd: -1}, "", false
}

func (x *extractor) warnf(name, format string, args ...any) {
	if x.opts.Warn != nil {
		x.opts.Warn(fmt.Sprintf("%s: %s: %s", x.src, name, fmt.Sprintf(format, args...)))
	}
}

// markWritten records that this layer wrote p (and so its parents).
func (x *extractor) markWritten(p string) {
	if x.written == nil {
		return
	}
	for p != "" {
		if _, ok := x.written[p]; ok {
			return
		}
		x.written[p] = struct{}{}
		p, _ = splitRel(p)
	}
}

// entryPath turns a tar name into a clean path relative to the root ("" for
// the root). Absolute names are taken as relative to the root; names that
// climb above it are an error.
func entryPath(name string) (string, error) {
	p := path.Clean(strings.TrimLeft(name, "/"))
	if p == ".." || strings.HasPrefix(p, "../") {
		return "", fmt.Errorf("path %q escapes the root", name)
	}
	if p == "." {
		return "", nil
	}
	return p, nil
}

func splitRel(p string) (dir, base string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", p
	}
	return p[:i], p[i+1:]
}

func joinRel(dir, base string) string {
	if dir == "" {
		return base
	}
	return dir + "/" + base
}

// resolveDir opens the directory name (clean, relative) inside the root,
// resolving symlinks as if the root were "/" (".." stops at the root). With
// create, missing directories are made (0755). The caller closes the fd.
func (x *extractor) resolveDir(name string, create bool) (dirRef, error) {
	var stack []dirRef // directories below the root
	cur := func() int {
		if len(stack) == 0 {
			return x.rootFd
		}
		return stack[len(stack)-1].fd
	}
	closeAll := func(keep int) {
		for _, d := range stack[keep:] {
			unix.Close(d.fd)
		}
		stack = stack[:keep]
	}
	todo := strings.Split(name, "/")
	links := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) > 0 {
				closeAll(len(stack) - 1)
			}
			continue
		}
		var st unix.Stat_t
		err := unix.Fstatat(cur(), c, &st, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, unix.ENOENT) && create {
			if err = unix.Mkdirat(cur(), c, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
				err = unix.Fstatat(cur(), c, &st, unix.AT_SYMLINK_NOFOLLOW)
			}
		}
		if err != nil {
			closeAll(0)
			return dirRef{}, &os.PathError{Op: "resolve", Path: name, Err: err}
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			fd, err := unix.Openat(cur(), c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				closeAll(0)
				return dirRef{}, &os.PathError{Op: "resolve", Path: name, Err: err}
			}
			p := c
			if len(stack) > 0 {
				p = stack[len(stack)-1].path + "/" + c
			}
			stack = append(stack, dirRef{fd, p})
		case unix.S_IFLNK:
			links++
			target, err := readlinkat(cur(), c)
			if err == nil && links > maxExtractSymlinks {
				err = unix.ELOOP
			}
			if err != nil {
				closeAll(0)
				return dirRef{}, &os.PathError{Op: "resolve", Path: name, Err: err}
			}
			if strings.HasPrefix(target, "/") {
				closeAll(0)
			}
			todo = append(strings.Split(target, "/"), todo...)
		default:
			closeAll(0)
			return dirRef{}, &os.PathError{Op: "resolve", Path: name, Err: unix.ENOTDIR}
		}
	}
	if len(stack) == 0 {
		fd, err := unix.Openat(x.rootFd, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return dirRef{}, err
		}
		return dirRef{fd, ""}, nil
	}
	last := stack[len(stack)-1]
	for _, d := range stack[:len(stack)-1] {
		unix.Close(d.fd)
	}
	return last, nil
}

// parentDir is resolveDir through the one-entry cache; the cache owns the
// returned fd, which stays valid until the next parentDir call.
func (x *extractor) parentDir(name string, create bool) (dirRef, error) {
	if x.cache.fd >= 0 && !x.stale && x.cacheName == name {
		return x.cache, nil
	}
	d, err := x.resolveDir(name, create)
	if err != nil {
		return dirRef{}, err
	}
	x.dropCache()
	x.cache, x.cacheName = d, name
	return d, nil
}

// remove deletes name in dirfd (a whole tree for a directory). Removing a
// directory or symlink can change how later names resolve, so the cached
// resolution is not reused (dirfd itself stays valid).
func (x *extractor) remove(dirfd int, name string, st *unix.Stat_t) error {
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		x.stale = true
	}
	return removeAllAt(dirfd, name)
}

// removeAllAt removes name in dirfd and, for a directory, everything below
// it, never following symlinks.
func removeAllAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return &os.PathError{Op: "remove", Path: name, Err: err}
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "remove", Path: name, Err: err}
	}
	f := os.NewFile(uintptr(fd), name)
	names, err := f.Readdirnames(-1)
	if err == nil {
		for _, n := range names {
			if err = removeAllAt(fd, n); err != nil {
				break
			}
		}
	}
	f.Close()
	if err != nil {
		return err
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return &os.PathError{Op: "remove", Path: name, Err: err}
	}
	return nil
}

func (x *extractor) entry(hdr *tar.Header, r io.Reader) error {
	name, err := entryPath(hdr.Name)
	if err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	case tar.TypeReg, tar.TypeGNUSparse, tar.TypeDir, tar.TypeSymlink, tar.TypeLink,
		tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
	default:
		return fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}
	if hdr.Uid < 0 || hdr.Gid < 0 {
		return fmt.Errorf("invalid owner %d:%d", hdr.Uid, hdr.Gid)
	}
	if name == "" && hdr.Typeflag != tar.TypeDir {
		return errors.New("a non-directory entry cannot replace the root")
	}
	dir, base := splitRel(name)
	if x.opts.Whiteouts == ApplyWhiteouts && strings.HasPrefix(base, whiteoutPrefix) {
		return x.whiteout(dir, base)
	}
	if (hdr.Typeflag == tar.TypeChar || hdr.Typeflag == tar.TypeBlock) && x.opts.Rootless {
		x.warnf(hdr.Name, "device node %d:%d not created (rootless)", hdr.Devmajor, hdr.Devminor)
		return nil
	}
	parent, canon := dirRef{fd: x.rootFd}, ""
	if name == "" {
		base = "."
	} else {
		if parent, err = x.parentDir(dir, true); err != nil {
			return err
		}
		canon = joinRel(parent.path, base)
	}
	n := node{pfd: parent.fd, base: base, fd: -1, path: canon}

	if hdr.Typeflag == tar.TypeLink {
		target, tbase, err := x.linkTarget(hdr.Linkname)
		if err != nil {
			return err
		}
		defer unix.Close(target.fd)
		if done, err := x.clear(n, hdr, target.fd, tbase); done || err != nil {
			return err
		}
		if err := unix.Linkat(target.fd, tbase, parent.fd, base, 0); err != nil {
			return &os.LinkError{Op: "link", Old: hdr.Linkname, New: name, Err: err}
		}
		return nil
	}
	if _, err := x.clear(n, hdr, -1, ""); err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse:
		return x.writeFile(n, hdr, r)
	case tar.TypeDir:
		return x.makeDir(n, hdr)
	case tar.TypeSymlink:
		if err := unix.Symlinkat(hdr.Linkname, parent.fd, base); err != nil {
			return &os.LinkError{Op: "symlink", Old: hdr.Linkname, New: name, Err: err}
		}
		n.symlink = true
	default: // char, block, fifo
		mode := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		err := unix.Mknodat(parent.fd, base, mode|uint32(hdr.Mode&0o777), int(dev))
		if errors.Is(err, unix.EPERM) && mode != unix.S_IFIFO {
			x.warnf(hdr.Name, "device node %d:%d not created: %v", hdr.Devmajor, hdr.Devminor, err)
			return nil
		}
		if err != nil {
			return &os.PathError{Op: "mknod", Path: name, Err: err}
		}
	}
	return x.setMeta(n, hdr, uint32(hdr.Mode&0o7777))
}

// linkTarget resolves a hardlink target inside the root: its directory
// (the caller closes it) and base name. It must exist and not be a
// directory.
func (x *extractor) linkTarget(linkname string) (dirRef, string, error) {
	tname, err := entryPath(linkname)
	if err != nil {
		return dirRef{}, "", fmt.Errorf("hard link: %w", err)
	}
	if tname == "" {
		return dirRef{}, "", errors.New("hard link to the root")
	}
	tdir, tbase := splitRel(tname)
	d, err := x.resolveDir(tdir, false)
	if err != nil {
		return dirRef{}, "", fmt.Errorf("hard link target %s: %w", linkname, err)
	}
	var st unix.Stat_t
	if err := unix.Fstatat(d.fd, tbase, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		unix.Close(d.fd)
		return dirRef{}, "", fmt.Errorf("hard link target %s: %w", linkname, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		unix.Close(d.fd)
		return dirRef{}, "", fmt.Errorf("hard link target %s is a directory", linkname)
	}
	return d, tbase, nil
}

// clear makes way for hdr at n: whatever is there is removed, except a
// directory under a directory entry (they merge) and, for a hardlink, the
// target file itself (then done is true: nothing is left to do).
func (x *extractor) clear(n node, hdr *tar.Header, tfd int, tbase string) (done bool, err error) {
	x.markWritten(n.path)
	var st unix.Stat_t
	if err := unix.Fstatat(n.pfd, n.base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, &os.PathError{Op: "lstat", Path: n.path, Err: err}
	}
	if hdr.Typeflag == tar.TypeDir && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return false, nil
	}
	if tfd >= 0 {
		var tst unix.Stat_t
		if unix.Fstatat(tfd, tbase, &tst, unix.AT_SYMLINK_NOFOLLOW) == nil && tst.Dev == st.Dev && tst.Ino == st.Ino {
			return true, nil
		}
	}
	return false, x.remove(n.pfd, n.base, &st)
}

// node is an extracted file: base in the directory pfd, optionally open as
// fd, at the resolved path (relative to the root).
type node struct {
	pfd     int
	base    string
	fd      int
	path    string
	symlink bool
}

func (x *extractor) writeFile(n node, hdr *tar.Header, r io.Reader) error {
	fd, err := unix.Openat(n.pfd, n.base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &os.PathError{Op: "create", Path: n.path, Err: err}
	}
	f := os.NewFile(uintptr(fd), n.path)
	defer f.Close()
	if err := x.copySparse(f, r, hdr.Size); err != nil {
		return err
	}
	n.fd = fd
	return x.setMeta(n, hdr, uint32(hdr.Mode&0o7777))
}

var zeroBlock [4096]byte

// copySparse writes size bytes from r to the new file f, leaving holes where
// whole 4 KiB blocks are zero.
func (x *extractor) copySparse(f *os.File, r io.Reader, size int64) error {
	var off int64
	holes := false
	for off < size {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		chunk := x.buf[:min(int64(len(x.buf)), size-off)]
		if _, err := io.ReadFull(r, chunk); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read content: %w", err)
		}
		for i := 0; i < len(chunk); {
			j := min(i+len(zeroBlock), len(chunk))
			if bytes.Equal(chunk[i:j], zeroBlock[:j-i]) {
				holes = true
				i = j
				continue
			}
			for j < len(chunk) {
				k := min(j+len(zeroBlock), len(chunk))
				if bytes.Equal(chunk[j:k], zeroBlock[:k-j]) {
					break
				}
				j = k
			}
			if _, err := f.WriteAt(chunk[i:j], off+int64(i)); err != nil {
				return err
			}
			i = j
		}
		off += int64(len(chunk))
	}
	if holes {
		return f.Truncate(size)
	}
	return nil
}

// makeDir creates (or, when one is there, updates) the directory n.
func (x *extractor) makeDir(n node, hdr *tar.Header) error {
	if err := unix.Mkdirat(n.pfd, n.base, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return &os.PathError{Op: "mkdir", Path: n.path, Err: err}
	}
	fd, err := unix.Openat(n.pfd, n.base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: n.path, Err: err}
	}
	defer unix.Close(fd)
	n.fd = fd
	// Keep the directory writable for us until its contents are in; the
	// real mode is set with its times at the end.
	mode := uint32(hdr.Mode & 0o7777)
	m := dirMeta{path: n.path, mode: mode, fixMode: mode&0o700 != 0o700, mtime: hdr.ModTime, atime: hdr.AccessTime}
	x.dirs = append(x.dirs, m)
	return x.setMeta(n, hdr, mode|0o700)
}

// setMeta sets owner, mode, xattrs and (except for directories) times, in
// that order: chown clears setuid/setgid bits and file capabilities.
func (x *extractor) setMeta(n node, hdr *tar.Header, mode uint32) error {
	if !x.opts.NoSameOwner {
		var err error
		if n.fd >= 0 {
			err = unix.Fchown(n.fd, hdr.Uid, hdr.Gid)
		} else {
			err = unix.Fchownat(n.pfd, n.base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW)
		}
		if err != nil {
			if !x.opts.Rootless || !(errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EPERM)) {
				return &os.PathError{Op: fmt.Sprintf("chown %d:%d", hdr.Uid, hdr.Gid), Path: n.path, Err: err}
			}
			if !x.opts.RecordOwner || x.recordOwner(n, hdr) != nil {
				x.warnf(hdr.Name, "owner %d:%d not set (rootless): %v", hdr.Uid, hdr.Gid, err)
			}
		}
	}
	if !n.symlink {
		var err error
		if n.fd >= 0 {
			err = unix.Fchmod(n.fd, mode)
		} else {
			err = unix.Fchmodat(n.pfd, n.base, mode, 0)
		}
		if err != nil {
			return &os.PathError{Op: "chmod", Path: n.path, Err: err}
		}
	}
	x.setXattrs(n, hdr)
	if hdr.Typeflag == tar.TypeDir {
		return nil
	}
	return setTimes(n.pfd, n.base, hdr.AccessTime, hdr.ModTime)
}

// recordOwner stores hdr's owner in the OwnerXattr of n.
func (x *extractor) recordOwner(n node, hdr *tar.Header) error {
	v := []byte(strconv.Itoa(hdr.Uid) + ":" + strconv.Itoa(hdr.Gid))
	if n.fd >= 0 {
		return unix.Fsetxattr(n.fd, OwnerXattr, v, 0)
	}
	// Symlinks: user xattrs are not allowed on them; their owner is
	// rarely meaningful, so a failure here only warns.
	return unix.Lsetxattr(filepath.Join(x.root, n.path), OwnerXattr, v, 0)
}

func (x *extractor) setXattrs(n node, hdr *tar.Header) {
	var keys []string
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		attr := strings.TrimPrefix(k, "SCHILY.xattr.")
		if isOverlayXattr(attr) {
			x.warnf(hdr.Name, "overlay xattr %s ignored", attr)
			continue
		}
		v := []byte(hdr.PAXRecords[k])
		var err error
		if n.fd >= 0 {
			err = unix.Fsetxattr(n.fd, attr, v, 0)
		} else {
			// The resolved path has no symlinks and the last component
			// is not followed.
			err = unix.Lsetxattr(path.Join(x.root, n.path), attr, v, 0)
		}
		if err != nil {
			x.warnf(hdr.Name, "xattr %s not set: %v", attr, err)
		}
	}
}

func setTimes(dirfd int, name string, atime, mtime time.Time) error {
	if atime.IsZero() {
		atime = mtime
	}
	at, err1 := unix.TimeToTimespec(atime)
	mt, err2 := unix.TimeToTimespec(mtime)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("%s: time %v out of range", name, mtime)
	}
	if err := unix.UtimesNanoAt(dirfd, name, []unix.Timespec{at, mt}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimes", Path: name, Err: err}
	}
	return nil
}

// whiteout applies the marker base found in directory dir.
func (x *extractor) whiteout(dir, base string) error {
	if base != whiteoutOpaque && strings.HasPrefix(base, whiteoutMeta) {
		return nil // other AUFS bookkeeping, meaningless here
	}
	victim := strings.TrimPrefix(base, whiteoutPrefix)
	if base != whiteoutOpaque && (victim == "" || victim == "." || victim == "..") {
		return fmt.Errorf("invalid whiteout %q", base)
	}
	d, err := x.parentDir(dir, false)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil // nothing there to hide
	}
	if err != nil {
		return err
	}
	if base == whiteoutOpaque {
		return x.opaque(d)
	}
	var st unix.Stat_t
	if err := unix.Fstatat(d.fd, victim, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return &os.PathError{Op: "lstat", Path: joinRel(d.path, victim), Err: err}
	}
	return x.remove(d.fd, victim, &st)
}

// opaque removes everything in d that this layer did not write.
func (x *extractor) opaque(d dirRef) error {
	fd, err := unix.Openat(d.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: d.path, Err: err}
	}
	f := os.NewFile(uintptr(fd), d.path)
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return &os.PathError{Op: "readdir", Path: d.path, Err: err}
	}
	x.stale = true
	for _, n := range names {
		if _, keep := x.written[joinRel(d.path, n)]; keep {
			continue
		}
		if err := removeAllAt(d.fd, n); err != nil {
			return err
		}
	}
	return nil
}

// finishDirs sets directory modes and times, deepest last-written first.
// A directory replaced or removed by a later entry is skipped.
func (x *extractor) finishDirs() error {
	for i := len(x.dirs) - 1; i >= 0; i-- {
		m := x.dirs[i]
		dir, base := splitRel(m.path)
		if m.path == "" {
			dir, base = "", "."
		}
		pfd, err := x.openExact(dir)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if m.fixMode {
				err = unix.Fchmodat(pfd, base, m.mode, 0)
			}
			if err == nil {
				err = setTimes(pfd, base, m.atime, m.mtime)
			}
			if err != nil {
				unix.Close(pfd)
				return fmt.Errorf("%s: %w", m.path, err)
			}
		}
		unix.Close(pfd)
	}
	return nil
}

// openExact opens the resolved directory path p without following any
// symlink: a component that is no longer a directory is an error.
func (x *extractor) openExact(p string) (int, error) {
	fd, err := unix.Openat(x.rootFd, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil || p == "" {
		return fd, err
	}
	for _, c := range strings.Split(p, "/") {
		next, err := unix.Openat(fd, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

package layers

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
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
	// OverlayWhiteouts builds the overlay upper directory of consecutive
	// layers extracted in order into one root: .wh.NAME removes what
	// earlier layers put at NAME and leaves a 0/0 character device
	// there, .wh..wh..opq removes what they put in its directory and
	// marks it opaque, and a directory replacing a non-directory is
	// marked opaque too. WriteTar turns the result into one layer with
	// the same effect as the layers had one by one (see Store.Squash).
	OverlayWhiteouts
	// RejectWhiteouts fails on an entry named .wh.* with a
	// *WhiteoutNameError: for archives that are not layers (ADD's),
	// whose every file must land in the layer as a file, which no ".wh."
	// name can.
	RejectWhiteouts
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
	// spillBytes overrides spillBytes, and beforeFinish is called once
	// every entry is in, before directory metadata is set: for tests.
	spillBytes   int
	beforeFinish func()
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
	limit := spillBytes
	if opts.spillBytes > 0 {
		limit = opts.spillBytes
	}
	x.dirs.dir, x.dirs.limit = root, limit
	if opts.Whiteouts == ApplyWhiteouts || opts.Whiteouts == OverlayWhiteouts {
		x.written = newPathSet(root, limit)
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
			if wn := (*WhiteoutNameError)(nil); errors.As(err, &wn) {
				return fmt.Errorf("extract %s: %w", src, err) // it names the entry
			}
			return fmt.Errorf("extract %s: %s: %w", src, hdr.Name, err)
		}
	}
	if opts.beforeFinish != nil {
		opts.beforeFinish()
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
	// written holds the resolved paths this layer created, and their
	// parents (ApplyWhiteouts and OverlayWhiteouts only): its whiteouts
	// and opaque markers hide lower layers' files, never these. lastParent
	// is the parent whose ancestors were added last.
	written    *pathSet
	lastParent string
	dirs       dirList
	buf        []byte
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
	if x.written != nil {
		x.written.Close()
	}
	x.dirs.close()
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
// Entries come sorted, so the parents are those of the entry before
// most of the time, and then are not added again.
func (x *extractor) markWritten(p string) error {
	if x.written == nil {
		return nil
	}
	if err := x.written.Add(p); err != nil {
		return err
	}
	parent, _ := splitRel(p)
	if parent == x.lastParent {
		return nil
	}
	x.lastParent = parent
	for q := parent; q != ""; q, _ = splitRel(q) {
		if err := x.written.Add(q); err != nil {
			return err
		}
	}
	return nil
}

// wrote reports whether this layer wrote p or something below it.
func (x *extractor) wrote(p string) (bool, error) {
	if x.written == nil {
		return false, nil
	}
	return x.written.Has(p)
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
	if x.opts.Whiteouts == RejectWhiteouts {
		for _, c := range strings.Split(name, "/") {
			if IsWhiteoutName(c) {
				return &WhiteoutNameError{Path: hdr.Name}
			}
		}
	} else if x.opts.Whiteouts != KeepWhiteouts && strings.HasPrefix(base, whiteoutPrefix) {
		return x.whiteout(dir, base, hdr)
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
		done, err := x.clear(n, hdr, target.fd, tbase)
		if err != nil {
			return err
		}
		if !done {
			if err := unix.Linkat(target.fd, tbase, parent.fd, base, 0); err != nil {
				return &os.LinkError{Op: "link", Old: hdr.Linkname, New: name, Err: err}
			}
		}
		// The link's own header applies to the inode it shares with its
		// target, so the last header wins, as with docker's and
		// containerd's extractors: owner and xattrs always, mode and
		// times unless the target is a symlink.
		var st unix.Stat_t
		if err := unix.Fstatat(parent.fd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return &os.PathError{Op: "lstat", Path: name, Err: err}
		}
		n.symlink = st.Mode&unix.S_IFMT == unix.S_IFLNK
		return x.setMeta(n, hdr, uint32(hdr.Mode&0o7777))
	}
	hides := hdr.Typeflag == tar.TypeDir && x.opts.Whiteouts == OverlayWhiteouts && x.isNonDir(n)
	if _, err := x.clear(n, hdr, -1, ""); err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse:
		return x.writeFile(n, hdr, r)
	case tar.TypeDir:
		if err := x.makeDir(n, hdr); err != nil || !hides {
			return err
		}
		// What an earlier layer replaced by a non-directory (or
		// removed) stays hidden under the new directory.
		return markOpaque(filepath.Join(x.root, n.path))
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
	if err := x.markWritten(n.path); err != nil {
		return false, err
	}
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
	if err := x.dirs.add(m); err != nil {
		return err
	}
	return x.setMeta(n, hdr, mode|0o700)
}

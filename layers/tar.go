package layers

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// OCI whiteout names.
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// WhiteoutNameError reports a file whose name starts with ".wh.". No OCI
// layer can carry one: layers use such names to mark deleted files (the
// image spec: "it is not possible to create a filesystem which has a file
// or directory with a name beginning with .wh."), so it would delete the
// file it names from the layers below instead of being a file. WriteTar,
// COPY and ADD refuse one rather than write it.
type WhiteoutNameError struct {
	// Path is the file's absolute path in the image, or its name in the
	// archive it came from.
	Path string
}

func (e *WhiteoutNameError) Error() string {
	return fmt.Sprintf("%s: a name starting with %q cannot be carried in an OCI layer, where such names mark deleted files", e.Path, whiteoutPrefix)
}

// IsWhiteoutName reports whether name (a base name) starts with ".wh.",
// the prefix OCI layers reserve for whiteouts.
func IsWhiteoutName(name string) bool { return strings.HasPrefix(name, whiteoutPrefix) }

// CheckNames walks dir, a layer directory WriteTar would read, and
// returns a *WhiteoutNameError for the first file WriteTar would refuse,
// nil when there is none. It reads names and types only: a caller that
// must not lose dir to a failed commit (ibuild umount) checks first.
func CheckNames(ctx context.Context, dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == dir || !IsWhiteoutName(d.Name()) {
			return nil
		}
		if d.Type()&fs.ModeCharDevice != 0 {
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err == nil && isOverlayWhiteout(&st) {
				return nil
			}
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		return &WhiteoutNameError{Path: "/" + filepath.ToSlash(rel)}
	})
}

// copyBufSize is the chunk size used to stream file contents.
const copyBufSize = 256 << 10

// WriteTar writes a deterministic layer tar of dir to w. dir holds exactly
// the layer's content; it is not included as an entry itself.
//
// Entries come in walk order: each directory's children sorted by name, a
// directory before its children. Headers are PAX with numeric ids only (no
// user or group names; a file's OwnerXattr, when set, replaces its owner and
// is not written), no atime or ctime, and mtimes truncated to seconds and
// clamped to opts.SourceDateEpoch when it is set. Symlinks are never
// followed. Files that share an inode within the layer become one regular
// file (the first in walk order) and hardlinks to it. Extended attributes are
// kept as SCHILY.xattr PAX records; file contents are streamed.
//
// dir may be an overlay upper directory: a 0/0 character device NAME becomes
// an empty regular file .wh.NAME, a directory marked opaque with
// trusted.overlay.opaque=y or user.overlay.opaque=y is followed by a
// DIR/.wh..wh..opq entry, and overlay's own xattrs are dropped. Sockets are
// skipped: tar cannot represent them. Any other file whose name starts
// with ".wh." is a *WhiteoutNameError: in a layer it would be a whiteout.
//
// WriteTar does not close w.
func WriteTar(ctx context.Context, w io.Writer, dir string, opts TarOptions) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("tar %s: %w", dir, &os.PathError{Op: "open", Path: dir, Err: err})
	}
	bw := bufio.NewWriterSize(w, copyBufSize)
	t := &tarWriter{
		ctx:   ctx,
		tw:    tar.NewWriter(bw),
		root:  dir,
		links: make(map[fileID]string),
		buf:   make([]byte, copyBufSize),
	}
	if opts.SourceDateEpoch != nil {
		e := time.Unix(opts.SourceDateEpoch.Unix(), 0)
		t.epoch = &e
	}
	if opaque, err := t.isOpaque(dir); err != nil {
		unix.Close(fd)
		return err
	} else if opaque {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return fmt.Errorf("tar %s: %w", dir, err)
		}
		if err := t.writeMarker(whiteoutOpaque, &st); err != nil {
			unix.Close(fd)
			return err
		}
	}
	if err := t.walk(fd, ""); err != nil {
		return err
	}
	if err := t.tw.Close(); err != nil {
		return fmt.Errorf("tar %s: %w", dir, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("tar %s: %w", dir, err)
	}
	return nil
}

type fileID struct{ dev, ino uint64 }

type tarWriter struct {
	ctx   context.Context
	tw    *tar.Writer
	root  string
	epoch *time.Time
	links map[fileID]string // first tar name of each multiply-linked inode
	buf   []byte
}

type tarChild struct {
	name    string // name on disk
	tarName string // base name in the tar (differs for whiteouts)
	st      unix.Stat_t
}

// walk writes the children of the open directory fd (whose tar name is rel,
// "" or ending in "/") and closes fd.
func (t *tarWriter) walk(fd int, rel string) error {
	f := os.NewFile(uintptr(fd), filepath.Join(t.root, rel))
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("tar %s: %w", f.Name(), err)
	}
	kids := make([]tarChild, 0, len(names))
	for _, n := range names {
		c := tarChild{name: n, tarName: n}
		if err := unix.Fstatat(fd, n, &c.st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("tar %s: %w", filepath.Join(f.Name(), n), err)
		}
		if isOverlayWhiteout(&c.st) {
			c.tarName = whiteoutPrefix + n
		} else if IsWhiteoutName(n) {
			return &WhiteoutNameError{Path: "/" + rel + n}
		}
		kids = append(kids, c)
	}
	sort.SliceStable(kids, func(i, j int) bool { return kids[i].tarName < kids[j].tarName })
	for i := range kids {
		if err := t.ctx.Err(); err != nil {
			return err
		}
		if err := t.entry(fd, rel, &kids[i]); err != nil {
			return err
		}
	}
	return nil
}

func isOverlayWhiteout(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && uint64(st.Rdev) == 0
}

func (t *tarWriter) mtime(st *unix.Stat_t) time.Time {
	m := time.Unix(int64(st.Mtim.Sec), 0)
	if t.epoch != nil && m.After(*t.epoch) {
		return *t.epoch
	}
	return m
}

// writeMarker writes an empty whiteout file name whose mtime comes from st.
// Markers carry no owner, mode or xattrs: only their name means anything.
func (t *tarWriter) writeMarker(name string, st *unix.Stat_t) error {
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		ModTime:  t.mtime(st),
		Format:   tar.FormatPAX,
	}
	if err := t.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	return nil
}

func (t *tarWriter) entry(dirfd int, rel string, c *tarChild) error {
	name := rel + c.tarName
	full := filepath.Join(t.root, rel, c.name)
	st := &c.st
	if isOverlayWhiteout(st) {
		return t.writeMarker(name, st)
	}
	hdr := &tar.Header{
		Name:    name,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: t.mtime(st),
		Format:  tar.FormatPAX,
	}
	typ := st.Mode & unix.S_IFMT
	if typ == unix.S_IFSOCK {
		return nil
	}
	xa, err := readXattrs(full)
	if err != nil {
		return fmt.Errorf("tar %s: %w", full, err)
	}
	if xa.owner != "" {
		om, err := ParseOwnerXattr(xa.owner)
		if err != nil {
			return fmt.Errorf("tar %s: %s: %w", full, OwnerXattr, err)
		}
		hdr.Uid, hdr.Gid = om.UID, om.GID
		if om.HasMode {
			hdr.Mode = int64(om.Mode & 0o7777)
		}
	}
	for k, v := range xa.xattrs {
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = make(map[string]string, len(xa.xattrs))
		}
		hdr.PAXRecords["SCHILY.xattr."+k] = v
	}
	if typ != unix.S_IFDIR && uint64(st.Nlink) > 1 {
		id := fileID{uint64(st.Dev), uint64(st.Ino)}
		if first, ok := t.links[id]; ok {
			// A hardlink carries the inode's full metadata, as docker's
			// archiver writes it: extractors apply each header to the
			// shared inode.
			hdr.Typeflag = tar.TypeLink
			hdr.Linkname = first
			return t.writeHeader(hdr)
		}
		t.links[id] = name
	}
	switch typ {
	case unix.S_IFREG:
		hdr.Typeflag = tar.TypeReg
		hdr.Size = st.Size
		if err := t.writeHeader(hdr); err != nil {
			return err
		}
		if st.Size == 0 {
			return nil // nothing to read, even without read permission
		}
		return t.writeContent(dirfd, c.name, full, st.Size)
	case unix.S_IFDIR:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
		if err := t.writeHeader(hdr); err != nil {
			return err
		}
		if xa.opaque {
			if err := t.writeMarker(hdr.Name+whiteoutOpaque, st); err != nil {
				return err
			}
		}
		fd, err := unix.Openat(dirfd, c.name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("tar %s: %w", full, err)
		}
		return t.walk(fd, hdr.Name)
	case unix.S_IFLNK:
		target, err := readlinkat(dirfd, c.name)
		if err != nil {
			return fmt.Errorf("tar %s: %w", full, err)
		}
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = target
	case unix.S_IFCHR, unix.S_IFBLK:
		hdr.Typeflag = tar.TypeChar
		if typ == unix.S_IFBLK {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor = int64(unix.Major(uint64(st.Rdev)))
		hdr.Devminor = int64(unix.Minor(uint64(st.Rdev)))
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
	default:
		return fmt.Errorf("tar %s: unsupported file type %#o", full, typ)
	}
	return t.writeHeader(hdr)
}

func (t *tarWriter) writeHeader(hdr *tar.Header) error {
	if err := t.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("tar %s: %w", hdr.Name, err)
	}
	return nil
}

// writeContent streams exactly size bytes of the file name in dirfd.
func (t *tarWriter) writeContent(dirfd int, name, full string, size int64) error {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("tar %s: %w", full, err)
	}
	f := os.NewFile(uintptr(fd), full)
	defer f.Close()
	var done int64
	for done < size {
		if err := t.ctx.Err(); err != nil {
			return err
		}
		b := t.buf[:min(int64(len(t.buf)), size-done)]
		n, err := f.Read(b)
		if n > 0 {
			if _, werr := t.tw.Write(b[:n]); werr != nil {
				return fmt.Errorf("tar %s: %w", full, werr)
			}
			done += int64(n)
		}
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("tar %s: file shrank while being read (%d of %d bytes)", full, done, size)
		}
		if err != nil {
			return fmt.Errorf("tar %s: %w", full, err)
		}
	}
	return nil
}

// isOpaque reports whether the directory path carries an overlay opaque mark.
func (t *tarWriter) isOpaque(path string) (bool, error) {
	xa, err := readXattrs(path)
	if err != nil {
		return false, fmt.Errorf("tar %s: %w", path, err)
	}
	return xa.opaque, nil
}

// isOverlayXattr reports whether key is overlayfs's own bookkeeping.
func isOverlayXattr(key string) bool {
	return strings.HasPrefix(key, "trusted.overlay.") || strings.HasPrefix(key, "user.overlay.")
}

// fileXattrs are a file's xattrs as a layer sees them.
type fileXattrs struct {
	xattrs map[string]string // to write into the layer
	opaque bool              // overlay marks the directory opaque
	owner  string            // the OwnerXattr value, if any
}

// readXattrs reads the xattrs of path, not following a final symlink. A
// file system without xattr support has none.
func readXattrs(path string) (fileXattrs, error) {
	var out fileXattrs
	names, err := xattrCall(func(b []byte) (int, error) { return unix.Llistxattr(path, b) })
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return out, nil
		}
		return out, fmt.Errorf("list xattrs: %w", err)
	}
	for _, k := range strings.Split(strings.TrimSuffix(string(names), "\x00"), "\x00") {
		if k == "" {
			continue
		}
		v, err := xattrCall(func(b []byte) (int, error) { return unix.Lgetxattr(path, k, b) })
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile
		}
		if err != nil {
			return out, fmt.Errorf("get xattr %s: %w", k, err)
		}
		switch {
		case k == OwnerXattr:
			out.owner = string(v)
		case isOverlayXattr(k):
			if strings.HasSuffix(k, ".overlay.opaque") && string(v) == "y" {
				out.opaque = true
			}
		default:
			if out.xattrs == nil {
				out.xattrs = make(map[string]string)
			}
			out.xattrs[k] = string(v)
		}
	}
	return out, nil
}

// xattrCall runs a size-probing xattr syscall, growing the buffer as needed.
func xattrCall(call func([]byte) (int, error)) ([]byte, error) {
	for size := 256; ; {
		b := make([]byte, size)
		n, err := call(b)
		if errors.Is(err, unix.ERANGE) && size < 1<<20 {
			if m, err := call(nil); err == nil && m > size {
				size = m
			} else {
				size *= 2
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		return b[:n], nil
	}
}

// readlinkat reads the target of the symlink name in dirfd.
func readlinkat(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		b := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, b)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(b[:n]), nil
		}
	}
}

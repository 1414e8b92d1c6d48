package layers

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

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
	if hdr.Typeflag == tar.TypeDir || (hdr.Typeflag == tar.TypeLink && n.symlink) {
		return nil // directory times are set last; a symlink's stay its own
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

// whiteout applies the marker base, of the entry hdr, found in directory
// dir.
func (x *extractor) whiteout(dir, base string, hdr *tar.Header) error {
	if base != whiteoutOpaque && strings.HasPrefix(base, whiteoutMeta) {
		return nil // other AUFS bookkeeping, meaningless here
	}
	victim := strings.TrimPrefix(base, whiteoutPrefix)
	if base != whiteoutOpaque && (victim == "" || victim == "." || victim == "..") {
		return fmt.Errorf("invalid whiteout %q", base)
	}
	if x.opts.Whiteouts == OverlayWhiteouts {
		return x.overlayWhiteout(dir, base, victim, hdr)
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
	if own, err := x.wrote(joinRel(d.path, victim)); err != nil || own {
		return err // a whiteout hides lower layers' files, not its own layer's
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

// opaque removes everything in d that this layer did not write, at any
// depth: a directory this layer wrote into keeps only what it wrote there,
// as the OCI image spec and an overlay mount have it.
func (x *extractor) opaque(d dirRef) error {
	x.stale = true
	return x.keepWritten(d.fd, d.path)
}

// keepWritten is opaque for the directory dpath, open as dirfd. It reads
// the directory a chunk of names at a time, so a huge one costs no more
// memory than a small one.
func (x *extractor) keepWritten(dirfd int, dpath string) error {
	fd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dpath, Err: err}
	}
	f := os.NewFile(uintptr(fd), dpath)
	defer f.Close()
	for {
		names, rerr := f.Readdirnames(readdirChunk)
		for _, n := range names {
			p := joinRel(dpath, n)
			own, err := x.wrote(p)
			if err != nil {
				return err
			}
			if !own {
				if err := removeAllAt(fd, n); err != nil {
					return err
				}
				continue
			}
			var st unix.Stat_t
			if err := unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
				continue
			}
			cfd, err := unix.Openat(fd, n, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return &os.PathError{Op: "open", Path: p, Err: err}
			}
			err = x.keepWritten(cfd, p)
			unix.Close(cfd)
			if err != nil {
				return err
			}
		}
		if rerr == io.EOF || len(names) == 0 {
			return nil
		}
		if rerr != nil {
			return &os.PathError{Op: "readdir", Path: dpath, Err: rerr}
		}
	}
}

// finishDirs sets directory modes and times, deepest last-written first.
// A directory replaced or removed by a later entry is skipped.
func (x *extractor) finishDirs() error {
	return x.dirs.reverse(func(m dirMeta) error {
		dir, base := splitRel(m.path)
		if m.path == "" {
			dir, base = "", "."
		}
		pfd, err := x.openExact(dir)
		if err != nil {
			return nil // replaced or removed by a later entry
		}
		defer unix.Close(pfd)
		var st unix.Stat_t
		if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return nil
		}
		switch {
		case m.fixMode && x.opts.Rootless && x.opts.RecordOwner && unix.Geteuid() != 0:
			// Unprivileged: a directory its owner cannot search could
			// not be read back; it keeps rwx for us and its mode is
			// recorded for the tar writer.
			err = recordDirMode(pfd, base, m.mode, &st)
		case m.fixMode:
			err = unix.Fchmodat(pfd, base, m.mode, 0)
		}
		if err == nil {
			err = setTimes(pfd, base, m.atime, m.mtime)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", m.path, err)
		}
		return nil
	})
}

// recordDirMode records mode as the in-image mode of the directory base
// of pfd (stat st) in its OwnerXattr, with the owner recorded there, or
// else its own.
func recordDirMode(pfd int, base string, mode uint32, st *unix.Stat_t) error {
	fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	om := OwnerMode{UID: int(st.Uid), GID: int(st.Gid)}
	buf := make([]byte, 64)
	if n, err := unix.Fgetxattr(fd, OwnerXattr, buf); err == nil {
		if rec, err := ParseOwnerXattr(string(buf[:n])); err == nil {
			om = rec
		}
	}
	om.Mode, om.HasMode = fs.FileMode(mode&0o7777), true
	return unix.Fsetxattr(fd, OwnerXattr, []byte(FormatOwnerXattr(om)), 0)
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

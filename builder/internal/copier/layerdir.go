package copier

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ibuild/ibuild/layers"
)

// ownerXattr records the in-image owner of a file when the process cannot
// chown it (an unprivileged build outside a user namespace). The layer tar
// writer reads it back; it never reaches a layer as an xattr.
const ownerXattr = layers.OwnerXattr

// LayerDir is a fresh directory that becomes one layer. Paths given to its
// methods are absolute in-image paths; it resolves them against the image
// (so a symlink in the image is followed inside the image, never onto the
// host) and creates them in the layer directory without following any
// symlink there.
type LayerDir struct {
	dir string
	// base is the image below the layer; nil for scratch or COPY --link.
	base *layers.RootFS
	// now is the mtime of directories the step creates.
	now time.Time
	// resolved caches in-image directory -> resolved in-image directory.
	resolved map[string]string
	// dirTimes are applied last, deepest first, so writing children does
	// not disturb them.
	dirTimes map[string]time.Time
	// links maps a source (dev, inode) to the first layer path written
	// from it, so hardlinks stay hardlinks.
	links map[[2]uint64]string
	// Epoch is the build's SOURCE_DATE_EPOCH: a file newer than it is
	// never hard-linked from a snapshot (committing clamps its mtime).
	Epoch *time.Time
	root  bool
	// newDirMode, when set, is the mode of directories the step creates
	// (COPY --chmod gives them its mode, as BuildKit does; without root
	// the host directory keeps rwx for its owner, to be read back, and
	// the in-image mode is recorded in OwnerXattr); else 0755. It is
	// applied by Finish, deepest first.
	newDirMode *fs.FileMode
	// pendingModes are the directories made with newDirMode, and their
	// owners, waiting for Finish.
	pendingModes map[string]Owner
}

// NewLayerDir returns the layer directory dir (empty), over the image
// base (nil for scratch or COPY --link); directories the step creates get
// the mtime now.
func NewLayerDir(dir string, base *layers.RootFS, now time.Time) *LayerDir {
	return &LayerDir{
		dir:      dir,
		base:     base,
		now:      now,
		resolved: map[string]string{"/": "/"},
		dirTimes: map[string]time.Time{},
		links:    map[[2]uint64]string{},
		root:     os.Geteuid() == 0,
	}
}

func (l *LayerDir) host(p string) string {
	return filepath.Join(l.dir, filepath.FromSlash(path.Clean("/"+p)))
}

// lstat describes p as the merged view (this layer over the image) has it.
func (l *LayerDir) lstat(p string) (fs.FileInfo, string, error) {
	if fi, err := os.Lstat(l.host(p)); err == nil {
		return fi, l.host(p), nil
	}
	if l.base == nil {
		return nil, "", &fs.PathError{Op: "lstat", Path: p, Err: fs.ErrNotExist}
	}
	return l.base.Lstat(p)
}

// resolve follows symlinks in p within the merged view.
func (l *LayerDir) resolve(p string) (string, error) {
	return ResolveIn(p, l.lstat)
}

// isDir reports whether the in-image path p (resolved) is a directory.
func (l *LayerDir) isDir(p string) bool {
	fi, _, err := l.lstat(p)
	return err == nil && fi.IsDir()
}

// MkdirAll makes sure the directory p exists in the layer, resolving
// symlinks of the image on the way, and returns the resolved path. Parents
// that exist in the image are copied into the layer with their metadata
// (so the layer's tar carries them unchanged); new ones get mode 0755, the
// owner o, and the step's time.
func (l *LayerDir) MkdirAll(p string, o Owner) (string, error) {
	p = path.Clean("/" + p)
	if r, ok := l.resolved[p]; ok {
		return r, nil
	}
	parent, err := l.MkdirAll(path.Dir(p), o)
	if err != nil {
		return "", err
	}
	name := path.Base(p)
	cand := path.Join(parent, name)
	// Follow a symlink of the image at this component.
	if fi, _, err := l.lstat(cand); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		r, err := l.resolve(cand)
		if err != nil {
			return "", err
		}
		r, err = l.MkdirAll(r, o)
		if err != nil {
			return "", err
		}
		l.resolved[p] = r
		return r, nil
	}
	if err := l.ensureDir(cand, o); err != nil {
		return "", err
	}
	l.resolved[p] = cand
	return cand, nil
}

// ensureDir creates the resolved directory cand in the layer if missing.
func (l *LayerDir) ensureDir(cand string, o Owner) error {
	h := l.host(cand)
	if fi, err := os.Lstat(h); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("cannot create directory %s: a file created by this step is in the way", cand)
		}
		return nil
	}
	if l.base != nil {
		if fi, bh, err := l.base.Lstat(cand); err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("cannot create directory %s: it is a file in the image", cand)
			}
			if err := os.Mkdir(h, 0o755); err != nil {
				return err
			}
			uid, gid := StatOwner(fi, bh)
			if err := l.setMeta(h, fi.Mode(), Owner{uid, gid}, false); err != nil {
				return err
			}
			l.dirTimes[h] = fi.ModTime()
			return nil
		}
	}
	if err := os.Mkdir(h, 0o755); err != nil {
		return err
	}
	if err := l.setMeta(h, fs.ModeDir|0o755, o, false); err != nil {
		return err
	}
	if l.newDirMode != nil {
		if l.pendingModes == nil {
			l.pendingModes = map[string]Owner{}
		}
		l.pendingModes[h] = o
	}
	l.dirTimes[h] = l.now
	return nil
}

// clearTarget removes a non-directory already written at host path h by
// this step, so it can be replaced.
func clearTarget(h, p string) error {
	fi, err := os.Lstat(h)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("cannot replace directory %s with a non-directory", p)
	}
	return os.Remove(h)
}

// WriteFile creates the regular file p (resolved parent) from r. It
// copies 64 MiB at a time (in the kernel when r is a file), and stops
// between two with ctx's error once ctx is done.
func (l *LayerDir) WriteFile(ctx context.Context, p string, r io.Reader, mode fs.FileMode, o Owner, mtime time.Time) error {
	h := l.host(p)
	if err := clearTarget(h, p); err != nil {
		return err
	}
	f, err := os.OpenFile(h, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	for {
		if err := ctx.Err(); err != nil {
			f.Close()
			return err
		}
		_, err := io.CopyN(f, r, 64<<20)
		if err == io.EOF {
			break
		}
		if err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := l.setMeta(h, mode, o, false); err != nil {
		return err
	}
	return SetMtime(h, mtime)
}

// symlink creates the symlink p -> target.
func (l *LayerDir) symlink(p, target string, o Owner, mtime time.Time) error {
	h := l.host(p)
	if err := clearTarget(h, p); err != nil {
		return err
	}
	if err := os.Symlink(target, h); err != nil {
		return err
	}
	if err := l.setMeta(h, fs.ModeSymlink|0o777, o, true); err != nil {
		return err
	}
	return SetMtime(h, mtime)
}

// linkFrom makes the layer path p a hard link to host, a file of a
// snapshot whose metadata (mode, owner, mtime) p keeps: no byte is
// copied. It reports false when it cannot (another file system, too many
// links), and the caller copies.
func (l *LayerDir) linkFrom(p, host string) (bool, error) {
	h := l.host(p)
	if err := clearTarget(h, p); err != nil {
		return false, err
	}
	if err := os.Link(host, h); err != nil {
		return false, nil
	}
	return true, nil
}

// hardlink makes p a hardlink of the earlier written in-layer path first.
func (l *LayerDir) hardlink(p, first string) error {
	h := l.host(p)
	if err := clearTarget(h, p); err != nil {
		return err
	}
	return os.Link(l.host(first), h)
}

// special creates a device node or fifo (as root only).
func (l *LayerDir) special(p string, fi fs.FileInfo, o Owner) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !l.root {
		return fmt.Errorf("cannot copy special file %s: needs root", p)
	}
	h := l.host(p)
	if err := clearTarget(h, p); err != nil {
		return err
	}
	if err := unix.Mknod(h, st.Mode, int(st.Rdev)); err != nil {
		return err
	}
	if err := l.setMeta(h, fi.Mode(), o, false); err != nil {
		return err
	}
	return SetMtime(h, fi.ModTime())
}

// setMeta sets owner then mode (chown clears setuid bits, so mode last).
func (l *LayerDir) setMeta(h string, mode fs.FileMode, o Owner, isLink bool) error {
	return l.setMetaAs(h, mode, mode, o, isLink)
}

// setMetaAs is setMeta for a file whose mode on the host (hostMode) must
// differ from its in-image mode: without root the in-image mode is
// recorded with the owner for the tar writer.
func (l *LayerDir) setMetaAs(h string, mode, hostMode fs.FileMode, o Owner, isLink bool) error {
	if l.root {
		if err := os.Lchown(h, o.UID, o.GID); err != nil {
			return err
		}
	} else {
		// Unprivileged: record the in-image owner (and a mode the host
		// file cannot have) for the tar writer.
		om := layers.OwnerMode{UID: o.UID, GID: o.GID}
		if hostMode != mode {
			om.Mode, om.HasMode = toSyscallMode(mode), true
		}
		if err := unix.Lsetxattr(h, ownerXattr, []byte(layers.FormatOwnerXattr(om)), 0); err != nil && !isLink {
			return fmt.Errorf("record owner of %s: %w", h, err)
		}
	}
	if isLink {
		return nil
	}
	return os.Chmod(h, toSyscallMode(hostMode))
}

// toSyscallMode keeps permission and setuid/setgid/sticky bits in the form
// os.Chmod wants.
func toSyscallMode(m fs.FileMode) fs.FileMode {
	return m & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

// SetMtime sets the access and modification times of the host path h to
// t, without following a final symlink.
func SetMtime(h string, t time.Time) error {
	ts := []unix.Timespec{unix.NsecToTimespec(t.UnixNano()), unix.NsecToTimespec(t.UnixNano())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, h, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// Finish applies directory mtimes, deepest first.
func (l *LayerDir) Finish() error {
	pending := make([]string, 0, len(l.pendingModes))
	for d := range l.pendingModes {
		pending = append(pending, d)
	}
	sort.Slice(pending, func(i, j int) bool { return strings.Count(pending[i], "/") > strings.Count(pending[j], "/") })
	for _, d := range pending {
		mode, hostMode := fs.ModeDir|*l.newDirMode, fs.ModeDir|*l.newDirMode
		if !l.root {
			// The owner must still search the directory to read it back
			// into the layer: the tar writer takes mode from the record.
			hostMode |= 0o700
		}
		if err := l.setMetaAs(d, mode, hostMode, l.pendingModes[d], false); err != nil {
			return err
		}
	}
	dirs := make([]string, 0, len(l.dirTimes))
	for d := range l.dirTimes {
		dirs = append(dirs, d)
	}
	sort.Slice(dirs, func(i, j int) bool { return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/") })
	for _, d := range dirs {
		if err := SetMtime(d, l.dirTimes[d]); err != nil {
			return err
		}
	}
	return nil
}

// StatOwner returns the in-image owner of a file of a snapshot or context:
// the recorded owner when an unprivileged extraction could not chown it,
// else its real owner.
func StatOwner(fi fs.FileInfo, host string) (int, int) {
	buf := make([]byte, 64)
	if n, err := unix.Lgetxattr(host, ownerXattr, buf); err == nil {
		if om, err := layers.ParseOwnerXattr(string(buf[:n])); err == nil {
			return om.UID, om.GID
		}
	}
	if fi.Mode()&fs.ModeSymlink != 0 && os.Geteuid() != 0 {
		// An unprivileged extraction can neither chown a symlink nor
		// record its owner (no user xattrs on symlinks): symlinks are
		// taken as root's, which they almost always are.
		return 0, 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid), int(st.Gid)
	}
	return 0, 0
}

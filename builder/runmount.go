package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"golang.org/x/sys/unix"

	"github.com/ibuild/ibuild/builder/sandbox"
	"github.com/ibuild/ibuild/layers"
)

// defaultSSHTarget is where type=ssh mounts go by default (BuildKit's),
// followed by the mount's index among the step's ssh mounts.
const defaultSSHTarget = "/run/buildkit/ssh_agent."

// runMounts is a step's RUN --mount list made ready for the sandbox.
type runMounts struct {
	mounts []sandbox.Mount
	// env is added to the step's environment (secrets as variables,
	// SSH_AUTH_SOCK).
	env []string
	// points are the in-image mount points, for cleaning the layer.
	points []mountPointSpec
	// unlock releases the cache locks held for the step.
	unlock []func()
}

// mountPointSpec is an in-image path the sandbox mounts over.
type mountPointSpec struct {
	path string
	dir  bool
}

// close releases what the step held.
func (r *runMounts) close() {
	for _, u := range r.unlock {
		u()
	}
	r.unlock = nil
}

// prepareMounts turns the step's --mount flags into sandbox mounts. The
// targets are resolved in rootfs; tmp is the step's scratch directory,
// removed after it.
func (s *stageRun) prepareMounts(ctx context.Context, ms []*instructions.Mount, rootfs *layers.RootFS, tmp string) (_ *runMounts, err error) {
	r := &runMounts{}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	sshCount := 0
	for i, m := range ms {
		scratch := filepath.Join(tmp, "mount-"+strconv.Itoa(i))
		if err := os.Mkdir(scratch, 0o700); err != nil {
			return nil, err
		}
		var sm *sandbox.Mount
		var err error
		target := m.Target
		switch m.Type {
		case instructions.MountTypeBind:
			sm, err = s.bindMount(ctx, m, scratch)
		case instructions.MountTypeCache:
			sm, err = s.cacheMount(ctx, m, r)
		case instructions.MountTypeTmpfs:
			sm = &sandbox.Mount{Type: sandbox.MountTmpfs, Size: m.SizeLimit}
		case instructions.MountTypeSecret:
			sm, target, err = s.secretMount(m, scratch, r)
		case instructions.MountTypeSSH:
			if target == "" {
				target = defaultSSHTarget + strconv.Itoa(sshCount)
			}
			sshCount++
			sm, err = s.sshMount(m, target, r)
		default:
			err = fmt.Errorf("mount type %q is not supported", m.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("--mount=type=%s: %w", m.Type, err)
		}
		if sm == nil {
			continue // an optional secret or ssh socket not provided
		}
		if target == "" {
			return nil, fmt.Errorf("--mount=type=%s needs a target", m.Type)
		}
		if !path.IsAbs(target) {
			wd := s.c.imageConfig().WorkingDir
			if wd == "" {
				wd = "/"
			}
			target = path.Join(wd, target)
		}
		if path.Clean(target) == "/" {
			return nil, fmt.Errorf("--mount=type=%s: cannot mount over /", m.Type)
		}
		if sm.Target, err = rootfs.Resolve(target); err != nil {
			return nil, fmt.Errorf("--mount target=%s: %w", target, err)
		}
		if sm.Target == "/" {
			return nil, fmt.Errorf("--mount target=%s resolves to /", target)
		}
		r.mounts = append(r.mounts, *sm)
		r.points = append(r.points, mountPointSpec{path: sm.Target, dir: !sm.File})
	}
	return r, nil
}

// bindMount is type=bind: a path of the build context, a stage or an
// image. A stage's or image's tree is an overlay of its snapshot
// directories (read-only, or with a throwaway upper for rw), of which the
// source path is bound: nothing is copied. A context directory is bound
// as it is, or, when a .dockerignore applies, as a copy (hard links where
// possible) without the excluded files; rw puts a throwaway overlay over
// it.
func (s *stageRun) bindMount(ctx context.Context, m *instructions.Mount, scratch string) (*sandbox.Mount, error) {
	src := "/" + m.Source
	if m.From != "" {
		dirs, rootfs, err := s.mountFrom(ctx, m.From)
		if err != nil {
			return nil, err
		}
		rp, err := rootfs.Resolve(src)
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", m.Source, err)
		}
		fi, _, err := rootfs.Lstat(rp)
		if err != nil {
			return nil, fmt.Errorf("source %s in %s: %w", path.Clean(src), m.From, fs.ErrNotExist)
		}
		return overlayMount(scratch, dirs, rp, fi.IsDir(), m.ReadOnly)
	}
	cfs := s.b.ctx
	rp, err := cfs.Resolve(src)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", m.Source, err)
	}
	fi, host, err := cfs.Lstat(rp)
	if err != nil {
		return nil, fmt.Errorf("source %s: not found in the build context", path.Clean(src))
	}
	switch {
	case fi.IsDir():
		if cfs.ignore != nil {
			copyDir := filepath.Join(scratch, "context")
			if err := copyContextTree(cfs, rp, copyDir); err != nil {
				return nil, fmt.Errorf("source %s: %w", path.Clean(src), err)
			}
			host = copyDir
		}
		if m.ReadOnly {
			return &sandbox.Mount{Type: sandbox.MountBind, Source: host, ReadOnly: true}, nil
		}
		return overlayMount(scratch, []string{host}, "/", true, false)
	case fi.Mode().IsRegular():
		if m.ReadOnly {
			return &sandbox.Mount{Type: sandbox.MountBind, Source: host, ReadOnly: true, File: true}, nil
		}
		cp := filepath.Join(scratch, "file")
		if err := copyRegular(host, cp, fi); err != nil {
			return nil, err
		}
		return &sandbox.Mount{Type: sandbox.MountBind, Source: cp, File: true}, nil
	}
	return nil, fmt.Errorf("source %s: not a directory or a regular file", path.Clean(src))
}

// overlayMount mounts an overlay of dirs (bottom to top) and binds sub of
// it; rw gives it a throwaway upper directory in scratch.
func overlayMount(scratch string, dirs []string, sub string, dir, readOnly bool) (*sandbox.Mount, error) {
	empty := filepath.Join(scratch, "empty")
	stage := filepath.Join(scratch, "merged")
	for _, d := range []string{empty, stage} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, err
		}
	}
	for _, d := range dirs {
		if strings.ContainsAny(d, ":,") {
			return nil, fmt.Errorf("cannot use %s as an overlay layer (it holds ':' or ',')", d)
		}
	}
	// An overlay without an upper directory needs two lowers.
	m := &sandbox.Mount{
		Type: sandbox.MountOverlay, Lowers: append([]string{empty}, dirs...), Stage: stage,
		Sub: sub, File: !dir, ReadOnly: readOnly,
	}
	if !readOnly {
		m.Upper, m.Work = filepath.Join(scratch, "upper"), filepath.Join(scratch, "work")
		for _, d := range []string{m.Upper, m.Work} {
			if err := os.Mkdir(d, 0o755); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// mountFrom is the snapshot directories and tree of a stage (by name or
// index) or an image, for from=.
func (s *stageRun) mountFrom(ctx context.Context, from string) ([]string, *layers.RootFS, error) {
	if i, ok := s.b.stageRef(from); ok {
		if i == s.index {
			return nil, nil, fmt.Errorf("from=%s refers to the stage itself", from)
		}
		dep := s.b.stages[i]
		rootfs, err := dep.RootFS(ctx)
		if err != nil {
			return nil, nil, err
		}
		// dep.RootFS filled the container's snapshot directories: this only
		// reads them.
		dirs, err := dep.c.snapshotDirs(ctx)
		return dirs, rootfs, err
	}
	img, err := s.b.resolveImage(ctx, from, s.platform)
	if err != nil {
		return nil, nil, fmt.Errorf("from=%s: %w", from, err)
	}
	if img == nil {
		return nil, nil, fmt.Errorf("from=%s: scratch has no files to mount", from)
	}
	dirs, err := s.b.opts.Store.Snapshots(ctx, img, s.b.warn)
	if err != nil {
		return nil, nil, fmt.Errorf("from=%s: %w", from, err)
	}
	return dirs, layers.NewRootFS(dirs), nil
}

// copyContextTree copies the context directory p to dst without what
// .dockerignore excludes, hard-linking regular files where it can (the
// mount is read-only or under a throwaway overlay, so the context's files
// cannot change through it).
func copyContextTree(cfs *contextFS, p, dst string) error {
	fi, host, err := cfs.Lstat(p)
	if err != nil {
		return err
	}
	switch {
	case fi.IsDir():
		if err := os.Mkdir(dst, fi.Mode().Perm()); err != nil {
			return err
		}
		ents, err := cfs.ReadDir(p)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if err := copyContextTree(cfs, path.Join(p, e.Name()), filepath.Join(dst, e.Name())); err != nil {
				return err
			}
		}
		return os.Chmod(dst, fi.Mode().Perm()|fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
	case fi.Mode().IsRegular():
		if err := os.Link(host, dst); err == nil {
			return nil
		}
		return copyRegular(host, dst, fi)
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(host)
		if err != nil {
			return err
		}
		return os.Symlink(target, dst)
	}
	return nil // devices, sockets and pipes are not part of a context
}

// copyRegular copies the regular file src (described by fi) to dst.
func copyRegular(src, dst string, fi fs.FileInfo) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, fi.Mode().Perm())
}

// cacheMount is type=cache: a directory kept in the store at
// STOREROOT/cache/<id>, locked for the step as sharing says.
func (s *stageRun) cacheMount(ctx context.Context, m *instructions.Mount, r *runMounts) (*sandbox.Mount, error) {
	if m.From != "" || m.Source != "" {
		return nil, errors.New("seeding a cache with from= or source= is not supported by this version of ibuild")
	}
	id := m.CacheID
	if id == "" {
		id = m.Target
	}
	if id == "" {
		return nil, errors.New("needs a target")
	}
	root := filepath.Join(s.b.opts.Store.Root(), "cache")
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	base := filepath.Join(root, cacheDirName(cacheKey(id, m)))
	dir := base
	var unlock func()
	var err error
	switch m.CacheSharing {
	case instructions.MountSharingShared, "":
		unlock, err = lockFile(ctx, base+".lock", lockShared, true)
	case instructions.MountSharingLocked:
		unlock, err = lockFile(ctx, base+".lock", lockExclusive, true)
	case instructions.MountSharingPrivate:
		// The first instance no one else uses; a new one when all are.
		for n := 0; unlock == nil && err == nil; n++ {
			dir = base
			if n > 0 {
				dir = base + "-" + strconv.Itoa(n)
			}
			unlock, err = lockFile(ctx, dir+".lock", lockExclusive, false)
		}
	default:
		return nil, fmt.Errorf("sharing=%s: want shared, private or locked", m.CacheSharing)
	}
	if err != nil {
		return nil, fmt.Errorf("lock cache %s: %w", id, err)
	}
	r.unlock = append(r.unlock, unlock)
	if err := os.Mkdir(dir, 0o755); err == nil {
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
		if err := os.Chown(dir, int(uid), int(gid)); err != nil {
			return nil, err
		}
		if err := os.Chmod(dir, unixMode(uint32(mode))); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	return &sandbox.Mount{Type: sandbox.MountBind, Source: dir, ReadOnly: m.ReadOnly}, nil
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

// cacheDirName is a file name for a cache id: its safe characters and a
// hash of the whole id, so distinct ids never share a directory.
func cacheDirName(id string) string {
	safe := []rune{}
	for _, c := range id {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_' {
			safe = append(safe, c)
		} else {
			safe = append(safe, '_')
		}
		if len(safe) >= 64 {
			break
		}
	}
	sum := sha256.Sum256([]byte(id))
	return strings.Trim(string(safe), "._") + "-" + hex.EncodeToString(sum[:6])
}

// Lock kinds for lockFile.
const (
	lockShared    = unix.LOCK_SH
	lockExclusive = unix.LOCK_EX
)

// lockFile takes a flock of kind on file. With wait it polls until it
// gets it or ctx ends; without, it returns a nil unlock when the lock is
// held elsewhere.
func lockFile(ctx context.Context, file string, kind int, wait bool) (func(), error) {
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), kind|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, err
		}
		if !wait {
			f.Close()
			return nil, nil
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// unixMode converts permission bits as chmod(2) takes them.
func unixMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&unix.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	if m&unix.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

// secretMount is type=secret: the secret as a read-only file in a tmpfs
// (never on disk, never in the layer), as an environment variable, or
// both. It returns the target, "" for an environment-only secret. Errors
// never hold the secret's bytes.
func (s *stageRun) secretMount(m *instructions.Mount, scratch string, r *runMounts) (*sandbox.Mount, string, error) {
	id := m.CacheID
	if m.Source != "" {
		id = m.Source
	}
	if id == "" {
		id = path.Base(m.Target)
	}
	target := m.Target
	asFile := target != "" || m.Env == nil
	if asFile && target == "" {
		target = "/run/secrets/" + id
	}
	src, ok := s.b.opts.Secrets[id]
	if !ok {
		if m.Required {
			return nil, "", fmt.Errorf("secret %q is required but was not provided (ibuild build --secret id=%s,src=FILE or env=VAR)", id, id)
		}
		return nil, "", nil
	}
	data := src.Value
	if data == nil {
		if src.File == "" {
			return nil, "", fmt.Errorf("secret %q has neither a file nor a value", id)
		}
		var err error
		if data, err = os.ReadFile(src.File); err != nil {
			return nil, "", fmt.Errorf("secret %q: read %s: %w", id, src.File, errors.Unwrap(err))
		}
	}
	if m.Env != nil {
		name := *m.Env
		if name == "" {
			name = id
		}
		r.env = append(r.env, name+"="+string(data))
	}
	if !asFile {
		return nil, "", nil
	}
	mode, uid, gid := uint64(0o400), uint64(0), uint64(0)
	if m.Mode != nil {
		mode = *m.Mode
	}
	if m.UID != nil {
		uid = *m.UID
	}
	if m.GID != nil {
		gid = *m.GID
	}
	return &sandbox.Mount{
		Type: sandbox.MountFile, Stage: scratch, File: true, ReadOnly: true,
		Data: slices.Clone(data), Mode: uint32(mode), UID: uint32(uid), GID: uint32(gid),
	}, target, nil
}

// sshMount is type=ssh: the agent socket given for the id, bound at
// target, with SSH_AUTH_SOCK naming it.
func (s *stageRun) sshMount(m *instructions.Mount, target string, r *runMounts) (*sandbox.Mount, error) {
	id := m.CacheID
	if id == "" {
		id = "default"
	}
	sock, ok := s.b.opts.SSH[id]
	if !ok || sock == "" {
		if m.Required {
			return nil, fmt.Errorf("ssh agent %q is required but was not provided (ibuild build --ssh %s=SOCKET)", id, id)
		}
		return nil, nil
	}
	fi, err := os.Stat(sock)
	if err != nil {
		return nil, fmt.Errorf("ssh agent %q: %w", id, err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return nil, fmt.Errorf("ssh agent %q: %s is not a socket", id, sock)
	}
	r.env = append(r.env, "SSH_AUTH_SOCK="+target)
	return &sandbox.Mount{Type: sandbox.MountBind, Source: sock, File: true}, nil
}

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

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"golang.org/x/sys/unix"

	"github.com/ibuild/ibuild/builder/dockerfile"
	"github.com/ibuild/ibuild/builder/internal/copier"
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
// removed after it. extras are the flags' buildah options (nil for none)
// and user the step's uid and gid, which U gives a mount's source.
func (s *stageRun) prepareMounts(ctx context.Context, ms []*instructions.Mount, extras []dockerfile.MountExtras, user copier.Owner, rootfs *layers.RootFS, tmp string) (_ *runMounts, err error) {
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
		var ex dockerfile.MountExtras
		if i < len(extras) {
			ex = extras[i]
		}
		if !ex.Empty() && m.Type != instructions.MountTypeBind && m.Type != instructions.MountTypeCache {
			return nil, fmt.Errorf("--mount=type=%s: option %s is buildah's and applies to bind and cache mounts only", m.Type, ex)
		}
		// z, Z and relabel need nothing: steps run in ibuild's own SELinux
		// context (no container label is set), which can already read
		// what it can mount.
		var sm *sandbox.Mount
		var err error
		target := m.Target
		switch m.Type {
		case instructions.MountTypeBind:
			sm, err = s.bindMount(ctx, m, scratch, ex.Chown, user)
		case instructions.MountTypeCache:
			sm, err = s.cacheMount(ctx, m, r, scratch, ex.Chown, user)
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
// it. With chown (buildah's U) the source is copied instead, and the copy
// given to user, so neither the context nor a snapshot changes.
func (s *stageRun) bindMount(ctx context.Context, m *instructions.Mount, scratch string, chown bool, user copier.Owner) (*sandbox.Mount, error) {
	src := "/" + m.Source
	cfs := s.b.ctx
	if nc := s.b.treeContext(m.From); m.From != "" && nc != nil {
		cfs = nc.tree
	} else if m.From != "" {
		from, err := s.mountFrom(ctx, m.From)
		if err != nil {
			return nil, err
		}
		rp, err := from.rootfs.Resolve(src)
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", m.Source, err)
		}
		fi, _, err := from.rootfs.Lstat(rp)
		if err != nil {
			return nil, fmt.Errorf("source %s in %s: %w", path.Clean(src), m.From, fs.ErrNotExist)
		}
		if chown {
			return ownedCopyMount(&imageFS{from.rootfs}, rp, scratch, user, m.ReadOnly)
		}
		return overlayMount(scratch, from.dirs, rp, fi.IsDir(), m.ReadOnly)
	}
	rp, err := cfs.Resolve(src)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", m.Source, err)
	}
	fi, host, err := cfs.Lstat(rp)
	if err != nil {
		return nil, fmt.Errorf("source %s: not found in the build context%s", path.Clean(src), cfs.Label())
	}
	if chown && (fi.IsDir() || fi.Mode().IsRegular()) {
		return ownedCopyMount(cfs, rp, scratch, user, m.ReadOnly)
	}
	switch {
	case fi.IsDir():
		if cfs.Filtered() {
			copyDir := filepath.Join(scratch, "context")
			if err := copySourceTree(cfs, rp, copyDir, true); err != nil {
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

// fromTree is the tree a from= mount reads: a stage's or an image's
// snapshot directories (bottom first), their merged view, and the chain ID
// naming their content ("" for no layer).
type fromTree struct {
	dirs   []string
	rootfs *layers.RootFS
	chain  string
}

// mountFrom is the tree of a stage (by name or index) or an image, for
// from=.
func (s *stageRun) mountFrom(ctx context.Context, from string) (*fromTree, error) {
	if nc := s.b.treeContext(from); nc != nil {
		return nil, cacheMountFromTree(nc)
	}
	if i, ok := s.b.stageRef(from); ok {
		if i == s.index {
			return nil, fmt.Errorf("from=%s refers to the stage itself", from)
		}
		dep := s.b.stages[i]
		rootfs, err := dep.RootFS(ctx)
		if err != nil {
			return nil, err
		}
		// dep.RootFS filled the container's snapshot directories: this only
		// reads them.
		dirs, err := dep.c.snapshotDirs(ctx)
		if err != nil {
			return nil, err
		}
		return &fromTree{dirs: dirs, rootfs: rootfs, chain: dep.c.chainID()}, nil
	}
	img, err := s.b.resolveImage(ctx, from, s.platform)
	if err != nil {
		return nil, fmt.Errorf("from=%s: %w", from, err)
	}
	if img == nil {
		return nil, fmt.Errorf("from=%s: scratch has no files to mount", from)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("from=%s: %w", from, err)
	}
	dirs, err := s.b.opts.Store.Snapshots(ctx, img, s.b.warn)
	if err != nil {
		return nil, fmt.Errorf("from=%s: %w", from, err)
	}
	t := &fromTree{dirs: dirs, rootfs: layers.NewRootFS(dirs)}
	if ids := cfg.RootFS.DiffIDs; len(ids) > 0 {
		t.chain = layers.ChainIDs(ids)[len(ids)-1].String()
	}
	return t, nil
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
			return nil, "", &MissingSecretError{ID: id}
		}
		return nil, "", nil
	}
	data, err := readSecret(id, src)
	if err != nil {
		return nil, "", err
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
			return nil, &MissingSecretError{ID: id, SSH: true}
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

// MaxSecretSize bounds a secret's bytes, as BuildKit bounds them.
const MaxSecretSize = 500 << 10

// readSecret returns the secret id's bytes: its Value, or at most
// MaxSecretSize bytes of its File (a regular file, or what /dev/stdin and
// the like lead to).
func readSecret(id string, src SecretSource) ([]byte, error) {
	tooBig := func(n int64) error {
		return fmt.Errorf("secret %q is %d bytes, over the limit of %d (500 KiB, as BuildKit): pass a smaller secret, such as a token or a key, not a bundle", id, n, MaxSecretSize)
	}
	if src.Value != nil {
		if len(src.Value) > MaxSecretSize {
			return nil, tooBig(int64(len(src.Value)))
		}
		return src.Value, nil
	}
	if src.File == "" {
		return nil, fmt.Errorf("secret %q has neither a file nor a value", id)
	}
	f, err := os.Open(src.File)
	if err != nil {
		return nil, fmt.Errorf("secret %q: read %s: %w", id, src.File, errors.Unwrap(err))
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() > MaxSecretSize {
		return nil, tooBig(fi.Size())
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxSecretSize+1))
	if err != nil {
		return nil, fmt.Errorf("secret %q: read %s: %w", id, src.File, err)
	}
	if len(data) > MaxSecretSize {
		return nil, tooBig(int64(len(data)))
	}
	return data, nil
}

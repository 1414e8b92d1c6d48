package layers

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// SquashOptions controls Store.Squash.
type SquashOptions struct {
	// CommitOptions say how the squashed layer is compressed and whether
	// its mtimes are clamped.
	CommitOptions
	// All says the layers are an image's whole stack, with nothing
	// below: whiteouts are applied and the result has none (as for
	// --squash-all). Otherwise the layers go on top of layers that are
	// kept, and the result keeps a whiteout for every path they removed
	// and an opaque marker for every directory they emptied, since what
	// they hide may exist below.
	All bool
	// Warn receives non-fatal problems, such as device nodes a rootless
	// process cannot create; nil discards them.
	Warn func(msg string)
}

// Squash stores one layer equivalent to the consecutive layers ls
// (bottom first): applied on whatever is below them, it gives the same
// file system as applying them one by one. Later entries replace earlier
// ones; a file added and removed within ls is not in the result.
// Owners, modes, mtimes, xattrs and hardlinks are kept as the layers had
// them (mtimes clamped as opts.SourceDateEpoch says).
//
// The layers are extracted in order into a temporary directory under
// the store (see OverlayWhiteouts, or ApplyWhiteouts with opts.All),
// which is then committed with CommitDir and removed. Whiteouts are 0/0
// character devices, which Linux lets unprivileged processes create. A
// hardlink in ls must point to a file in ls. As with CommitDir, the
// caller holds Lock(ctx, false) until the result is referenced.
func (s *Store) Squash(ctx context.Context, ls []v1.Layer, opts SquashOptions) (Descriptor, error) {
	if len(ls) == 0 {
		return Descriptor{}, errors.New("squash: no layers")
	}
	dir, err := s.TempDir("squash-")
	if err != nil {
		return Descriptor{}, fmt.Errorf("squash: %w", err)
	}
	defer forceRemoveAll(dir)
	mode := OverlayWhiteouts
	if opts.All {
		mode = ApplyWhiteouts
	}
	for i, l := range ls {
		if err := extractLayer(ctx, l, dir, i, mode, opts.Warn); err != nil {
			return Descriptor{}, fmt.Errorf("squash: %w", err)
		}
	}
	d, err := s.blobs.CommitDir(ctx, dir, opts.CommitOptions)
	if err != nil {
		return Descriptor{}, fmt.Errorf("squash: %w", err)
	}
	return d, nil
}

// extractLayer extracts l, the layer at index i of the squashed range,
// into dir, reading it to the end so a verifying reader checks it all.
func extractLayer(ctx context.Context, l v1.Layer, dir string, i int, mode WhiteoutMode, warn func(string)) error {
	src := layerName(l, i)
	rc, err := l.Uncompressed()
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	defer rc.Close()
	err = Extract(ctx, rc, dir, ExtractOptions{
		Whiteouts:   mode,
		Source:      src,
		Rootless:    os.Geteuid() != 0,
		RecordOwner: true,
		Warn:        warn,
	})
	if err != nil {
		return err // Extract names src
	}
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	return nil
}

// overlayWhiteout applies the marker base (victim is the name it hides)
// in directory dir as an overlay upper directory records it: see
// OverlayWhiteouts. The directory is created if an earlier layer did not
// make it: the marker must be kept for the layers below.
func (x *extractor) overlayWhiteout(dir, base, victim string, hdr *tar.Header) error {
	d, err := x.parentDir(dir, true)
	if err != nil {
		return err
	}
	if base == whiteoutOpaque {
		if err := x.opaque(d); err != nil {
			return err
		}
		return markOpaque(filepath.Join(x.root, d.path))
	}
	p := joinRel(d.path, victim)
	if own, err := x.wrote(p); err != nil || own {
		return err // a whiteout hides lower layers' files, not its own layer's
	}
	var st unix.Stat_t
	switch err := unix.Fstatat(d.fd, victim, &st, unix.AT_SYMLINK_NOFOLLOW); {
	case err == nil:
		if err := x.remove(d.fd, victim, &st); err != nil {
			return err
		}
	case !errors.Is(err, unix.ENOENT):
		return &os.PathError{Op: "lstat", Path: p, Err: err}
	}
	if err := unix.Mknodat(d.fd, victim, unix.S_IFCHR, 0); err != nil {
		return &os.PathError{Op: "mknod whiteout", Path: p, Err: err}
	}
	return setTimes(d.fd, victim, hdr.AccessTime, hdr.ModTime)
}

// isNonDir reports whether something other than a directory is at n.
func (x *extractor) isNonDir(n node) bool {
	var st unix.Stat_t
	return unix.Fstatat(n.pfd, n.base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR
}

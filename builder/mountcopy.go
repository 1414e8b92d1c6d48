package builder

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/ibuild/ibuild/builder/internal/copier"
	"github.com/ibuild/ibuild/builder/sandbox"
	"github.com/ibuild/ibuild/layers"
)

// Helpers for RUN --mount sources that a step sees otherwise than they are
// stored: copies of a context or tree path, and buildah's U (the source
// owned by the step's user) applied without changing the build context or
// a shared snapshot.

// copySourceTree copies the path p of src (the filtered context, or a
// stage's or image's tree) to dst: directories, regular files and
// symlinks with their permission bits (devices, sockets and pipes are
// left out). With hardlink, regular files are hard-linked where possible
// instead of copied: only for a copy nothing will change the files of
// (a read-only mount, or one under a throwaway overlay).
func copySourceTree(src copier.Source, p, dst string, hardlink bool) error {
	fi, host, err := src.Lstat(p)
	if err != nil {
		return err
	}
	switch {
	case fi.IsDir():
		if err := os.Mkdir(dst, 0o700); err != nil {
			return err
		}
		ents, err := src.ReadDir(p)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if err := copySourceTree(src, path.Join(p, e.Name()), filepath.Join(dst, e.Name()), hardlink); err != nil {
				return err
			}
		}
		return os.Chmod(dst, fi.Mode().Perm()|fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
	case fi.Mode().IsRegular():
		if hardlink {
			if err := os.Link(host, dst); err == nil {
				return nil
			}
		}
		return copyRegular(host, dst, fi)
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(host)
		if err != nil {
			return err
		}
		return os.Symlink(target, dst)
	}
	return nil
}

// ownedCopyMount binds a private copy of the path p of src, owned (every
// entry) by o: buildah's U on a bind mount. buildah chowns the source
// itself, which for the build context changes the user's files on the
// host; a copy gives the step the same view and leaves them alone. Writes
// to it (rw) are discarded with the step's scratch directory.
func ownedCopyMount(src copier.Source, p, scratch string, o copier.Owner, readOnly bool) (*sandbox.Mount, error) {
	dst := filepath.Join(scratch, "owned")
	if err := copySourceTree(src, p, dst, false); err != nil {
		return nil, fmt.Errorf("source %s: copy for U: %w", p, err)
	}
	fi, err := os.Lstat(dst)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", p, err)
	}
	if err := chownTree(dst, o); err != nil {
		return nil, fmt.Errorf("U: %w", err)
	}
	return &sandbox.Mount{Type: sandbox.MountBind, Source: dst, ReadOnly: readOnly, File: !fi.IsDir()}, nil
}

// chownTree gives every entry of the host tree root (root included) the
// owner o, without following symlinks.
func chownTree(root string, o copier.Owner) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, o.UID, o.GID)
	})
}

// chownUpper gives every entry of the overlay view (snapshot directories
// with upper on top) at and below p the owner o, writing only to upper:
// an entry of a lower directory with another owner is copied up first,
// with its parents, as the overlay itself copies up on chown (regular
// files with their content; devices, sockets and pipes are refused).
func chownUpper(view *layers.RootFS, upper, p string, o copier.Owner) error {
	fi, host, err := view.Lstat(p)
	if err != nil {
		return err
	}
	inUpper := host == upper || strings.HasPrefix(host, upper+string(filepath.Separator))
	if uid, gid := copier.StatOwner(fi, host); uid != o.UID || gid != o.GID {
		dst := filepath.Join(upper, filepath.FromSlash(p))
		if !inUpper {
			if err := copyUpParents(view, upper, path.Dir(p)); err != nil {
				return err
			}
			if err := copyUp(fi, host, dst); err != nil {
				return fmt.Errorf("copy up %s: %w", p, err)
			}
		}
		if err := os.Lchown(dst, o.UID, o.GID); err != nil {
			return err
		}
	}
	if !fi.IsDir() {
		return nil
	}
	ents, err := view.ReadDir(p)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := chownUpper(view, upper, path.Join(p, e.Name()), o); err != nil {
			return err
		}
	}
	return nil
}

// copyUpParents makes sure the directory p and its parents exist in upper,
// copying each missing one up from the view with its mode and owner.
func copyUpParents(view *layers.RootFS, upper, p string) error {
	if p == "/" {
		return nil
	}
	dst := filepath.Join(upper, filepath.FromSlash(p))
	if fi, err := os.Lstat(dst); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory in the cache", p)
		}
		return nil
	}
	if err := copyUpParents(view, upper, path.Dir(p)); err != nil {
		return err
	}
	fi, host, err := view.Lstat(p)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory in the cache", p)
	}
	return copyUp(fi, host, dst)
}

// copyUp copies the lower entry host (described by fi) to dst in the upper
// directory, with its permission bits, owner and mtime; a directory is
// made empty (the lower one's contents stay visible through it).
func copyUp(fi fs.FileInfo, host, dst string) error {
	switch {
	case fi.IsDir():
		if err := os.Mkdir(dst, 0o700); err != nil {
			return err
		}
		if err := os.Chmod(dst, fi.Mode().Perm()|fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
			return err
		}
	case fi.Mode().IsRegular():
		if err := copyRegular(host, dst, fi); err != nil {
			return err
		}
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(host)
		if err != nil {
			return err
		}
		if err := os.Symlink(target, dst); err != nil {
			return err
		}
	default:
		return errors.New("a device, socket or pipe cannot be copied up")
	}
	uid, gid := copier.StatOwner(fi, host)
	if err := os.Lchown(dst, uid, gid); err != nil {
		return err
	}
	if fi.IsDir() {
		return nil // its mtime changes as entries are copied into it anyway
	}
	return copier.SetMtime(dst, fi.ModTime())
}

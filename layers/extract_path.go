package layers

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

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

// readdirChunk is how many names a directory is read at a time when
// removing or filtering it, so a huge directory costs no more memory than
// a small one.
const readdirChunk = 512

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
	// Remove a chunk of names at a time; read from the start again once
	// the end is reached, until a read finds the directory empty.
	for {
		names, rerr := f.Readdirnames(readdirChunk)
		for _, n := range names {
			if err := removeAllAt(fd, n); err != nil {
				f.Close()
				return err
			}
		}
		if rerr != nil && rerr != io.EOF {
			f.Close()
			return &os.PathError{Op: "readdir", Path: name, Err: rerr}
		}
		if len(names) == 0 || rerr == io.EOF {
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				f.Close()
				return &os.PathError{Op: "readdir", Path: name, Err: err}
			}
			if more, _ := f.Readdirnames(1); len(more) == 0 {
				break
			}
			f.Seek(0, io.SeekStart)
		}
	}
	f.Close()
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return &os.PathError{Op: "remove", Path: name, Err: err}
	}
	return nil
}

package builder

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/patternmatcher"

	"github.com/ibuild/ibuild/layers"
)

// copySpec is one COPY or ADD, after expansion, with its sources resolved
// to a tree.
type copySpec struct {
	// instr is "COPY" or "ADD", for messages.
	instr string
	from  sourceFS
	// fromName names the source in messages ("build context", "stage build").
	fromName string
	srcs     []string
	// inline are heredoc sources: name -> content.
	inline []inlineFile
	// dest is absolute in-image; a trailing "/" means a directory.
	dest    string
	chown   *owner
	chmod   *fs.FileMode
	link    bool
	parents bool
	exclude *patternmatcher.PatternMatcher
	// unpack extracts local archives (ADD).
	unpack bool
	// extract is called for archive sources when unpack is set; it writes
	// the archive's content into the layer at the resolved directory.
	extract func(ctx context.Context, l *layerDir, hostPath, destDir string, o *owner) error
	// nameless are sources without a file name of their own (an ADD URL
	// whose path ends in ".."), with the error to give when the
	// destination is a directory.
	nameless map[string]error
}

type inlineFile struct {
	name string
	data string
}

// parseChmod parses an octal --chmod value.
func parseChmod(s string) (*fs.FileMode, error) {
	if s == "" {
		return nil, nil
	}
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n > 0o7777 {
		return nil, fmt.Errorf("invalid --chmod=%s: want an octal mode such as 0755", s)
	}
	m := fs.FileMode(n & 0o777)
	if n&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if n&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if n&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return &m, nil
}

// copyInto performs spec into the layer l. As BuildKit does, each source
// (and each match of a wildcard) is copied on its own, in order: a
// destination without a trailing slash is a directory only when it is one
// at that moment, so several files copied to /f leave the last one there,
// and a wildcard matching nothing copies nothing. Sources from the context
// or a stage go first, heredocs after. Directories the copy creates take
// --chmod's permission bits.
func copyInto(ctx context.Context, l *layerDir, spec *copySpec) error {
	slash := strings.HasSuffix(spec.dest, "/")
	dest := path.Clean(spec.dest)
	destIsDir := func() bool { return slash || l.isDir(mustResolve(l, dest)) }
	if spec.chmod != nil {
		m := *spec.chmod & fs.ModePerm
		l.newDirMode = &m
	}
	defOwner := owner{}
	if spec.chown != nil {
		defOwner = *spec.chown
	}
	for _, src := range spec.srcs {
		if err := ctx.Err(); err != nil {
			return err
		}
		pattern, pivot := splitParents(src, spec.parents)
		matches := []string{pattern}
		if hasGlob(pattern) {
			m, err := globSources(spec.from, pattern)
			if err != nil {
				return err
			}
			matches = m
		}
		for _, m := range matches {
			if err := copyOne(ctx, l, spec, m, pivot, dest, destIsDir(), defOwner); err != nil {
				return err
			}
		}
	}
	for _, f := range spec.inline {
		target := dest
		if destIsDir() {
			target = path.Join(dest, f.name)
		}
		if err := checkCopyName(spec, f.name, target); err != nil {
			return err
		}
		dir, err := l.mkdirAll(path.Dir(target), defOwner)
		if err != nil {
			return err
		}
		mode := fs.FileMode(0o644)
		if spec.chmod != nil {
			mode = *spec.chmod
		}
		if err := l.writeFile(ctx, path.Join(dir, path.Base(target)), strings.NewReader(f.data), mode, defOwner, l.now); err != nil {
			return err
		}
	}
	return l.finish()
}

// checkCopyName refuses to copy src (named as the user knows it) to the
// in-image path dst when a component of dst starts with ".wh.": no layer
// can carry such a name (see layers.WhiteoutNameError), and written
// verbatim it would delete a file of the image instead.
func checkCopyName(spec *copySpec, src, dst string) error {
	for _, c := range strings.Split(dst, "/") {
		if layers.IsWhiteoutName(c) {
			return fmt.Errorf("%s (in the %s): %w; rename it, or leave it out with .dockerignore or --exclude",
				src, spec.fromName, &layers.WhiteoutNameError{Path: dst})
		}
	}
	return nil
}

// splitParents returns the source pattern and, for --parents, the prefix
// below which the source's path is kept ("/./" marks it; default "/").
func splitParents(src string, parents bool) (string, string) {
	if !parents {
		return path.Clean("/" + src), ""
	}
	if i := strings.Index(src, "/./"); i >= 0 {
		return path.Clean("/" + src), path.Clean("/" + src[:i])
	}
	return path.Clean("/" + src), "/"
}

func mustResolve(l *layerDir, p string) string {
	r, err := l.resolve(p)
	if err != nil {
		return p
	}
	return r
}

func copyOne(ctx context.Context, l *layerDir, spec *copySpec, match, pivot, dest string, destIsDir bool, defOwner owner) error {
	// The top-level source is followed when it is a symlink, as docker does.
	rp, err := spec.from.Resolve(match)
	if err != nil {
		return err
	}
	fi, host, err := spec.from.Lstat(rp)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if spec.from.FromContext() {
				return fmt.Errorf("file not found in build context or excluded by .dockerignore: %s", strings.TrimPrefix(match, "/"))
			}
			return fmt.Errorf("%s not found in %s", match, spec.fromName)
		}
		return err
	}
	target := dest
	if pivot != "" {
		target = path.Join(dest, strings.TrimPrefix(match, pivot))
		if err := copyParentDirs(l, spec, match, pivot, dest, fi.IsDir(), defOwner); err != nil {
			return err
		}
	} else if !fi.IsDir() && destIsDir {
		if err := spec.nameless[match]; err != nil {
			return err
		}
		target = path.Join(dest, path.Base(match))
	}
	if err := checkCopyName(spec, strings.TrimPrefix(match, "/"), target); err != nil {
		return err
	}
	if fi.IsDir() {
		dir, err := l.mkdirAll(target, defOwner)
		if err != nil {
			return err
		}
		return copyTree(ctx, l, spec, rp, dir, "")
	}
	if spec.unpack && fi.Mode().IsRegular() && isArchive(host) {
		// ADD of a local archive: its content goes into the destination
		// directory (ADD archive /dir/ and ADD archive /dir alike).
		dir, err := l.mkdirAll(dest, defOwner)
		if err != nil {
			return err
		}
		return spec.extract(ctx, l, host, dir, spec.chown)
	}
	dir, err := l.mkdirAll(path.Dir(target), defOwner)
	if err != nil {
		return err
	}
	return copyEntry(ctx, l, spec, fi, host, path.Join(dir, path.Base(target)))
}

// copyParentDirs makes, for COPY --parents, the directories between the
// pivot and match (match itself too when it is a directory) that the
// destination lacks, with their source directories' metadata, as
// BuildKit's copy of the pivot filtered to match does.
func copyParentDirs(l *layerDir, spec *copySpec, match, pivot, dest string, matchIsDir bool, defOwner owner) error {
	rel := strings.TrimPrefix(strings.TrimPrefix(match, pivot), "/")
	comps := strings.Split(rel, "/")
	if !matchIsDir {
		comps = comps[:len(comps)-1]
	}
	src, dst := pivot, dest
	for _, c := range comps {
		if c == "" {
			continue
		}
		src, dst = path.Join(src, c), path.Join(dst, c)
		if l.isDir(mustResolve(l, dst)) {
			continue
		}
		fi, host, err := spec.from.Lstat(src)
		if err != nil || !fi.IsDir() {
			continue // the copy itself reports it
		}
		r, err := l.mkdirAll(dst, defOwner)
		if err != nil {
			return err
		}
		if err := applyDirMeta(l, spec, fi, host, r); err != nil {
			return err
		}
	}
	return nil
}

// copyTree copies the contents of the source directory src into the
// resolved layer directory dst. rel is src's path below the copied root,
// for --exclude.
func copyTree(ctx context.Context, l *layerDir, spec *copySpec, src, dst, rel string) error {
	// The copied root takes the destination's metadata (existing, or new
	// as mkdirAll made it); directories below it take their source's.
	if rel != "" {
		fi, host, err := spec.from.Lstat(src)
		if err != nil {
			return err
		}
		if err := applyDirMeta(l, spec, fi, host, dst); err != nil {
			return err
		}
	}
	ents, err := spec.from.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return err
		}
		childRel := path.Join(rel, e.Name())
		if spec.exclude != nil {
			if ex, _ := spec.exclude.MatchesOrParentMatches(childRel); ex {
				continue
			}
		}
		childSrc := path.Join(src, e.Name())
		if err := checkCopyName(spec, strings.TrimPrefix(childSrc, "/"), path.Join(dst, e.Name())); err != nil {
			return err
		}
		cfi, chost, err := spec.from.Lstat(childSrc)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return err
		}
		childDst := path.Join(dst, e.Name())
		if cfi.IsDir() {
			h := l.host(childDst)
			if efi, err := os.Lstat(h); err == nil && !efi.IsDir() {
				if err := os.Remove(h); err != nil {
					return err
				}
			}
			if err := os.Mkdir(h, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			l.resolved[childDst] = childDst
			if err := copyTree(ctx, l, spec, childSrc, childDst, childRel); err != nil {
				return err
			}
			continue
		}
		if err := copyEntry(ctx, l, spec, cfi, chost, childDst); err != nil {
			return err
		}
	}
	return nil
}

// applyDirMeta gives the layer directory dst the metadata of source dir.
func applyDirMeta(l *layerDir, spec *copySpec, fi fs.FileInfo, host, dst string) error {
	o := ownerFor(spec, fi, host)
	mode := fi.Mode()
	if spec.chmod != nil {
		mode = fs.ModeDir | *spec.chmod
	}
	h := l.host(dst)
	if err := l.setMeta(h, mode, o, false); err != nil {
		return err
	}
	l.dirTimes[h] = fi.ModTime()
	return nil
}

// linkable reports whether the regular file fi may be hard-linked into
// the layer instead of copied: it is a file of a snapshot (a stage or an
// image, never the build context, which its owner may change), and the
// copy keeps its mode, owner and mtime (no --chown, no --chmod, not newer
// than SOURCE_DATE_EPOCH, which committing would clamp in place).
func linkable(l *layerDir, spec *copySpec, fi fs.FileInfo) bool {
	im, ok := spec.from.(interface{ Immutable() bool })
	if !ok || !im.Immutable() || spec.chown != nil || spec.chmod != nil {
		return false
	}
	return l.epoch == nil || !fi.ModTime().After(*l.epoch)
}

// ownerFor is the in-image owner of a copied file: --chown if given, root
// for the build context (as docker build), else the source's owner.
func ownerFor(spec *copySpec, fi fs.FileInfo, host string) owner {
	if spec.chown != nil {
		return *spec.chown
	}
	if spec.from.FromContext() {
		return owner{}
	}
	uid, gid := statOwner(fi, host)
	return owner{uid, gid}
}

// copyEntry copies one non-directory source to the resolved layer path dst.
func copyEntry(ctx context.Context, l *layerDir, spec *copySpec, fi fs.FileInfo, host, dst string) error {
	o := ownerFor(spec, fi, host)
	mode := fi.Mode()
	if spec.chmod != nil && fi.Mode()&fs.ModeSymlink == 0 {
		mode = *spec.chmod
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(host)
		if err != nil {
			return err
		}
		return l.symlink(dst, target, o, fi.ModTime())
	case fi.Mode().IsRegular():
		if st != nil && st.Nlink > 1 {
			key := [2]uint64{uint64(st.Dev), st.Ino}
			if first, ok := l.links[key]; ok {
				return l.hardlink(dst, first)
			}
			l.links[key] = dst
		}
		if linkable(l, spec, fi) {
			if ok, err := l.linkFrom(dst, host); ok || err != nil {
				return err
			}
		}
		f, err := os.Open(host)
		if err != nil {
			return err
		}
		defer f.Close()
		return l.writeFile(ctx, dst, f, mode, o, fi.ModTime())
	default:
		return l.special(dst, fi, o)
	}
}

// stepTime is the mtime for files a step creates: SOURCE_DATE_EPOCH when
// set, else now.
func stepTime(epoch *time.Time) time.Time {
	if epoch != nil {
		return *epoch
	}
	return time.Now()
}

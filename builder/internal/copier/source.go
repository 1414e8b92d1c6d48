package copier

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"

	"github.com/ibuild/ibuild/builder/dockerfile"
	"github.com/ibuild/ibuild/layers"
)

// Source is a tree COPY and ADD read from: the build context, or the
// root filesystem of a stage or an image. Paths are absolute, slash
// separated and relative to the tree's own root; nothing outside that root
// is ever reached.
type Source interface {
	// Lstat describes p without following a final symlink, and returns the
	// host path to read it from. Absent or excluded paths give
	// fs.ErrNotExist.
	Lstat(p string) (fs.FileInfo, string, error)
	// ReadDir lists p, sorted by name, without excluded entries.
	ReadDir(p string) ([]fs.DirEntry, error)
	// Resolve follows symlinks in p as if the tree's root were "/".
	Resolve(p string) (string, error)
	// FromContext reports whether this is the build context (whose files
	// land in images owned by root, as docker build does).
	FromContext() bool
}

// ContextFS is the build context directory, filtered by its ignore file
// (.dockerignore, .containerignore; see OpenContext).
type ContextFS struct {
	Root string
	// ID names the context for the build cache's per-context state (the
	// digest index, step histories): root, or a stable name for a fetched
	// context (a git remote and subdir) whose root changes every build.
	ID string
	// ignoreFile is the ignore file in use ("" for none), for messages.
	ignoreFile string
	ignore     *patternmatcher.PatternMatcher
	// exceptionPrefixes are the "!" patterns without a trailing "/*" or
	// "/**", each with a "/" appended, when none has a wildcard: an
	// excluded directory can then hold re-included paths only if it is
	// a prefix of one of them. nil when a "!" pattern has wildcards (any
	// excluded directory may hold one).
	exceptionPrefixes []string

	// mu guards the matcher (which compiles patterns lazily, so it is not
	// safe for concurrent use) and holds.
	mu sync.Mutex
	// holds memoizes holdsIncluded for excluded directories.
	holds map[string]bool
}

// OpenContext opens the build context at dir, filtered by the first ignore
// file that exists of:
//
//   - ignoreFile, when given (--ignorefile: it must exist);
//   - next to the Dockerfile: <Dockerfile>.dockerignore (BuildKit's), then
//     <Dockerfile>.containerignore (buildah's); dockerfilePath is "" when
//     the Dockerfile was not read from a file;
//   - at the context root: .containerignore, then .dockerignore, as
//     buildah reads them (docker knows only .dockerignore). A symlink
//     there is followed only inside the context: one pointing out of it
//     counts as no file.
func OpenContext(dir, dockerfilePath, ignoreFile string) (*ContextFS, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("build context: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("build context %s is not a directory", dir)
	}
	c := &ContextFS{Root: abs, ID: abs, holds: map[string]bool{}}
	if ignoreFile != "" {
		data, err := dockerfile.ReadFile(ignoreFile)
		if err != nil {
			return nil, fmt.Errorf("ignore file: %w", err)
		}
		return c, c.setIgnore(ignoreFile, data)
	}
	var beside []string
	if dockerfilePath != "" {
		beside = []string{dockerfilePath + ".dockerignore", dockerfilePath + ".containerignore"}
	}
	for _, f := range beside {
		data, err := dockerfile.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			if errors.Is(err, dockerfile.ErrNotRegular) {
				return nil, fmt.Errorf("ignore file %w: make it a file, or remove it", err)
			}
			return nil, fmt.Errorf("ignore file %w", err)
		}
		return c, c.setIgnore(f, data)
	}
	for _, name := range []string{".containerignore", ".dockerignore"} {
		rp, err := c.Resolve("/" + name)
		if err != nil {
			continue // a symlink loop: no file
		}
		h := c.Host(rp)
		data, err := dockerfile.ReadFile(h)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			continue
		}
		if errors.Is(err, dockerfile.ErrNotRegular) {
			return nil, fmt.Errorf("ignore file %w: make it a file, or remove it", err)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return c, c.setIgnore(filepath.Join(abs, name), data)
	}
	return c, nil
}

// setIgnore parses the ignore file f's content.
func (c *ContextFS) setIgnore(f string, data []byte) error {
	patterns, err := ignorefile.ReadAll(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%s: %w", f, err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return fmt.Errorf("%s: %w", f, err)
	}
	c.ignore, c.ignoreFile = pm, f
	c.exceptionPrefixes = []string{}
	for _, p := range pm.Patterns() {
		if !p.Exclusion() {
			continue
		}
		s := strings.TrimSuffix(strings.TrimSuffix(p.String(), "/**"), "/*")
		if strings.ContainsAny(s, `*[]?^\`) {
			c.exceptionPrefixes = nil
			break
		}
		c.exceptionPrefixes = append(c.exceptionPrefixes, s+"/")
	}
	return nil
}

// FromContext is true: files of a context land in images owned by root.
func (c *ContextFS) FromContext() bool { return true }

// Label is "" for the main context, and names a fetched or named one in
// messages.
func (c *ContextFS) Label() string {
	if c.ID == c.Root {
		return ""
	}
	return " (" + c.ID + ")"
}

// excluded reports whether the in-context path p is excluded.
func (c *ContextFS) excluded(p string) bool {
	if c.ignore == nil {
		return false
	}
	rel := strings.TrimPrefix(path.Clean("/"+p), "/")
	if rel == "" {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m, err := c.ignore.MatchesOrParentMatches(rel)
	return err == nil && m
}

// Host is the host path of the in-context path p, which it does not
// resolve (see Resolve).
func (c *ContextFS) Host(p string) string {
	return filepath.Join(c.Root, filepath.FromSlash(path.Clean("/"+p)))
}

// visible reports whether the in-context path p, a directory when dir is
// set, is part of the filtered context: not excluded, or an excluded
// directory that holds a path a "!" pattern re-includes. An excluded
// directory holding none is absent, as in the context docker's client
// sends (an excluded "secret/" leaves no empty directory behind).
func (c *ContextFS) visible(p string, dir bool) bool {
	if !c.excluded(p) {
		return true
	}
	return dir && c.holdsIncluded(p)
}

// holdsIncluded reports whether the excluded directory p holds, at any
// depth, a path that is not excluded. Symlinks are not followed.
func (c *ContextFS) holdsIncluded(p string) bool {
	if !c.mayHoldExceptions(p) {
		return false
	}
	c.mu.Lock()
	v, ok := c.holds[p]
	c.mu.Unlock()
	if ok {
		return v
	}
	ents, err := os.ReadDir(c.Host(p))
	found := false
	for _, e := range ents {
		child := path.Join(p, e.Name())
		if !c.excluded(child) || (e.IsDir() && c.holdsIncluded(child)) {
			found = true
			break
		}
	}
	if err != nil {
		found = false
	}
	c.mu.Lock()
	c.holds[p] = found
	c.mu.Unlock()
	return found
}

// mayHoldExceptions reports whether the excluded directory p may hold
// paths a "!" pattern re-includes, so it must be looked into (BuildKit's
// rule: when the "!" patterns are plain paths, only directories on the
// way to one of them).
func (c *ContextFS) mayHoldExceptions(p string) bool {
	if c.ignore == nil || !c.ignore.Exclusions() {
		return false
	}
	if c.exceptionPrefixes == nil {
		return true
	}
	dirSlash := strings.TrimPrefix(path.Clean("/"+p), "/") + "/"
	for _, e := range c.exceptionPrefixes {
		if strings.HasPrefix(e, dirSlash) {
			return true
		}
	}
	return false
}

// Filtered reports whether an ignore file applies: a directory of the
// context may then hold files a copy must leave out.
func (c *ContextFS) Filtered() bool { return c.ignore != nil }

// Lstat expects p's parent directories to be resolved (no symlink among
// them), as the copy code guarantees: it does not check them.
func (c *ContextFS) Lstat(p string) (fs.FileInfo, string, error) {
	h := c.Host(p)
	fi, err := os.Lstat(h)
	if err != nil {
		return nil, "", err
	}
	if !c.visible(p, fi.IsDir()) {
		return nil, "", &fs.PathError{Op: "lstat", Path: p, Err: fs.ErrNotExist}
	}
	return fi, h, nil
}

// ReadDir lists the context directory p, without the entries the ignore
// file leaves out.
func (c *ContextFS) ReadDir(p string) ([]fs.DirEntry, error) {
	ents, err := os.ReadDir(c.Host(p))
	if err != nil {
		return nil, err
	}
	out := ents[:0]
	for _, e := range ents {
		if c.visible(path.Join("/", p, e.Name()), e.IsDir()) {
			out = append(out, e)
		}
	}
	return out, nil
}

// Resolve follows the symlinks of p inside the context, as if its root
// were "/".
func (c *ContextFS) Resolve(p string) (string, error) {
	return ResolveIn(p, func(q string) (fs.FileInfo, string, error) {
		h := c.Host(q)
		fi, err := os.Lstat(h)
		return fi, h, err
	})
}

// ResolveIn follows symlinks in p, treating the tree's root as "/".
func ResolveIn(p string, lstat layers.LstatFunc) (string, error) {
	return layers.ResolveIn(p, true, lstat)
}

// HasGlob reports whether p holds wildcard characters.
func HasGlob(p string) bool { return strings.ContainsAny(p, "*?[") }

// Glob returns the paths in src matching pattern (an absolute,
// cleaned in-tree path that may hold wildcards in any component), sorted.
func Glob(src Source, pattern string) ([]string, error) {
	comps := strings.Split(strings.Trim(pattern, "/"), "/")
	matches := []string{"/"}
	for _, comp := range comps {
		if comp == "" {
			continue
		}
		var next []string
		for _, dir := range matches {
			// Look inside the resolved directory: an earlier component
			// may be a symlink, which must be followed inside the tree,
			// never by the host.
			rdir, err := src.Resolve(dir)
			if err != nil {
				return nil, err
			}
			if !HasGlob(comp) {
				if _, _, err := src.Lstat(path.Join(rdir, comp)); err == nil {
					next = append(next, path.Join(dir, comp))
				}
				continue
			}
			ents, err := src.ReadDir(rdir)
			if err != nil {
				continue
			}
			for _, e := range ents {
				ok, err := path.Match(comp, e.Name())
				if err != nil {
					return nil, fmt.Errorf("bad pattern %q: %w", pattern, err)
				}
				if ok {
					next = append(next, path.Join(dir, e.Name()))
				}
			}
		}
		matches = next
		if len(matches) == 0 {
			break
		}
	}
	sort.Strings(matches)
	return matches, nil
}

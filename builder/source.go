package builder

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

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"

	"github.com/ibuild/ibuild/builder/dockerfile"
	"github.com/ibuild/ibuild/layers"
)

// sourceFS is a tree COPY and ADD read from: the build context, or the
// root filesystem of a stage or an image. Paths are absolute, slash
// separated and relative to the tree's own root; nothing outside that root
// is ever reached.
type sourceFS interface {
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

// contextFS is the build context directory, filtered by .dockerignore.
type contextFS struct {
	root    string
	ignore  *patternmatcher.PatternMatcher
	ignored []string
}

// openContext opens the build context at dir with the ignore file found
// next to the Dockerfile (<Dockerfile>.dockerignore) or at the context root.
func openContext(dir, dockerfilePath string) (*contextFS, error) {
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
	c := &contextFS{root: abs}
	var candidates []string
	if dockerfilePath != "" {
		candidates = append(candidates, dockerfilePath+".dockerignore")
	}
	candidates = append(candidates, filepath.Join(abs, ".dockerignore"))
	for _, f := range candidates {
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
		patterns, err := ignorefile.ReadAll(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		pm, err := patternmatcher.New(patterns)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		c.ignore, c.ignored = pm, patterns
		break
	}
	return c, nil
}

func (c *contextFS) FromContext() bool { return true }

// excluded reports whether the in-context path p is excluded.
func (c *contextFS) excluded(p string) bool {
	if c.ignore == nil {
		return false
	}
	rel := strings.TrimPrefix(path.Clean("/"+p), "/")
	if rel == "" {
		return false
	}
	m, err := c.ignore.MatchesOrParentMatches(rel)
	return err == nil && m
}

func (c *contextFS) host(p string) string {
	return filepath.Join(c.root, filepath.FromSlash(path.Clean("/"+p)))
}

// Lstat expects p's parent directories to be resolved (no symlink among
// them), as the copy code guarantees: it does not check them.
func (c *contextFS) Lstat(p string) (fs.FileInfo, string, error) {
	h := c.host(p)
	fi, err := os.Lstat(h)
	if err != nil {
		return nil, "", err
	}
	if c.excluded(p) && !(fi.IsDir() && c.mayHaveExceptions()) {
		return nil, "", &fs.PathError{Op: "lstat", Path: p, Err: fs.ErrNotExist}
	}
	return fi, h, nil
}

func (c *contextFS) ReadDir(p string) ([]fs.DirEntry, error) {
	ents, err := os.ReadDir(c.host(p))
	if err != nil {
		return nil, err
	}
	out := ents[:0]
	for _, e := range ents {
		child := path.Join("/", p, e.Name())
		if c.excluded(child) && !(e.IsDir() && c.mayHaveExceptions()) {
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

// mayHaveExceptions reports whether an excluded directory may still hold
// files re-included by a "!" pattern, so it must be walked.
func (c *contextFS) mayHaveExceptions() bool {
	return c.ignore != nil && c.ignore.Exclusions()
}

func (c *contextFS) Resolve(p string) (string, error) {
	return resolveIn(p, func(q string) (fs.FileInfo, string, error) {
		h := c.host(q)
		fi, err := os.Lstat(h)
		return fi, h, err
	})
}

// resolveIn follows symlinks in p, treating the tree's root as "/".
func resolveIn(p string, lstat layers.LstatFunc) (string, error) {
	return layers.ResolveIn(p, true, lstat)
}

// hasGlob reports whether p holds wildcard characters.
func hasGlob(p string) bool { return strings.ContainsAny(p, "*?[") }

// globSources returns the paths in src matching pattern (an absolute,
// cleaned in-tree path that may hold wildcards in any component), sorted.
func globSources(src sourceFS, pattern string) ([]string, error) {
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
			if !hasGlob(comp) {
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

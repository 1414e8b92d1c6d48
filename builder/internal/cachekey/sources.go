package cachekey

import (
	"context"
	"encoding/hex"
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

	"github.com/ibuild/ibuild/builder/ctxhash"
	"github.com/ibuild/ibuild/builder/internal/copier"
)

// Sources are the paths a COPY, ADD or bind mount reads from a tree.
type Sources struct {
	// From is the tree.
	From copier.Source
	// Paths are the sources as the instruction gives them (patterns, as in
	// COPY).
	Paths []string
	// Parents is COPY --parents: a "/./" in a path ends the part that is
	// not kept.
	Parents bool
	// Exclude are the --exclude patterns, or nil.
	Exclude *patternmatcher.PatternMatcher
	// Epoch is SOURCE_DATE_EPOCH, or nil: with it, a file's mtime
	// clamped to it is an input (it lands in the layer).
	Epoch *time.Time
	// Index digests the tree's regular files.
	Index *ctxhash.Index
}

// srcEntry is one path a COPY, ADD or bind mount reads.
type srcEntry struct {
	name  string
	value string
	file  int // index into the files to digest, or -1
}

// AddSources adds one input per path the sources cover in src.From, each
// named prefix + its in-tree path: its type, the mode bits that land in
// the image, a symlink's target, a regular file's content digest (from
// src.Index), hard links, and, with an Epoch, the clamped mtime. A
// missing source adds a marker; the step reports the error.
func (k *Key) AddSources(ctx context.Context, prefix string, src Sources) error {
	w := &srcWalk{from: src.From, exclude: src.Exclude, links: map[[2]uint64]string{}, epoch: src.Epoch != nil}
	if w.epoch {
		w.epochNs = src.Epoch.UnixNano()
	}
	var matches []string
	for _, p := range src.Paths {
		pattern, _ := copier.SplitParents(p, src.Parents)
		if !copier.HasGlob(pattern) {
			matches = append(matches, pattern)
			continue
		}
		m, err := copier.Glob(src.From, pattern)
		if err != nil {
			return err
		}
		if len(m) == 0 {
			w.add(pattern, "no match", nil)
		}
		matches = append(matches, m...)
	}
	for _, m := range matches {
		if err := ctx.Err(); err != nil {
			return err
		}
		rp, err := src.From.Resolve(m)
		if err != nil {
			w.add(m, "unresolvable", nil)
			continue
		}
		fi, host, err := src.From.Lstat(rp)
		if err != nil {
			w.add(m, "missing", nil)
			continue
		}
		if err := w.walk(ctx, m, rp, "", fi, host); err != nil {
			return err
		}
	}
	digests, err := src.Index.Digests(ctx, w.files)
	if err != nil {
		return fmt.Errorf("hash sources: %w", err)
	}
	for _, e := range w.entries {
		v := e.value
		if e.file >= 0 {
			v += " " + hex.EncodeToString(digests[e.file][:])
		}
		k.Add(prefix+e.name, v)
	}
	return nil
}

type srcWalk struct {
	from    copier.Source
	exclude *patternmatcher.PatternMatcher
	links   map[[2]uint64]string
	epoch   bool
	epochNs int64
	entries []srcEntry
	files   []ctxhash.File
}

func (w *srcWalk) add(name, value string, f *ctxhash.File) {
	e := srcEntry{name: name, value: value, file: -1}
	if f != nil {
		e.file = len(w.files)
		w.files = append(w.files, *f)
	}
	w.entries = append(w.entries, e)
}

// imageBits are the mode bits a copy keeps.
const imageBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// walk adds name (shown as name, found at p in the tree) and, for a
// directory, everything below it that the step copies. rel is the path
// below the copied root, for --exclude.
func (w *srcWalk) walk(ctx context.Context, name, p, rel string, fi fs.FileInfo, host string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	meta := strconv.FormatUint(uint64(fi.Mode()&imageBits), 8)
	if w.epoch {
		meta += " t" + strconv.FormatInt(min(fi.ModTime().UnixNano(), w.epochNs)/1e9, 10)
	}
	switch {
	case fi.IsDir():
		w.add(name, "d "+meta, nil)
		ents, err := w.from.ReadDir(p)
		if err != nil {
			return err
		}
		for _, e := range ents {
			childRel := path.Join(rel, e.Name())
			if w.exclude != nil {
				if ex, _ := w.exclude.MatchesOrParentMatches(childRel); ex {
					continue
				}
			}
			cp := path.Join(p, e.Name())
			cfi, chost, err := w.from.Lstat(cp)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			if err := w.walk(ctx, path.Join(name, e.Name()), cp, childRel, cfi, chost); err != nil {
				return err
			}
		}
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(host)
		if err != nil {
			return err
		}
		w.add(name, "l "+target, nil)
	case fi.Mode().IsRegular():
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
			id := [2]uint64{uint64(st.Dev), st.Ino}
			if first, ok := w.links[id]; ok {
				w.add(name, "h "+first, nil)
				return nil
			}
			w.links[id] = name
		}
		w.add(name, "f "+meta, &ctxhash.File{Rel: strings.TrimPrefix(p, "/"), Host: host, Info: fi})
	default:
		rdev := uint64(0)
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			rdev = uint64(st.Rdev)
		}
		w.add(name, fmt.Sprintf("o %v %d", fi.Mode(), rdev), nil)
	}
	return nil
}

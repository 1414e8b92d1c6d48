package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/patternmatcher"

	"github.com/ibuild/ibuild/builder/ctxhash"
	"github.com/ibuild/ibuild/builder/internal/copier"
	"github.com/ibuild/ibuild/builder/sandbox"
)

// executorRevision names the executor's semantics in every cache key: it
// changes whenever the same instruction on the same inputs gives another
// result than before (a config default, a step's environment), so that
// records made by an older ibuild are not taken for the new behaviour.
const executorRevision = "2"

// fromKey is the key a stage's chain starts from: the base (image digest,
// scratch, or the key of the stage it is built on), the platform, and the
// build options that shape every layer (compression, format,
// SOURCE_DATE_EPOCH). A stage on another stage is marked as a new stage,
// since per-stage state (whether CMD was set) starts over.
func (s *stageRun) fromKey(base v1.Image) (*keyBuilder, error) {
	b := s.b
	k := newKey()
	k.add("executor", executorRevision)
	switch {
	case s.baseStage >= 0:
		dep := b.stages[s.baseStage]
		if dep.key.Hex == "" {
			return nil, errors.New("base stage was not cached")
		}
		k.add("base", "stage "+dep.key.String())
	case base == nil:
		k.add("base", "scratch")
	default:
		d, err := base.Digest()
		if err != nil {
			return nil, err
		}
		k.add("base", "image "+d.String())
	}
	k.add("platform", s.platform.OS+"/"+s.platform.Architecture+"/"+s.platform.Variant)
	k.add("options", b.cache.layerOptions+" format="+string(b.opts.Format))
	k.add("records", cacheRecordVersion)
	return k, nil
}

// stepKey collects the inputs of an expanded instruction's cache key: the
// parent's key, the instruction with its flags, and what the instruction
// reads besides the image: build args in scope (RUN, which sees them in
// its environment, and EXPOSE, which expands them), the files COPY and ADD
// copy and RUN --mount=type=bind binds, the output of --from stages
// (their layers' diffIDs) and images (digests), and downloaded URLs.
// Secret contents, mtimes of context files and unused build args are not
// inputs.
func (s *stageRun) stepKey(ctx context.Context, cmd instructions.Command) (*keyBuilder, error) {
	k := newKey()
	k.add("parent", s.key.String())
	if err := k.addJSON("instruction", instructionInput(cmd)); err != nil {
		return nil, err
	}
	switch c := cmd.(type) {
	case *instructions.RunCommand:
		s.argInputs(k)
		mounts := instructions.GetMounts(c)
		if err := k.addJSON("run-flags", struct {
			Mounts   []*instructions.Mount
			Network  string
			Security string
		}{mounts, instructions.GetNetwork(c), instructions.GetSecurity(c)}); err != nil {
			return nil, err
		}
		// A step's capabilities can change what it makes; docker's default
		// set leaves the key as it was.
		if caps, err := s.b.opts.capabilities(); err != nil {
			return nil, err
		} else if !slices.Equal(caps, sandbox.DefaultCapabilities()) {
			k.add("capabilities", strings.Join(caps, ","))
		}
		extras := s.b.df.RunMountExtras(c)
		for i, m := range mounts {
			prefix := fmt.Sprintf("mount%d:", i)
			if i < len(extras) && !extras[i].Empty() {
				k.add(prefix+"buildah", extras[i].String())
			}
			if m.Type == instructions.MountTypeCache {
				id := m.CacheID
				if id == "" {
					id = m.Target
				}
				s.b.cache.noteCacheMount(cacheKey(id, m))
			}
			if m.Type == instructions.MountTypeCache && m.From != "" {
				// The tree a new cache starts from (its content is not
				// an input otherwise, as with BuildKit).
				id, err := s.fromIdentity(ctx, m.From)
				if err != nil {
					return nil, err
				}
				k.add(prefix+"from", id)
				continue
			}
			if m.Type != instructions.MountTypeBind {
				continue
			}
			if nc := s.b.treeContext(m.From); m.From != "" && nc != nil {
				k.add(prefix+"from", "context "+nc.name)
				if err := s.sourceInputs(ctx, k, prefix, nc.tree, []string{m.Source}, false, nil); err != nil {
					return nil, err
				}
				continue
			}
			if m.From != "" {
				id, err := s.fromIdentity(ctx, m.From)
				if err != nil {
					return nil, err
				}
				k.add(prefix+"from", id)
				continue
			}
			if err := s.sourceInputs(ctx, k, prefix, s.b.ctx, []string{m.Source}, false, nil); err != nil {
				return nil, err
			}
		}
	case *instructions.ExposeCommand:
		s.argInputs(k)
	case *instructions.CopyCommand:
		exclude, err := excludeMatcher(c.ExcludePatterns)
		if err != nil {
			return nil, err
		}
		if c.From != "" {
			from, err := s.b.exp.Word(c.From, s.view())
			if err != nil {
				return nil, err
			}
			if nc := s.b.treeContext(from); nc != nil {
				// A tree context is keyed by its files, as the build
				// context is.
				k.add("from", "context "+nc.name)
				if err := s.sourceInputs(ctx, k, "src:", nc.tree, c.SourcePaths, c.Parents, exclude); err != nil {
					return nil, err
				}
				return k, nil
			}
			id, err := s.fromIdentity(ctx, from)
			if err != nil {
				return nil, err
			}
			k.add("from", id)
			return k, nil
		}
		if err := s.sourceInputs(ctx, k, "src:", s.b.ctx, c.SourcePaths, c.Parents, exclude); err != nil {
			return nil, err
		}
	case *instructions.AddCommand:
		exclude, err := excludeMatcher(c.ExcludePatterns)
		if err != nil {
			return nil, err
		}
		var local []string
		for _, src := range c.SourcePaths {
			if !copier.IsURL(src) {
				local = append(local, src)
				continue
			}
			v, err := s.urlInput(ctx, src, c.Checksum)
			if err != nil {
				return nil, err
			}
			k.add("url:"+src, v)
		}
		if err := s.sourceInputs(ctx, k, "src:", s.b.ctx, local, false, exclude); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// instructionInput is what a step's key records of the instruction: its
// name and parsed form. A RUN's FlagsUsed comes from a map in BuildKit's
// parser, in random order; it is sorted, so that a RUN with two flags
// (--mount and --network) keeps one key.
func instructionInput(cmd instructions.Command) any {
	if r, ok := cmd.(*instructions.RunCommand); ok && !slices.IsSorted(r.FlagsUsed) {
		c := *r
		c.FlagsUsed = slices.Sorted(slices.Values(r.FlagsUsed))
		cmd = &c
	}
	return struct {
		Name string
		Cmd  instructions.Command
	}{cmd.Name(), cmd}
}

// argInputs adds the stage's ARGs in scope, one input each. Predefined
// proxy args given only with --build-arg are left out, as docker does.
func (s *stageRun) argInputs(k *keyBuilder) {
	for _, name := range s.args.Keys() {
		v, _ := s.args.Get(name)
		k.add("arg:"+name, v)
	}
}

func excludeMatcher(patterns []string) (*patternmatcher.PatternMatcher, error) {
	if len(patterns) == 0 {
		return nil, nil
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return nil, fmt.Errorf("--exclude: %w", err)
	}
	return pm, nil
}

// fromIdentity names the content of a --from source: a stage's layers
// (so a rebuilt stage with the same output still hits) or an image's
// digest.
func (s *stageRun) fromIdentity(ctx context.Context, from string) (string, error) {
	if i, ok := s.b.stageRef(from); ok {
		if i == s.index {
			return "", fmt.Errorf("--from=%s refers to the stage itself", from)
		}
		dep := s.b.stages[i]
		if dep.c == nil {
			return "", fmt.Errorf("stage %s has not been built", dep.name)
		}
		ids := make([]string, len(dep.c.config.RootFS.DiffIDs))
		for j, h := range dep.c.config.RootFS.DiffIDs {
			ids[j] = h.String()
		}
		return "stage " + strings.Join(ids, ","), nil
	}
	img, err := s.b.resolveImage(ctx, from, s.platform)
	if err != nil {
		return "", err
	}
	if img == nil {
		return "scratch", nil
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return "image " + d.String(), nil
}

// srcEntry is one path a COPY, ADD or bind mount reads.
type srcEntry struct {
	name  string
	value string
	file  int // index into the files to digest, or -1
}

// sourceInputs adds one input per path the sources (patterns as in COPY)
// cover in from: its type, the mode bits that land in the image, a
// symlink's target, a regular file's content digest (from the context's
// digest index), hard links, and, with SOURCE_DATE_EPOCH, the clamped
// mtime. A missing source adds a marker; the step reports the error.
func (s *stageRun) sourceInputs(ctx context.Context, k *keyBuilder, prefix string, from copier.Source, srcs []string, parents bool, exclude *patternmatcher.PatternMatcher) error {
	w := &srcWalk{from: from, exclude: exclude, links: map[[2]uint64]string{}, epoch: s.b.opts.SourceDateEpoch != nil}
	if w.epoch {
		w.epochNs = s.b.opts.SourceDateEpoch.UnixNano()
	}
	var matches []string
	for _, src := range srcs {
		pattern, _ := copier.SplitParents(src, parents)
		if !copier.HasGlob(pattern) {
			matches = append(matches, pattern)
			continue
		}
		m, err := copier.Glob(from, pattern)
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
		rp, err := from.Resolve(m)
		if err != nil {
			w.add(m, "unresolvable", nil)
			continue
		}
		fi, host, err := from.Lstat(rp)
		if err != nil {
			w.add(m, "missing", nil)
			continue
		}
		if err := w.walk(ctx, m, rp, "", fi, host); err != nil {
			return err
		}
	}
	digests, err := s.b.cache.index(from).Digests(ctx, w.files)
	if err != nil {
		return fmt.Errorf("hash sources: %w", err)
	}
	for _, e := range w.entries {
		v := e.value
		if e.file >= 0 {
			v += " " + hex.EncodeToString(digests[e.file][:])
		}
		k.add(prefix+e.name, v)
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

// stageHistory is what the last build of each step of a stage (a stage
// of a Dockerfile in a context, for a platform) had as key inputs, by
// step number, as digests, so that a miss can say which input changed.
// Values are hashed: build args may hold things that should not sit in
// plain text in the store. A stage's history is one file, read once and
// written once a build: a file a step cost a file creation a step.
type stageHistory struct {
	Steps map[int]map[string]string `json:"steps"`
}

func (s *stageRun) historyPath() (string, error) {
	dir, err := s.b.opts.Store.CacheDir("steps")
	if err != nil {
		return "", err
	}
	abs, _ := filepath.Abs(s.b.df.Path)
	if s.b.opts.dockerfileHost != "" {
		abs = s.b.df.Path // in a fetched context: its path there
	}
	id := sha256.Sum256([]byte(fmt.Sprintf("stage\x00%s\x00%s\x00%s\x00%d", s.b.ctx.ID, abs,
		PlatformString(s.platform), s.index)))
	return filepath.Join(dir, hex.EncodeToString(id[:16])+".json"), nil
}

// history is the stage's step history, read on first use.
func (s *stageRun) history() *stageHistory {
	if s.hist == nil {
		s.hist = &stageHistory{}
		if p, err := s.historyPath(); err == nil {
			if b, err := os.ReadFile(p); err == nil {
				_ = json.Unmarshal(b, s.hist)
			}
		}
		if s.hist.Steps == nil {
			s.hist.Steps = map[int]map[string]string{}
		}
	}
	return s.hist
}

func digestInputs(k *keyBuilder) map[string]string {
	out := make(map[string]string, len(k.inputs))
	for n, v := range k.inputs {
		sum := sha256.Sum256([]byte(v))
		out[n] = hex.EncodeToString(sum[:12])
	}
	return out
}

// saveHistory records k's inputs as the current step's latest;
// flushHistory writes them.
func (s *stageRun) saveHistory(k *keyBuilder) {
	s.history().Steps[s.step] = digestInputs(k)
	s.histChanged = true
}

// flushHistory writes the stage's step history if steps changed it.
func (s *stageRun) flushHistory() {
	if !s.histChanged {
		return
	}
	s.histChanged = false
	p, err := s.historyPath()
	if err != nil {
		return
	}
	if b, err := json.Marshal(s.hist); err == nil {
		_ = s.b.opts.Store.WriteCacheFile(p, b)
	}
}

// missReason compares k with the step's previous inputs and says what
// changed, in words.
func (s *stageRun) missReason(k *keyBuilder) string {
	old, ok := s.history().Steps[s.step]
	if !ok {
		return "no earlier build of this step in this store"
	}
	return explainMiss(old, digestInputs(k), s.step == 2, s.fromReason)
}

// explainMiss names the inputs that differ between two builds of a step.
// The first step's parent is the stage's start (base image and options),
// whose own change fromReason describes.
func explainMiss(old, cur map[string]string, first bool, fromReason string) string {
	if old["parent"] != cur["parent"] {
		if first {
			if fromReason != "" {
				return fromReason
			}
			return "the base image or build options changed"
		}
		return "an earlier step changed"
	}
	if old["instruction"] != cur["instruction"] || old["run-flags"] != cur["run-flags"] {
		return "the instruction changed"
	}
	var args, changed, added, removed, other []string
	for n, v := range cur {
		ov, ok := old[n]
		switch {
		case ok && ov == v:
			continue
		case strings.HasPrefix(n, "arg:"):
			args = append(args, strings.TrimPrefix(n, "arg:"))
		case !ok && isSourceInput(n):
			added = append(added, sourceName(n))
		case isSourceInput(n):
			changed = append(changed, sourceName(n))
		default:
			other = append(other, n)
		}
	}
	for n := range old {
		if _, ok := cur[n]; !ok {
			if strings.HasPrefix(n, "arg:") {
				args = append(args, strings.TrimPrefix(n, "arg:"))
			} else if isSourceInput(n) {
				removed = append(removed, sourceName(n))
			}
		}
	}
	var parts []string
	if len(args) > 0 {
		sort.Strings(args)
		parts = append(parts, "build arg "+strings.Join(args, ", ")+" changed")
	}
	for _, g := range []struct {
		what  string
		names []string
	}{{"changed", changed}, {"added", added}, {"removed", removed}} {
		if len(g.names) > 0 {
			parts = append(parts, "source "+g.what+": "+listSome(g.names))
		}
	}
	for _, n := range other {
		switch {
		case n == "from" || strings.HasSuffix(n, ":from"):
			parts = append(parts, "the --from source changed")
		case strings.HasPrefix(n, "url:"):
			parts = append(parts, "the download "+strings.TrimPrefix(n, "url:")+" changed")
		}
	}
	if len(parts) == 0 {
		return "no cache record for these inputs (pruned, or the last build of this step failed)"
	}
	return strings.Join(parts, "; ")
}

func isSourceInput(n string) bool {
	return strings.HasPrefix(n, "src:") || (strings.HasPrefix(n, "mount") && !strings.HasSuffix(n, ":from"))
}

func sourceName(n string) string {
	_, after, _ := strings.Cut(n, ":")
	return strings.TrimPrefix(after, "/")
}

// listSome lists up to three names and how many more there are.
func listSome(names []string) string {
	sort.Strings(names)
	if len(names) <= 3 {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s (and %d more)", strings.Join(names[:3], ", "), len(names)-3)
}

// fromMissReason explains why a stage's start key differs from the last
// build's (the base image digest, or the build options).
func fromMissReason(old, cur map[string]string, baseDesc string) string {
	switch {
	case old == nil:
		return ""
	case old["base"] != cur["base"]:
		return "the base image changed (now " + baseDesc + ")"
	case old["platform"] != cur["platform"]:
		return "the platform changed"
	case old["options"] != cur["options"]:
		return "the build options changed (compression, format or SOURCE_DATE_EPOCH)"
	case old["executor"] != cur["executor"]:
		return "this version of ibuild builds differently (the cache was made by an older one)"
	case old["records"] != cur["records"]:
		return "the build cache format changed (records of an older ibuild are not used)"
	}
	return ""
}

// urlInput is the key input of an ADD URL: its --checksum when given (no
// request is made), else the content digest, name and Last-Modified time,
// revalidated with the server (If-None-Match / If-Modified-Since against
// what it answered last time). A download made here is handed to the step
// if it runs.
func (s *stageRun) urlInput(ctx context.Context, rawURL, checksum string) (string, error) {
	if checksum != "" {
		s.b.recordURL(rawURL, checksum)
		return "checksum " + checksum, nil
	}
	dir, err := s.b.opts.Store.CacheDir("urls")
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(rawURL))
	vpath := filepath.Join(dir, hex.EncodeToString(sum[:16])+".json")
	var prev *copier.URLValidators
	if b, err := os.ReadFile(vpath); err == nil {
		var v copier.URLValidators
		if json.Unmarshal(b, &v) == nil && v.Digest != "" && (v.ETag != "" || v.LastModified != "") {
			prev = &v
		}
	}
	if s.stepTmp == "" {
		if s.stepTmp, err = s.b.opts.Store.TempDir("add-"); err != nil {
			return "", err
		}
	}
	f, err := copier.FetchURLIf(ctx, s.b.opts.HTTPClient, rawURL, "", s.stepTmp, prev)
	if err != nil {
		return "", err
	}
	v := copier.URLValidators{}
	if f.NotModified {
		v = *prev
	} else {
		v = copier.URLValidators{ETag: f.ETag, LastModified: f.LastModified, Digest: f.Checksum, Name: f.Name}
		if f.LastModified != "" {
			v.ModTime = f.ModTime.Unix()
		}
		if s.prefetched == nil {
			s.prefetched = map[string]*copier.Fetched{}
		}
		s.prefetched[rawURL] = f
		if v.ETag != "" || v.LastModified != "" {
			if b, err := json.Marshal(v); err == nil {
				_ = s.b.opts.Store.WriteCacheFile(vpath, b)
			}
		}
	}
	s.b.recordURL(rawURL, v.Digest)
	return fmt.Sprintf("content %s name %s mtime %d", v.Digest, v.Name, v.ModTime), nil
}

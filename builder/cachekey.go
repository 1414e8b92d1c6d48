package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/patternmatcher"

	"github.com/ibuild/ibuild/builder/internal/cachekey"
	"github.com/ibuild/ibuild/builder/internal/copier"
	"github.com/ibuild/ibuild/builder/sandbox"
)

// fromKey is the key a stage's chain starts from: the base (image digest,
// scratch, or the key of the stage it is built on), the platform, and the
// build options that shape every layer (compression, format,
// SOURCE_DATE_EPOCH). A stage on another stage is marked as a new stage,
// since per-stage state (whether CMD was set) starts over.
func (s *stageRun) fromKey(base v1.Image) (*cachekey.Key, error) {
	b := s.b
	k := cachekey.New()
	k.Add("executor", cachekey.ExecutorRevision)
	switch {
	case s.baseStage >= 0:
		dep := b.stages[s.baseStage]
		if dep.key.Hex == "" {
			return nil, errors.New("base stage was not cached")
		}
		k.Add("base", "stage "+dep.key.String())
	case base == nil:
		k.Add("base", "scratch")
	default:
		d, err := base.Digest()
		if err != nil {
			return nil, err
		}
		k.Add("base", "image "+d.String())
	}
	k.Add("platform", s.platform.OS+"/"+s.platform.Architecture+"/"+s.platform.Variant)
	k.Add("options", b.cache.layerOptions+" format="+string(b.opts.Format))
	k.Add("records", cacheRecordVersion)
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
func (s *stageRun) stepKey(ctx context.Context, cmd instructions.Command) (*cachekey.Key, error) {
	k := cachekey.New()
	k.Add("parent", s.key.String())
	if err := k.AddJSON("instruction", instructionInput(cmd)); err != nil {
		return nil, err
	}
	switch c := cmd.(type) {
	case *instructions.RunCommand:
		s.argInputs(k)
		mounts := instructions.GetMounts(c)
		if err := k.AddJSON("run-flags", struct {
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
			k.Add("capabilities", strings.Join(caps, ","))
		}
		extras := s.b.df.RunMountExtras(c)
		for i, m := range mounts {
			prefix := fmt.Sprintf("mount%d:", i)
			if i < len(extras) && !extras[i].Empty() {
				k.Add(prefix+"buildah", extras[i].String())
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
				k.Add(prefix+"from", id)
				continue
			}
			if m.Type != instructions.MountTypeBind {
				continue
			}
			if nc := s.b.treeContext(m.From); m.From != "" && nc != nil {
				k.Add(prefix+"from", "context "+nc.name)
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
				k.Add(prefix+"from", id)
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
				k.Add("from", "context "+nc.name)
				if err := s.sourceInputs(ctx, k, "src:", nc.tree, c.SourcePaths, c.Parents, exclude); err != nil {
					return nil, err
				}
				return k, nil
			}
			id, err := s.fromIdentity(ctx, from)
			if err != nil {
				return nil, err
			}
			k.Add("from", id)
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
			k.Add("url:"+src, v)
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
func (s *stageRun) argInputs(k *cachekey.Key) {
	for _, name := range s.args.Keys() {
		v, _ := s.args.Get(name)
		k.Add("arg:"+name, v)
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

// sourceInputs adds one input per path the sources (patterns as in COPY)
// cover in from (see cachekey.Key.AddSources).
func (s *stageRun) sourceInputs(ctx context.Context, k *cachekey.Key, prefix string, from copier.Source, srcs []string, parents bool, exclude *patternmatcher.PatternMatcher) error {
	return k.AddSources(ctx, prefix, cachekey.Sources{From: from, Paths: srcs, Parents: parents, Exclude: exclude,
		Epoch: s.b.opts.SourceDateEpoch, Index: s.b.cache.index(from)})
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
	return filepath.Join(dir, cachekey.HistoryName(s.b.ctx.ID, abs, PlatformString(s.platform), s.index)), nil
}

// history is the stage's step history, read on first use.
func (s *stageRun) history() *cachekey.History {
	if s.hist == nil {
		s.hist = &cachekey.History{Steps: map[int]map[string]string{}}
		if p, err := s.historyPath(); err == nil {
			s.hist = cachekey.LoadHistory(p)
		}
	}
	return s.hist
}

// saveHistory records k's inputs as the current step's latest;
// flushHistory writes them.
func (s *stageRun) saveHistory(k *cachekey.Key) {
	s.history().Steps[s.step] = k.Digests()
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
func (s *stageRun) missReason(k *cachekey.Key) string {
	old, ok := s.history().Steps[s.step]
	if !ok {
		return "no earlier build of this step in this store"
	}
	return cachekey.ExplainMiss(old, k.Digests(), s.step == 2, s.fromReason)
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

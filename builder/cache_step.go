package builder

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/ibuild/ibuild/builder/internal/cachekey"
	"github.com/ibuild/ibuild/layers"
)

// startKey sets the stage's first cache key from its base, and works out
// why it differs from the last build's, for the first step's miss reason.
func (s *stageRun) startKey(base v1.Image) {
	s.key = v1.Hash{}
	if s.b.cache == nil {
		return
	}
	k, err := s.fromKey(base)
	if err != nil {
		return
	}
	s.key = k.Sum()
	s.step = 1
	if old, ok := s.history().Steps[1]; ok {
		desc := k.Get("base")
		if s.fromReason = cachekey.FromMissReason(old, k.Digests(), strings.TrimPrefix(desc, "image ")); s.fromReason == "" {
			return // unchanged: nothing to write
		}
	}
	s.saveHistory(k)
}

// useCache reports whether this stage's steps may be taken from the cache.
func (s *stageRun) useCache() bool {
	cs := s.b.cache
	if !cs.lookup {
		return false
	}
	return !cs.skipStages[strings.ToLower(s.name)] && !cs.skipStages[strings.ToLower(s.st.Name)] &&
		!cs.skipStages[strconv.Itoa(s.index)]
}

// cachedStep runs one instruction through the cache: it computes the
// step's key and, on a hit, applies the recorded result without running
// anything (config-only steps are run anyway, for their effect on the
// stage, then take the recorded config); on a miss it runs the step,
// records the result and says why it missed.
func (s *stageRun) cachedStep(ctx context.Context, cmd instructions.Command) (cached bool, reason string, err error) {
	if oc, ok := cmd.(onbuildCommand); ok {
		cmd = oc.Command
	}
	if err := s.prepare(cmd); err != nil {
		return false, "", err
	}
	defer s.clearStepTmp()
	s.c.lastLayer = nil
	cs := s.b.cache
	if _, isArg := cmd.(*instructions.ArgCommand); isArg || cs == nil || s.key.Hex == "" {
		// ARG changes no image: the steps that read it key its value.
		return false, "", s.dispatch(ctx, cmd)
	}
	mark := s.c.mark()
	k, kerr := s.stepKey(ctx, cmd)
	if kerr != nil {
		if errors.Is(kerr, context.Canceled) {
			return false, "", kerr
		}
		// The step reports the problem itself (a missing source, an
		// unreachable URL); without a key the rest of the stage runs
		// uncached.
		s.key = v1.Hash{}
		return false, "", s.dispatch(ctx, cmd)
	}
	key := k.Sum()
	lookup := s.useCache()
	if lookup {
		release, err := cs.acquire(ctx, key)
		if err != nil {
			return false, "", err
		}
		defer release()
		rec, layer, ok, err := cs.get(key, s.c)
		if err != nil {
			return false, "", err
		}
		if ok {
			if configOnly(cmd) {
				if err := s.dispatch(ctx, cmd); err != nil {
					return false, "", err
				}
			}
			if err := s.c.applyCached(rec, layer, mark, configOnly(cmd)); err == nil {
				s.key = key
				cs.record(s, key, rec, layer)
				return true, "", nil
			}
			// A record that does not fit this chain is ignored. A config-only
			// step already ran, and its result stands.
			if configOnly(cmd) {
				return s.finishMiss(ctx, k, key, mark, "the cache record did not match the image; rebuilt")
			}
		}
		reason = s.missReason(k)
	} else if !cs.lookup {
		reason = "--no-cache"
	} else {
		reason = "--no-cache-filter " + s.name
	}
	if !configOnly(cmd) {
		if err := s.c.markConfig(&mark); err != nil {
			return false, "", err
		}
	}
	if err := s.runOrShare(ctx, cmd, k); err != nil {
		return false, "", err
	}
	return s.finishMiss(ctx, k, key, mark, reason)
}

// runOrShare runs a step that missed. A COPY or ADD first looks for its
// layer by what the layer is made of (the layers below, the instruction,
// its sources, the working directory) rather than by the step's key,
// which also covers the image config: builds for other platforms, or of
// other Dockerfiles, that made the same layer share it, and one of two
// concurrent builds making it waits for the other.
func (s *stageRun) runOrShare(ctx context.Context, cmd instructions.Command, k *cachekey.Key) error {
	switch cmd.(type) {
	case *instructions.CopyCommand, *instructions.AddCommand:
	default:
		return s.dispatch(ctx, cmd)
	}
	lk := cachekey.New()
	for n, v := range k.Inputs() {
		switch {
		case n == "parent":
		case n == "instruction", n == "from", strings.HasPrefix(n, "src:"), strings.HasPrefix(n, "url:"):
			lk.Add(n, v)
		}
	}
	lk.Add("kind", "layer")
	lk.Add("below", s.c.chainID())
	lk.Add("workdir", s.c.imageConfig().WorkingDir)
	lk.Add("options", s.b.cache.layerOptions)
	key := lk.Sum()
	cs := s.b.cache
	release, err := cs.acquire(ctx, key)
	if err != nil {
		return err
	}
	defer release()
	if desc, ok := cs.store.LayerMemo(key); ok && s.useCache() {
		s.c.appendLayer(s.c.layerFor(*desc), *desc, cmdText(cmd))
		s.layerSize = desc.ReportedSize()
		return nil
	}
	if err := s.dispatch(ctx, cmd); err != nil {
		return err
	}
	if s.c.lastLayer != nil {
		d := *s.c.lastLayer
		below := len(s.c.config.RootFS.DiffIDs) - 1
		ch := layers.ChainIDs(s.c.config.RootFS.DiffIDs)[below]
		var chain *v1.Hash
		if d.Lazy() {
			chain = &ch
		}
		if err := cs.store.PutLayerMemo(key, d, chain); err != nil {
			s.b.warn("build cache: " + err.Error())
		}
	}
	return nil
}

// finishMiss records the result of a step that ran, since mark.
func (s *stageRun) finishMiss(ctx context.Context, k *cachekey.Key, key v1.Hash, mark stepMark, reason string) (bool, string, error) {
	cs := s.b.cache
	rec, layer, err := s.c.cacheRecord(mark)
	if err != nil {
		return false, "", err
	}
	if err := cs.store.CachePut(ctx, key, rec); err != nil {
		s.b.warn("build cache: " + err.Error())
	}
	s.saveHistory(k)
	cs.record(s, key, rec, layer)
	s.key = key
	return false, reason, nil
}

func (s *stageRun) clearStepTmp() {
	if s.stepTmp != "" {
		os.RemoveAll(s.stepTmp)
	}
	s.stepTmp, s.prefetched = "", nil
}

package builder

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"

	"github.com/ibuild/ibuild/builder/dockerfile"
	"github.com/ibuild/ibuild/builder/internal/cachekey"
	"github.com/ibuild/ibuild/builder/internal/copier"
	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/layers"
)

// stageRun is one stage of one platform's build.
type stageRun struct {
	b         *build
	index     int
	name      string
	st        *instructions.Stage
	baseStage int
	// exported is set for the stages whose layers the result carries.
	exported bool
	baseRef  string
	platform v1.Platform
	deps     []dep
	// context is the named tree context the stage is built on (FROM
	// NAME); replaced says a named context replaces the stage itself (its
	// instructions are not run). See contexts.go.
	context  *namedContext
	replaced bool

	c *Container
	// baseLayers is how many layers the stage's base has (for Squash).
	baseLayers int
	// args are the ARGs declared in this stage, with their values.
	args *dockerfile.Vars
	// cmdSet records that CMD was set in this stage (ENTRYPOINT then keeps it).
	cmdSet bool

	step, steps int
	// layerSize is set by a step that made a layer, for progress.
	layerSize int64

	// key is the cache key of the last step (of FROM at first); empty
	// when the stage is not cached from there on.
	key v1.Hash
	// fromReason says why the stage's start differs from its last build.
	fromReason string
	// hist is the stage's step history (see history); histChanged says
	// that steps of this build changed it.
	hist        *cachekey.History
	histChanged bool
	// stepTmp and prefetched hold ADD URL downloads made while computing
	// the current step's key, for the step to use.
	stepTmp    string
	prefetched map[string]*copier.Fetched

	result     v1.Image
	rootfsOnce sync.Once
	rootfs     *layers.RootFS
	rootfsErr  error
}

// build runs FROM, the base image's ONBUILD triggers, then every
// instruction of the stage.
func (s *stageRun) build(ctx context.Context) error {
	b := s.b
	start := time.Now()
	s.args = &dockerfile.Vars{}
	var base v1.Image
	s.step, s.steps = 1, 1+len(s.st.Commands)
	from := progress.Event{Instruction: s.st.SourceCode, Location: fmt.Sprintf("%s:%d", b.df.Path, line(s.st.Location))}
	s.emit(withKind(from, progress.StepStart))
	if s.baseStage >= 0 {
		dep := b.stages[s.baseStage]
		base = dep.result
		s.platform = dep.c.Platform()
	} else if s.context != nil {
		base = nil // the context's files go into a layer on scratch
	} else {
		img, err := b.resolveImage(ctx, s.baseRef, s.platform)
		if err != nil {
			err = b.df.ErrorAt(s.st.Location, err)
			from.Duration, from.Error = time.Since(start), err.Error()
			s.emit(withKind(from, progress.StepError))
			return err
		}
		base = img
	}
	from.Duration = time.Since(start)
	s.emit(withKind(from, progress.StepDone))
	c, err := newContainer(b.opts.Store, base, s.platform, containerOptions{
		commit: layers.CommitOptions{
			Compression: b.opts.Compression,
			Level:       b.opts.CompressionLevel,
			TarOptions:  layers.TarOptions{SourceDateEpoch: b.opts.SourceDateEpoch},
		},
		format:  b.opts.Format,
		created: b.created,
		warn:    b.warn,
		eager:   s.exported,
		upload:  b.layerUpload(s.exported),
	})
	if err != nil {
		return b.df.ErrorAt(s.st.Location, err)
	}
	c.dockerDefaults(base == nil)
	s.c = c
	s.baseLayers = len(c.layers)
	defer c.removeUnpacked()
	s.startKey(base)
	defer s.flushHistory()

	var cmds []instructions.Command
	if !s.replaced {
		if cmds, err = s.onbuildTriggers(); err != nil {
			return err
		}
		c.config.Config.OnBuild = nil
	}
	if s.context != nil {
		cp, err := s.contextCopy(s.context)
		if err != nil {
			return b.df.ErrorAt(s.st.Location, err)
		}
		cmds = append(cmds, cp)
	}
	if !s.replaced {
		cmds = append(cmds, s.st.Commands...)
	}
	s.steps = 1 + len(cmds)
	for i, cmd := range cmds {
		s.step = i + 2
		if err := s.runStep(ctx, cmd); err != nil {
			return err
		}
	}
	if s.index == len(b.stages)-1 || strings.EqualFold(b.opts.Target, s.st.Name) {
		s.applyLabels()
	}
	img, err := c.Image()
	if err != nil {
		return err
	}
	s.result = img
	return nil
}

// applyLabels adds --label values to the image.
func (s *stageRun) applyLabels() {
	if len(s.b.opts.Labels) == 0 {
		return
	}
	cfg := s.c.imageConfig()
	if cfg.Labels == nil {
		cfg.Labels = map[string]string{}
	}
	for k, v := range s.b.opts.Labels {
		cfg.Labels[k] = v
	}
}

// onbuildTriggers parses the base image's ONBUILD triggers, which run
// before the stage's own instructions.
func (s *stageRun) onbuildTriggers() ([]instructions.Command, error) {
	var out []instructions.Command
	for _, trig := range s.c.config.Config.OnBuild {
		res, err := parser.Parse(strings.NewReader(trig))
		if err != nil {
			return nil, s.b.df.ErrorAt(s.st.Location, fmt.Errorf("ONBUILD trigger %q of the base image: %w", trig, err))
		}
		for _, n := range res.AST.Children {
			cmd, err := instructions.ParseCommand(n)
			if err != nil {
				return nil, s.b.df.ErrorAt(s.st.Location, fmt.Errorf("ONBUILD trigger %q of the base image: %w", trig, err))
			}
			out = append(out, onbuildCommand{Command: cmd, from: s.st.Location})
		}
	}
	return out, nil
}

// onbuildCommand is a trigger inherited from the base image: it reports
// the FROM line's location, since its own lines are not in this file.
type onbuildCommand struct {
	instructions.Command
	from []parser.Range
	// context marks the COPY that puts a named context's files into a
	// stage built FROM it, rather than a trigger.
	context bool
}

func (o onbuildCommand) Location() []parser.Range { return o.from }

// runStep expands and dispatches one instruction, reporting progress and
// locating any error at path:line.
func (s *stageRun) runStep(ctx context.Context, cmd instructions.Command) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	start := time.Now()
	text := cmdText(cmd)
	loc := s.location(cmd)
	s.layerSize = 0
	s.emit(progress.Event{Kind: progress.StepStart, Instruction: text, Location: loc})
	cached, reason, err := s.cachedStep(ctx, cmd)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return err
		}
		err = s.b.df.ErrorAt(cmd.Location(), err)
		if oc, ok := cmd.(onbuildCommand); ok && !oc.context {
			err = fmt.Errorf("%w (in ONBUILD trigger %q of the base image)", err, cmdText(oc.Command))
		}
		s.emit(progress.Event{Kind: progress.StepError, Instruction: text, Location: loc, Duration: time.Since(start), Error: err.Error()})
		return err
	}
	s.emit(progress.Event{Kind: progress.StepDone, Instruction: text, Location: loc, Duration: time.Since(start),
		LayerSize: s.layerSize, Cached: cached, MissReason: reason})
	return nil
}

func (s *stageRun) location(cmd instructions.Command) string {
	return fmt.Sprintf("%s:%d", s.b.df.Path, line(cmd.Location()))
}

func (s *stageRun) emit(e progress.Event) {
	e.Stage = s.name
	e.Step, e.Steps = s.step, s.steps
	s.b.emit(e)
}

// scope is the variable scope instructions expand against: the stage's ARGs
// under the image's ENV (ENV wins, as in docker), as a copy its caller
// may change. Instructions that only read it take view.
func (s *stageRun) scope() *dockerfile.Vars {
	return s.args.Overlay(dockerfile.NewVars(s.c.imageConfig().Env))
}

// view is scope without the copy: a Dockerfile's every instruction
// expands its words, and copying ENV for each made n ENVs cost O(n^2).
func (s *stageRun) view() scopeView { return scopeView{c: s.c, args: s.args} }

// scopeView reads the image's ENV over the stage's ARGs, as they are when
// read (shell.EnvGetter).
type scopeView struct {
	c    *Container
	args *dockerfile.Vars
}

func (v scopeView) Get(k string) (string, bool) {
	if val, ok := v.c.envGet(k); ok {
		return val, true
	}
	return v.args.Get(k)
}

// Keys lists the ARGs, then the ENV keys that are no ARG, as scope's
// Keys does.
func (v scopeView) Keys() []string {
	keys := v.args.Keys()
	for _, e := range v.c.imageConfig().Env {
		k, _, _ := strings.Cut(e, "=")
		if _, ok := v.args.Get(k); !ok {
			keys = append(keys, k)
		}
	}
	return keys
}

// expand expands cmd's words in place, if it has any, within the
// expansion limits of one instruction.
func (s *stageRun) expand(cmd instructions.Command) error {
	words := s.b.exp.Words(s.view())
	if e, ok := cmd.(instructions.SupportsSingleWordExpansion); ok {
		if err := e.Expand(words.Word); err != nil {
			return err
		}
	}
	if e, ok := cmd.(instructions.SupportsSingleWordExpansionRaw); ok {
		if err := e.ExpandRaw(words.HeredocFile); err != nil {
			return err
		}
	}
	return nil
}

// RootFS is the stage's result as a read-only tree, for COPY --from.
func (s *stageRun) RootFS(ctx context.Context) (*layers.RootFS, error) {
	s.rootfsOnce.Do(func() {
		s.rootfs, s.rootfsErr = s.c.RootFS(ctx)
	})
	return s.rootfs, s.rootfsErr
}

// cmdText is the created_by of a step: the instruction as written
// (ARG values given with --build-arg never appear).
func cmdText(cmd instructions.Command) string {
	if oc, ok := cmd.(onbuildCommand); ok {
		return cmdText(oc.Command)
	}
	if st, ok := cmd.(fmt.Stringer); ok {
		return strings.TrimSpace(st.String())
	}
	return strings.ToUpper(cmd.Name())
}

func withKind(e progress.Event, k progress.Kind) progress.Event {
	e.Kind = k
	return e
}

func line(loc []parser.Range) int {
	if len(loc) == 0 {
		return 0
	}
	return loc[0].Start.Line
}

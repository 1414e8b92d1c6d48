package builder

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"

	"github.com/ibuild/ibuild/builder/attest"
	"github.com/ibuild/ibuild/builder/dockerfile"
	"github.com/ibuild/ibuild/builder/graph"
	"github.com/ibuild/ibuild/builder/internal/copier"
	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
)

// Build builds the Dockerfile described by opts into the store, tags the
// result with opts.Tags, writes opts.Outputs, pushes it to opts.Push and
// exports its cache to opts.CacheTo. A failed build tags nothing. A
// pushed result whose registry-cache layers were never downloaded is not
// stored (see Options.Push).
func Build(ctx context.Context, opts Options) (*Result, error) {
	if opts.Store == nil {
		return nil, errors.New("builder: Options.Store is required")
	}
	if opts.ContextDir == "" && opts.ContextTar == nil {
		return nil, errors.New("builder: Options.ContextDir is required")
	}
	if opts.Squash && opts.SquashAll {
		return nil, errors.New("builder: Squash and SquashAll exclude each other")
	}
	if err := opts.fill(); err != nil {
		return nil, err
	}
	format := opts.Format
	if _, err := opts.capabilities(); err != nil {
		return nil, err
	}
	if err := checkAnnotations(opts.Annotations, buildPlatforms(opts.Platforms), format); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(opts.Tags))
	for _, t := range opts.Tags {
		n, err := layers.NormalizeName(t)
		if err != nil {
			return nil, fmt.Errorf("invalid tag %q: %w", t, err)
		}
		names = append(names, n)
	}
	// Hold the store's shared lock for the whole build: a concurrent prune
	// (which takes it exclusively) then waits instead of collecting layers
	// this build wrote but has not tagged yet.
	unlock, err := opts.Store.Lock(ctx, false)
	if err != nil {
		return nil, err
	}
	defer unlock()
	releaseContexts, err := fetchContexts(ctx, &opts)
	if err != nil {
		return nil, err
	}
	defer releaseContexts()
	dfPath, data, err := readDockerfile(ctx, opts)
	if err != nil {
		return nil, err
	}
	besideDockerfile := dfPath
	if opts.dockerfileHost != "" {
		besideDockerfile = opts.dockerfileHost
	} else if opts.DockerfileContent != nil {
		besideDockerfile = "" // not read from a file: nothing beside it
	}
	cfs, err := copier.OpenContext(opts.ContextDir, besideDockerfile, opts.IgnoreFile)
	if err != nil {
		return nil, err
	}
	if opts.contextID != "" {
		cfs.ID = opts.contextID
	}
	cache, err := newCacheSession(&opts, cfs.ID)
	if err != nil {
		return nil, err
	}
	platforms := buildPlatforms(opts.Platforms)
	var warnMu sync.Mutex
	var warnings []string
	warn := func(msg string) {
		warnMu.Lock()
		defer warnMu.Unlock()
		for _, w := range warnings {
			if w == msg {
				return
			}
		}
		warnings = append(warnings, msg)
		opts.Progress.Emit(progress.Event{Kind: progress.Warning, Time: opts.Now(), Message: msg})
	}

	// Every platform's stages share the --jobs limit.
	jobs := make(chan struct{}, opts.Jobs)
	started := opts.Now()
	builds := make([]*build, len(platforms))
	images := make([]v1.Image, len(platforms))
	finals := make([]*stageRun, len(platforms))
	errs := make([]error, len(platforms))
	var wg sync.WaitGroup
	for i, p := range platforms {
		wg.Add(1)
		go func(i int, p v1.Platform) {
			defer wg.Done()
			b, err := newBuild(ctx, &opts, dfPath, data, cfs, p, len(platforms) > 1, warn)
			if err != nil {
				errs[i] = err
				return
			}
			b.cache, b.jobs = cache, jobs
			builds[i] = b
			finals[i], errs[i] = b.run(ctx)
			if errs[i] == nil {
				images[i], errs[i] = squashResult(ctx, &opts, finals[i])
			}
		}(i, p)
	}
	wg.Wait()
	if err := cache.close(); err != nil {
		warn("build cache: saving the context index: " + err.Error())
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := annotateImages(&opts, images, platforms); err != nil {
		return nil, err
	}

	atts, err := attestResult(ctx, &opts, attestInput{builds: builds, finals: finals, images: images,
		names: names, dfPath: dfPath, df: data, started: started}, warn)
	if err != nil {
		return nil, err
	}
	res, err := storeResult(ctx, &opts, images, platforms, names, atts, warn)
	if err != nil {
		return nil, err
	}
	res.Descriptor.Annotations = descriptorAnnotations(&opts, res, platforms)
	if opts.Manifest != "" {
		if err := addToManifestList(ctx, &opts, res, warn); err != nil {
			return nil, err
		}
	}
	if err := writeOutputs(ctx, &opts, res, warn); err != nil {
		return nil, err
	}
	cache.keepImported(ctx)
	if err := pushResult(ctx, &opts, res); err != nil {
		return nil, err
	}
	if len(opts.CacheTo) > 0 {
		// The result's stages are the target and the stages it is built
		// FROM: their layers are all in the result.
		isFinal := map[*stageRun]bool{}
		for _, f := range finals {
			for s := f; s != nil && !isFinal[s]; {
				isFinal[s] = true
				if s.baseStage < 0 {
					break
				}
				s = s.b.stages[s.baseStage]
			}
		}
		entries := cache.exportEntries(isFinal)
		// The result's layers have their blobs already; mode=max exports
		// other stages' too, made as the export reads them.
		var ls []v1.Layer
		for _, e := range entries {
			if e.Layer != nil && e.Final {
				ls = append(ls, e.Layer)
			}
		}
		if err := opts.Store.Materialize(ctx, ls, opts.Jobs); err != nil {
			return nil, fmt.Errorf("cache export (CacheTo): %w", err)
		}
		if err := cache.exportCache(ctx, &opts, entries); err != nil {
			return nil, err
		}
	}
	if err := tagResult(ctx, &opts, res); err != nil {
		return nil, err
	}
	res.Warnings = warnings
	return res, nil
}

// storeResult assembles the result of the platforms' images and writes
// it to the store (tagResult names it); unless it is to be pushed and has
// layers from a registry cache that no step needed (not downloaded): it
// is then only assembled in memory, for pushResult.
func storeResult(ctx context.Context, opts *Options, images []v1.Image, platforms []v1.Platform, names []string, atts [][]attest.Statement, warn func(string)) (*Result, error) {
	res := &Result{Names: names}
	var top interface {
		MediaType() (types.MediaType, error)
		Digest() (v1.Hash, error)
		Size() (int64, error)
	}
	// The result's layers leave the build: make the blobs of those that
	// are still snapshots only, --jobs at a time.
	if err := materialize(ctx, opts, images); err != nil {
		return nil, err
	}
	if len(images) == 1 {
		res.Image, top = images[0], images[0]
		var err error
		if res.ID, err = images[0].ConfigName(); err != nil {
			return nil, err
		}
	}
	if len(images) > 1 || atts != nil {
		var idx v1.ImageIndex = mutate.IndexMediaType(empty.Index, opts.Format.indexType())
		for i, img := range images {
			p := platforms[i]
			idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
				Add:        indexEntry{img},
				Descriptor: v1.Descriptor{Platform: &p, Annotations: registry.SelectAnnotations(opts.Annotations, registry.AnnotationManifestDescriptor, &p)},
			})
		}
		if anns := registry.SelectAnnotations(opts.Annotations, registry.AnnotationIndex, nil); anns != nil {
			idx = mutate.Annotations(idx, anns).(v1.ImageIndex)
		}
		var err error
		if idx, err = appendAttestations(idx, images, atts, opts.Attest.OCIArtifact); err != nil {
			return nil, err
		}
		res.Index, top = idx, idx
	}
	// Outputs read every layer anyway, and a manifest list references
	// stored images: then the result is stored too.
	if len(opts.Push)+len(opts.PushByDigest) > 0 && len(opts.Outputs) == 0 && opts.Manifest == "" {
		missing, err := missingLayers(opts.Store, images)
		if err != nil {
			return nil, err
		}
		if missing > 0 {
			var d v1.Descriptor
			if d.MediaType, err = top.MediaType(); err == nil {
				if d.Digest, err = top.Digest(); err == nil {
					d.Size, err = top.Size()
				}
			}
			if err != nil {
				return nil, err
			}
			if res.Index == nil {
				if cf, err := res.Image.ConfigFile(); err == nil {
					d.Platform = cf.Platform()
				}
			} else {
				res.ID = d.Digest
			}
			res.Descriptor, res.Digest = d, d.Digest
			what := "the result"
			if len(names) > 0 {
				what = strings.Join(names, ", ")
			}
			n := fmt.Sprintf("%d layers came from the registry cache and were", missing)
			if missing == 1 {
				n = "1 layer came from the registry cache and was"
			}
			pullRef := ""
			if len(opts.Push) > 0 {
				pullRef = opts.Push[0]
			} else if r, err := registry.ParseReference(opts.PushByDigest[0], nil); err == nil {
				pullRef = r.Context().Digest(d.Digest.String()).String()
			}
			warn(fmt.Sprintf("%s was pushed but not stored locally: %s not downloaded (ibuild pull %s fetches it)",
				what, n, pullRef))
			return res, nil
		}
	}
	var desc v1.Descriptor
	var err error
	if res.Index == nil {
		desc, err = opts.Store.WriteImage(ctx, res.Image)
	} else {
		desc, err = opts.Store.WriteIndex(ctx, res.Index)
		res.ID = desc.Digest
	}
	if err != nil {
		return nil, err
	}
	res.Descriptor, res.Digest, res.Stored = desc, desc.Digest, true
	return res, nil
}

// tagResult names the stored result with res.Names: the last thing a
// build does, so that a build that fails (or is stopped) later, in an
// output, a push or a cache export, tags nothing.
func tagResult(ctx context.Context, opts *Options, res *Result) error {
	if !res.Stored {
		return nil
	}
	for _, n := range res.Names {
		if err := opts.Store.Tag(ctx, n, res.Descriptor); err != nil {
			return err
		}
	}
	return nil
}

// missingLayers counts the distinct distributable layers of images that
// the store's blob store lacks: layers of a registry cache no step read.
func missingLayers(st *layers.Store, images []v1.Image) (int, error) {
	seen := map[v1.Hash]bool{}
	for _, img := range images {
		ls, err := img.Layers()
		if err != nil {
			return 0, err
		}
		for _, l := range ls {
			if mt, err := l.MediaType(); err == nil && !mt.IsDistributable() {
				continue
			}
			if ld, ok := layers.LayerDescriptor(l); ok && ld.Lazy() {
				continue // in a local snapshot
			}
			d, err := l.Digest()
			if err != nil {
				return 0, err
			}
			if !st.Blobs().Has(d) {
				seen[d] = true
			}
		}
	}
	return len(seen), nil
}

// materialize makes the blobs of the images' lazy layers (see
// layers.CommitSnapshot), opts.Jobs at a time.
func materialize(ctx context.Context, opts *Options, images []v1.Image) error {
	var all []v1.Layer
	for _, img := range images {
		ls, err := img.Layers()
		if err != nil {
			return err
		}
		all = append(all, ls...)
	}
	return opts.Store.Materialize(ctx, all, opts.Jobs)
}

// pushResult pushes the result to opts.Push, from memory: layers from a
// registry cache are mounted from the cache's repository.
func pushResult(ctx context.Context, opts *Options, res *Result) error {
	for _, dest := range opts.Push {
		var d v1.Hash
		var err error
		if res.Index == nil {
			d, err = registry.PushImage(ctx, res.Image, dest, opts.pushOptions())
		} else {
			d, err = registry.PushIndex(ctx, res.Index, dest, opts.pushOptions())
		}
		if err != nil {
			return err
		}
		res.Pushed = append(res.Pushed, Pushed{Ref: dest, Digest: d})
	}
	return pushByDigest(ctx, opts, res)
}

// PlatformsOf are the platforms a build with Options.Platforms ps makes:
// ps, or the host's.
func PlatformsOf(ps []v1.Platform) []v1.Platform {
	return buildPlatforms(ps)
}

// buildPlatforms are the platforms a build makes: ps, or the host's.
func buildPlatforms(ps []v1.Platform) []v1.Platform {
	if len(ps) == 0 {
		return []v1.Platform{HostPlatform()}
	}
	return ps
}

// readDockerfile finds and reads the Dockerfile.
func readDockerfile(ctx context.Context, opts Options) (string, []byte, error) {
	if opts.dockerfileHost != "" {
		data, err := readFileContext(ctx, opts.dockerfileHost)
		if err != nil {
			return "", nil, fmt.Errorf("read Dockerfile %s in the build context: %w", opts.Dockerfile, err)
		}
		return opts.Dockerfile, data, nil
	}
	if opts.DockerfileContent != nil {
		name := opts.Dockerfile
		if name == "" || name == "-" {
			name = "Dockerfile"
		}
		return name, opts.DockerfileContent, nil
	}
	candidates := []string{opts.Dockerfile}
	if opts.Dockerfile == "" {
		candidates = []string{filepath.Join(opts.ContextDir, "Dockerfile"), filepath.Join(opts.ContextDir, "Containerfile")}
	}
	for _, c := range candidates {
		data, err := readFileContext(ctx, c)
		if err == nil {
			return c, data, nil
		}
		if errors.Is(err, dockerfile.ErrNotRegular) {
			return "", nil, fmt.Errorf("Dockerfile %w: name a regular file, or pass the content on standard input (-f -)", err)
		}
		if !errors.Is(err, fs.ErrNotExist) || opts.Dockerfile != "" {
			return "", nil, fmt.Errorf("read Dockerfile: %w", err)
		}
	}
	return "", nil, fmt.Errorf("no Dockerfile or Containerfile in %s (use -f to name one)", opts.ContextDir)
}

// readFileContext reads the file at path, or returns ctx's error once ctx
// is done: a FIFO or a device may block the open or a read for as long as
// its writer likes, or never end, so the read runs in a goroutine of its
// own, which stops at its next read.
func readFileContext(ctx context.Context, path string) ([]byte, error) {
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		data, err := dockerfile.ReadFile(path) // bounded, regular files only
		done <- result{data, err}
	}()
	select {
	case r := <-done:
		return r.data, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// build is the build of one Dockerfile for one target platform.
type build struct {
	opts      *Options
	df        *dockerfile.Dockerfile
	exp       *dockerfile.Expander
	ctx       *copier.ContextFS
	platform  v1.Platform
	showPlat  bool
	meta      *dockerfile.Vars
	metaNames map[string]bool
	stages    []*stageRun
	byName    map[string]int
	created   time.Time
	warn      func(string)

	mu       sync.Mutex
	usedArgs map[string]bool
	images   map[string]*imageSource
	pulls    map[string]*pulled
	cache    *cacheSession
	// materials are the images and URLs the build resolved (provenance).
	materials materialLog
	// containers is set when working containers of this store may be
	// named as --from sources (the working container operations).
	containers *layers.Store
	// jobs bounds the stages building at once across the platforms of one
	// Build (nil: only the per-platform limit).
	jobs     chan struct{}
	emulator emulatorCheck
}

func newBuild(ctx context.Context, opts *Options, dfPath string, data []byte, cfs *copier.ContextFS, platform v1.Platform, showPlat bool, warn func(string)) (*build, error) {
	df, err := dockerfile.ParseContext(ctx, dfPath, data)
	if err != nil {
		return nil, err
	}
	for _, w := range df.Warnings {
		warn(w)
	}
	b := &build{
		opts: opts, df: df, exp: dockerfile.NewExpander(df.EscapeToken), ctx: cfs,
		platform: platform, showPlat: showPlat, warn: warn,
		byName: map[string]int{}, usedArgs: map[string]bool{}, images: map[string]*imageSource{}, pulls: map[string]*pulled{},
		metaNames: map[string]bool{},
	}
	b.created = opts.Now().UTC()
	if opts.SourceDateEpoch != nil {
		b.created = opts.SourceDateEpoch.UTC()
	}
	if err := b.initMetaArgs(ctx); err != nil {
		return nil, err
	}
	for i := range df.Stages {
		st := &df.Stages[i]
		if st.Name != "" {
			b.byName[strings.ToLower(st.Name)] = i
		}
	}
	for i := range df.Stages {
		sr, err := b.prepareStage(ctx, i)
		if err != nil {
			return nil, err
		}
		b.stages = append(b.stages, sr)
	}
	return b, nil
}

// initMetaArgs evaluates the ARGs before the first FROM with the automatic
// platform args and --build-arg overrides.
func (b *build) initMetaArgs(ctx context.Context) error {
	b.meta = &dockerfile.Vars{}
	for k, v := range platformArgs(HostPlatform(), b.platform) {
		b.meta.Set(k, v)
	}
	b.meta.Set("TARGETSTAGE", b.targetStageName())
	for _, a := range b.df.MetaArgs {
		words := b.exp.Words(b.meta)
		for _, kv := range a.Args {
			if err := ctx.Err(); err != nil {
				return err
			}
			b.metaNames[kv.Key] = true
			if v, ok := b.opts.BuildArgs[kv.Key]; ok {
				b.meta.Set(kv.Key, v)
				b.markUsed(kv.Key)
				continue
			}
			if kv.Value == nil {
				// Declared without a default: unset unless an automatic
				// platform arg of that name gives it a value.
				continue
			}
			v, err := words.Word(*kv.Value)
			if err != nil {
				return b.df.ErrorAt(a.Location(), err)
			}
			b.meta.Set(kv.Key, v)
		}
		if err := b.checkEpochArg(&a); err != nil {
			return err
		}
	}
	return nil
}

// checkEpochArg validates a global ARG SOURCE_DATE_EPOCH as BuildKit does:
// its value is a Unix time in seconds. (BuildKit also accepts the name of
// a source-only stage there; ibuild does not.)
func (b *build) checkEpochArg(a *instructions.ArgCommand) error {
	for _, kv := range a.Args {
		if kv.Key != "SOURCE_DATE_EPOCH" {
			continue
		}
		v, ok := b.meta.Get(kv.Key)
		if !ok || v == "" {
			continue
		}
		if _, err := strconv.ParseInt(v, 10, 64); err == nil {
			continue
		}
		for _, st := range b.df.Stages {
			if strings.EqualFold(st.Name, v) {
				return b.df.ErrorAt(a.Location(), fmt.Errorf("SOURCE_DATE_EPOCH=%s names a stage: taking the time from a stage is not supported by ibuild; give a Unix time", v))
			}
		}
		return b.df.ErrorAt(a.Location(), fmt.Errorf("invalid SOURCE_DATE_EPOCH: %s", v))
	}
	return nil
}

// targetStageName is the automatic TARGETSTAGE arg, as BuildKit gives
// it: the --target stage, else the last stage's name, else "default".
func (b *build) targetStageName() string {
	if b.opts.Target != "" {
		return b.opts.Target
	}
	if n := len(b.df.Stages); n > 0 && b.df.Stages[n-1].Name != "" {
		return b.df.Stages[n-1].Name
	}
	return "default"
}

func (b *build) markUsed(k string) {
	b.mu.Lock()
	b.usedArgs[k] = true
	b.mu.Unlock()
}

// stageRef finds a stage by name or index; ok is false for an image ref.
func (b *build) stageRef(ref string) (int, bool) {
	if i, ok := b.byName[strings.ToLower(ref)]; ok {
		return i, true
	}
	if n, err := strconv.Atoi(ref); err == nil && n >= 0 && n < len(b.df.Stages) {
		return n, true
	}
	return -1, false
}

// prepareStage resolves stage i's base and its edges to other stages.
func (b *build) prepareStage(ctx context.Context, i int) (*stageRun, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st := &b.df.Stages[i]
	sr := &stageRun{b: b, index: i, st: st, baseStage: -1, platform: b.platform}
	sr.name = st.Name
	if sr.name == "" {
		sr.name = "stage-" + strconv.Itoa(i)
	}
	base, err := b.exp.Word(st.BaseName, b.meta)
	if err != nil {
		return nil, b.df.ErrorAt(st.Location, err)
	}
	if base == "" {
		return nil, b.df.ErrorAt(st.Location, errors.New("base name expands to an empty string"))
	}
	if nc := b.namedContext(st.Name); st.Name != "" && nc != nil {
		// A named context replaces the stage, as in BuildKit: its own
		// base and instructions are not used.
		sr.replaced = true
		base = nc.name
	}
	if j, ok := b.byName[strings.ToLower(base)]; ok && !sr.replaced {
		sr.baseStage = j
	} else if nc := b.treeContext(base); nc != nil {
		sr.context = nc
	} else {
		sr.baseRef = base
	}
	if st.Platform != "" {
		ps, err := b.exp.Word(st.Platform, b.meta)
		if err != nil {
			return nil, b.df.ErrorAt(st.Location, err)
		}
		p, err := ParsePlatform(ps)
		if err != nil {
			return nil, b.df.ErrorAt(st.Location, fmt.Errorf("--platform: %w", err))
		}
		sr.platform = p
	}
	for _, cmd := range st.Commands {
		if sr.replaced {
			break
		}
		if c, ok := cmd.(*instructions.CopyCommand); ok && c.From != "" {
			// BuildKit refuses a variable in COPY --from, in every stage.
			if r, err := b.exp.Word(c.From, dockerfile.NewVars(nil)); err != nil || r != c.From {
				return nil, b.df.ErrorAt(cmd.Location(), errors.New("variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround"))
			}
		}
		for _, ref := range stageRefsOf(cmd) {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			r, err := b.exp.Word(ref, b.meta)
			if err != nil {
				return nil, b.df.ErrorAt(cmd.Location(), err)
			}
			if j, ok := b.stageRef(r); ok {
				sr.deps = append(sr.deps, dep{stage: j, line: line(cmd.Location()), via: cmdText(cmd)})
			}
		}
	}
	if sr.baseStage >= 0 {
		sr.deps = append(sr.deps, dep{stage: sr.baseStage, line: line(st.Location), via: st.SourceCode})
		// The base stage's ONBUILD triggers run in this stage: their
		// --from stages are this stage's dependencies too.
		for _, ref := range onbuildStageRefs(&b.df.Stages[sr.baseStage]) {
			r, err := b.exp.Word(ref, b.meta)
			if err != nil {
				return nil, b.df.ErrorAt(st.Location, err)
			}
			if j, ok := b.stageRef(r); ok {
				sr.deps = append(sr.deps, dep{stage: j, line: line(st.Location), via: st.SourceCode})
			}
		}
	}
	return sr, nil
}

// onbuildStageRefs lists the --from references of a stage's ONBUILD
// triggers; triggers that do not parse are reported when they run.
func onbuildStageRefs(st *instructions.Stage) []string {
	var out []string
	for _, cmd := range st.Commands {
		ob, ok := cmd.(*instructions.OnbuildCommand)
		if !ok {
			continue
		}
		res, err := parser.Parse(strings.NewReader(ob.Expression))
		if err != nil {
			continue
		}
		for _, n := range res.AST.Children {
			if c, err := instructions.ParseCommand(n); err == nil {
				out = append(out, stageRefsOf(c)...)
			}
		}
	}
	return out
}

type dep struct {
	stage int
	line  int
	via   string
}

// stageRefsOf lists the --from references of a command.
func stageRefsOf(cmd instructions.Command) []string {
	switch c := cmd.(type) {
	case *instructions.CopyCommand:
		if c.From != "" {
			return []string{c.From}
		}
	case *instructions.RunCommand:
		var out []string
		for _, m := range instructions.GetMounts(c) {
			if m.From != "" {
				out = append(out, m.From)
			}
		}
		return out
	}
	return nil
}

// run builds the target stage and what it needs, and returns the target.
func (b *build) run(ctx context.Context) (*stageRun, error) {
	target := len(b.stages) - 1
	if b.opts.Target != "" {
		i, ok := b.byName[strings.ToLower(b.opts.Target)]
		if !ok {
			var names []string
			for n := range b.byName {
				names = append(names, n)
			}
			sort.Strings(names)
			return nil, fmt.Errorf("target stage %q not found in %s (stages: %s)", b.opts.Target, b.df.Path, strings.Join(names, ", "))
		}
		target = i
	}
	// The target and the stages it is built FROM make the result's layers,
	// which leave the build (it is stored): those commit their blobs at
	// once, in the pass that hashes them. Other stages' layers stay
	// snapshots (see layers.CommitSnapshot). A squashed result carries none
	// of them as they are.
	if !b.opts.Squash && !b.opts.SquashAll {
		for i := target; i >= 0 && !b.stages[i].exported; i = b.stages[i].baseStage {
			b.stages[i].exported = true
		}
	}
	names := make([]string, len(b.stages))
	for i, s := range b.stages {
		names[i] = s.name
	}
	g := graph.New(names)
	for i, s := range b.stages {
		for _, d := range s.deps {
			g.AddEdge(i, graph.Edge{To: d.stage, Via: d.via, Line: d.line})
		}
	}
	order, err := g.Needed(target)
	if err != nil {
		var ce *graph.CycleError
		if errors.As(err, &ce) {
			return nil, &dockerfile.Error{Path: b.df.Path, Line: ce.Edge.Line, Text: ce.Edge.Via, Err: err}
		}
		return nil, err
	}
	if err := g.Run(ctx, order, b.opts.Jobs, func(ctx context.Context, i int) error {
		if b.jobs != nil {
			select {
			case b.jobs <- struct{}{}:
				defer func() { <-b.jobs }()
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return b.stages[i].build(ctx)
	}); err != nil {
		return nil, err
	}
	b.reportUnusedArgs()
	return b.stages[target], nil
}

// reportUnusedArgs warns about --build-arg values no ARG consumed, as
// docker does.
func (b *build) reportUnusedArgs() {
	var unused []string
	for k := range b.opts.BuildArgs {
		if !b.usedArgs[k] && !isPredefinedArg(k) {
			unused = append(unused, k)
		}
	}
	if len(unused) > 0 {
		sort.Strings(unused)
		b.warn(fmt.Sprintf("one or more build args were not consumed: %s", strings.Join(unused, ", ")))
	}
}

// isPredefinedArg reports whether k is one of docker's predefined proxy
// args, usable in RUN without an ARG instruction.
func isPredefinedArg(k string) bool {
	switch k {
	case keepGitDirArg, "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
		"NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy":
		return true
	}
	return false
}

func (b *build) emit(e progress.Event) {
	e.Time = b.opts.Now()
	if b.showPlat {
		e.Platform = PlatformString(b.platform)
	}
	b.opts.Progress.Emit(e)
}

package builder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"

	"github.com/ibuild/ibuild/builder/ctxfetch"
	"github.com/ibuild/ibuild/builder/internal/copier"
	"github.com/ibuild/ibuild/builder/progress"
)

// keepGitDirArg is BuildKit's build arg that keeps .git in a git context.
const keepGitDirArg = "BUILDKIT_CONTEXT_KEEP_GIT_DIR"

// namedContext is a --build-context NAME=VALUE as the build uses it:
// either a tree of files (a directory, a git repository, a downloaded
// tarball), filtered by its own .dockerignore, or an image
// (docker-image://REF, oci-layout://PATH[@DIGEST|:TAG]).
type namedContext struct {
	// name is the normalized name (see contextKey); value as given.
	name, value string
	tree        *copier.ContextFS
	// image is a reference resolveImage takes.
	image string
}

// fetchContexts makes the main context and the named contexts local:
// a git URL or an http(s) URL in ContextDir, ContextTar, and each
// BuildContexts value. It rewrites opts to point at what it fetched and
// returns the function that removes it.
func fetchContexts(ctx context.Context, opts *Options) (release func(), err error) {
	var fetched []*ctxfetch.Fetched
	release = func() {
		for _, f := range fetched {
			f.Close()
		}
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	tmp := opts.Store.TempRoot()
	fopts := ctxfetch.Options{TempDir: tmp, Progress: func(msg string) {
		opts.Progress.Emit(progress.Event{Kind: progress.Log, Time: opts.Now(), Message: msg})
	}}
	keepGit := false
	if v, ok := opts.BuildArgs[keepGitDirArg]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return release, fmt.Errorf("build arg %s=%s: want true or false", keepGitDirArg, v)
		}
		keepGit = b
	}

	var main *ctxfetch.Fetched
	switch {
	case opts.ContextTar != nil:
		main, err = readContextTar(ctx, opts.ContextTar, fopts)
		if err != nil {
			return release, err
		}
	default:
		src, err := ctxfetch.Parse(opts.ContextDir)
		if err != nil {
			return release, fmt.Errorf("build context: %w", err)
		}
		if src.Kind == ctxfetch.KindStdin {
			return release, errors.New("build context -: pass the tar stream as Options.ContextTar")
		}
		if src.Kind != ctxfetch.KindDir {
			if main, err = fetchSource(ctx, src, opts, fopts, keepGit); err != nil {
				return release, err
			}
		}
	}
	if main != nil {
		fetched = append(fetched, main)
		opts.ContextDir, opts.contextID = main.Dir, main.ID
		switch {
		case opts.DockerfileContent != nil:
		case main.Dockerfile != nil:
			opts.DockerfileContent = main.Dockerfile
			if opts.Dockerfile == "" {
				opts.Dockerfile = "Dockerfile"
			}
		default:
			if err := opts.dockerfileInContext(main.Dir); err != nil {
				return release, err
			}
		}
	}

	names := make([]string, 0, len(opts.BuildContexts))
	for n := range opts.BuildContexts {
		names = append(names, n)
	}
	sort.Strings(names)
	opts.named = map[string]*namedContext{}
	for _, n := range names {
		v := opts.BuildContexts[n]
		nc, f, err := openNamedContext(ctx, n, v, opts, fopts, keepGit)
		if f != nil {
			fetched = append(fetched, f)
		}
		if err != nil {
			return release, fmt.Errorf("build context %s=%s: %w", n, ctxfetch.Redact(v), err)
		}
		if _, dup := opts.named[nc.name]; dup {
			return release, fmt.Errorf("build context %s is given twice (names are compared as image references are: %s)", n, nc.name)
		}
		opts.named[nc.name] = nc
	}
	return release, nil
}

// fetchSource fetches a git or http(s) context.
func fetchSource(ctx context.Context, src ctxfetch.Source, opts *Options, fopts ctxfetch.Options, keepGit bool) (*ctxfetch.Fetched, error) {
	switch src.Kind {
	case ctxfetch.KindGit:
		ref := *src.Git
		ref.KeepGitDir = ref.KeepGitDir || keepGit
		// BuildKit's rule: with SOURCE_DATE_EPOCH, files carry the
		// commit's time, so the layers made of them are reproducible.
		ref.MTimeCommit = ref.MTimeCommit || opts.SourceDateEpoch != nil
		return ctxfetch.Git(ctx, &ref, fopts)
	case ctxfetch.KindHTTP:
		return ctxfetch.HTTP(ctx, opts.HTTPClient, src.Raw, fopts)
	}
	return nil, fmt.Errorf("context %s: cannot fetch a %s context", src.Raw, src.Kind)
}

// readContextTar unpacks the tar stream r, giving up (and leaving the
// read behind) when ctx ends: a pipe may stay open without data for as
// long as its writer likes.
func readContextTar(ctx context.Context, r io.Reader, fopts ctxfetch.Options) (*ctxfetch.Fetched, error) {
	type result struct {
		f   *ctxfetch.Fetched
		err error
	}
	done := make(chan result, 1)
	go func() {
		f, err := ctxfetch.Tar(ctx, r, "the build context on standard input", fopts)
		done <- result{f, err}
	}()
	select {
	case res := <-done:
		return res.f, res.err
	case <-ctx.Done():
		go func() {
			if res := <-done; res.f != nil {
				res.f.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// dockerfileInContext points Dockerfile (a path inside a fetched
// context, as docker build takes -f with a URL) at its file in dir,
// following symlinks only inside dir. The name in messages stays the
// path as given.
func (o *Options) dockerfileInContext(dir string) error {
	rel := o.Dockerfile
	if rel == "" {
		for _, n := range []string{"Dockerfile", "Containerfile"} {
			if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
				rel = n
				break
			}
		}
		if rel == "" {
			return errors.New("no Dockerfile or Containerfile at the root of the build context (use -f to name one inside it)")
		}
	}
	c := &copier.ContextFS{Root: dir}
	rp, err := c.Resolve("/" + rel)
	if err != nil {
		return fmt.Errorf("Dockerfile %s: %w", rel, err)
	}
	o.dockerfileHost = c.Host(rp)
	o.Dockerfile = path.Clean(rel)
	return nil
}

// openNamedContext opens one --build-context value.
func openNamedContext(ctx context.Context, n, v string, opts *Options, fopts ctxfetch.Options, keepGit bool) (*namedContext, *ctxfetch.Fetched, error) {
	if n == "" {
		return nil, nil, errors.New("want NAME=VALUE")
	}
	if strings.EqualFold(n, "scratch") || strings.EqualFold(n, "context") {
		return nil, nil, fmt.Errorf("%s cannot be replaced by a named context", n)
	}
	nc := &namedContext{name: contextKey(n), value: v}
	switch {
	case strings.HasPrefix(v, "docker-image://"):
		ref := strings.TrimPrefix(v, "docker-image://")
		if ref != "scratch" {
			if _, err := name.ParseReference(ref, name.WeakValidation); err != nil {
				return nil, nil, err
			}
		}
		nc.image = ref
		return nc, nil, nil
	case strings.HasPrefix(v, "oci-layout://"):
		if _, _, _, err := splitLayoutRef(strings.TrimPrefix(v, "oci-layout://")); err != nil {
			return nil, nil, err
		}
		nc.image = v
		return nc, nil, nil
	case strings.HasPrefix(v, "target:"), strings.HasPrefix(v, "input:"), strings.HasPrefix(v, "local:"):
		return nil, nil, fmt.Errorf("%s values are buildx bake's: give a directory, docker-image://, oci-layout://, a git URL or an http(s) URL", strings.SplitN(v, ":", 2)[0]+":")
	}
	src, err := ctxfetch.Parse(v)
	if err != nil {
		return nil, nil, err
	}
	var f *ctxfetch.Fetched
	dir := v
	switch src.Kind {
	case ctxfetch.KindStdin:
		return nil, nil, errors.New("standard input can only be the main context")
	case ctxfetch.KindGit, ctxfetch.KindHTTP:
		if f, err = fetchSource(ctx, src, opts, fopts, keepGit); err != nil {
			return nil, nil, err
		}
		if f.Dockerfile != nil {
			return nil, f, errors.New("the URL is not an archive")
		}
		dir = f.Dir
	}
	tree, err := copier.OpenContext(dir, "", "")
	if err != nil {
		return nil, f, err
	}
	if f != nil {
		tree.ID = f.ID
	}
	nc.tree = tree
	return nc, f, nil
}

// contextKey normalizes a context or stage reference as BuildKit
// compares them: a reference's familiar form without ":latest"
// ("docker.io/library/alpine:latest" is "alpine"); what is no reference
// is compared in lower case.
func contextKey(ref string) string {
	base, plat, hasPlat := strings.Cut(ref, "::")
	r, err := name.ParseReference(base, name.WeakValidation)
	if err != nil {
		base = strings.ToLower(base)
	} else {
		repo := r.Context().RepositoryStr()
		reg := r.Context().RegistryStr()
		s := repo
		if reg != name.DefaultRegistry {
			s = reg + "/" + repo
		} else {
			s = strings.TrimPrefix(repo, "library/")
		}
		switch t := r.(type) {
		case name.Tag:
			if tag := t.TagStr(); tag != "latest" && strings.Contains(base, ":"+tag) {
				s += ":" + tag
			}
		case name.Digest:
			s += "@" + t.DigestStr()
		}
		base = s
	}
	if hasPlat {
		return base + "::" + plat
	}
	return base
}

// namedContext finds the named context ref stands for on the build's
// platform: NAME::PLATFORM first, then NAME; nil for none.
func (b *build) namedContext(ref string) *namedContext {
	if len(b.opts.named) == 0 || strings.EqualFold(ref, "scratch") || strings.EqualFold(ref, "context") {
		return nil
	}
	k := contextKey(ref)
	if nc, ok := b.opts.named[k+"::"+PlatformString(b.platform)]; ok {
		return nc
	}
	return b.opts.named[k]
}

// treeContext is namedContext when it is a tree of files.
func (b *build) treeContext(ref string) *namedContext {
	if nc := b.namedContext(ref); nc != nil && nc.tree != nil {
		return nc
	}
	return nil
}

// contextImage maps ref to the image a named context gives for it, or
// returns it as it is.
func (b *build) contextImage(ref string) string {
	if nc := b.namedContext(ref); nc != nil && nc.image != "" {
		return nc.image
	}
	return ref
}

// contextCopy is the step a stage built on a tree context starts with:
// COPY --from=NAME / /, located at the stage's FROM line.
func (s *stageRun) contextCopy(nc *namedContext) (instructions.Command, error) {
	res, err := parser.Parse(strings.NewReader("COPY --from=" + nc.name + " / /\n"))
	if err != nil {
		return nil, err
	}
	cmd, err := instructions.ParseCommand(res.AST.Children[0])
	if err != nil {
		return nil, err
	}
	return onbuildCommand{Command: cmd, from: s.st.Location, context: true}, nil
}

// cacheMountFromTree refuses a tree context as a cache mount's seed.
func cacheMountFromTree(nc *namedContext) error {
	return fmt.Errorf("from=%s is a directory context: a cache mount is seeded from a stage or an image; add a stage (FROM %s AS seed) and use from=seed", nc.name, nc.name)
}

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/builder/dockerfile"
	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
)

func buildCommand() *cli.Command {
	return &cli.Command{
		Name:      "build",
		Aliases:   []string{"bud"},
		Usage:     "build an image from a Dockerfile",
		ArgsUsage: "CONTEXT",
		Description: "CONTEXT is a directory, a git URL (https://host/repo.git#REF:SUBDIR), an http(s) URL of a tarball or a Dockerfile, " +
			"or - for a tar on standard input.",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "Dockerfile path (default CONTEXT/Dockerfile, then Containerfile; - reads stdin)"},
			&cli.StringSliceFlag{Name: "build-context", Usage: "a named context NAME=VALUE: a directory, docker-image://REF, oci-layout://PATH[@sha256:...|:TAG], a git URL or an http(s) tarball URL; it replaces the stage or image NAME in FROM, COPY --from and RUN --mount from= (repeatable)"},
			&cli.StringFlag{Name: "ignorefile", Usage: "filter the context with this ignore file (default: <Dockerfile>.dockerignore, <Dockerfile>.containerignore, CONTEXT/.containerignore or CONTEXT/.dockerignore, the first that exists)"},
			&cli.StringSliceFlag{Name: "tag", Aliases: []string{"t"}, Usage: "name the image (repeatable)"},
			&cli.StringSliceFlag{Name: "build-arg", Usage: "set a build arg: KEY=VALUE, or KEY to take it from the environment (repeatable)"},
			&cli.StringFlag{Name: "target", Usage: "build this stage"},
			&cli.StringFlag{Name: "platform", Usage: "target platform(s): os/arch[/variant][,...]"},
			&cli.BoolFlag{Name: "no-cache", Usage: "run every step; do not take any from the build cache"},
			&cli.StringSliceFlag{Name: "no-cache-filter", Usage: "run every step of this stage (name or index; repeatable, or comma-separated)"},
			&cli.StringSliceFlag{Name: "cache-from", Usage: "take steps (and cache mounts) from a cache: type=registry,ref=REF (or REF), or type=local,src=DIR (repeatable; a cache that does not exist yet is a warning)"},
			&cli.StringSliceFlag{Name: "cache-to", Usage: "export the build cache: type=registry,ref=REF or type=local,dest=DIR, [,mode=min|max][,mounts=true] (repeatable; min: the result's stages, max: every stage; mounts=true: also the RUN --mount=type=cache directories)"},
			&cli.StringSliceFlag{Name: "output", Aliases: []string{"o"}, Usage: "write the result: type=oci|docker|local|tar,dest=PATH[,tar=false], or type=image|registry[,name=REF][,push=true][,push-by-digest=true] (repeatable)"},
			&cli.StringSliceFlag{Name: "annotation", Usage: "annotate the result as buildx does: [TYPE[PLATFORM]:]KEY=VALUE, TYPE manifest (default), manifest-descriptor, index or index-descriptor (repeatable)"},
			&cli.StringFlag{Name: "metadata-file", Usage: "write buildx's build metadata (digest, descriptor, names, platforms) to this JSON file"},
			&cli.StringFlag{Name: "manifest", Usage: "add the built image(s) to this manifest list, creating it (see ibuild manifest)"},
			&cli.StringFlag{Name: "iidfile", Usage: "write the image ID to this file"},
			&cli.StringFlag{Name: "progress", Value: "auto", Usage: "progress output: auto, plain, tty or json"},
			&cli.StringSliceFlag{Name: "label", Usage: "add a label KEY=VALUE to the image (repeatable)"},
			&cli.IntFlag{Name: "jobs", Usage: "stages built at once (default: CPU count)"},
			&cli.StringFlag{Name: "format", Value: "oci", Usage: "manifest format: oci or docker"},
			&cli.StringFlag{Name: "compression", Value: "gzip", Usage: "layer compression: gzip, zstd or none"},
			&cli.IntFlag{Name: "compression-level", Usage: "compression level (0: the compressor's default)"},
			&cli.BoolFlag{Name: "squash", Usage: "merge the layers the final stage adds into one (its base image's layers stay)"},
			&cli.BoolFlag{Name: "squash-all", Usage: "make the whole image one layer, its base image's layers included"},
			&cli.StringFlag{Name: "source-date-epoch", Usage: "Unix time for reproducible builds (default $SOURCE_DATE_EPOCH)"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the image ID"},
			&cli.StringSliceFlag{Name: "secret", Usage: "offer a secret to RUN --mount=type=secret: id=ID,src=FILE or id=ID,env=VAR (repeatable)"},
			&cli.StringSliceFlag{Name: "ssh", Usage: "offer an SSH agent to RUN --mount=type=ssh: default (uses $SSH_AUTH_SOCK) or ID=SOCKET (repeatable)"},
			&cli.StringFlag{Name: "pull", Value: "missing", Usage: "pull base images: always (re-resolve in the registry), missing (only when not stored) or never"},
			&cli.StringSliceFlag{Name: "insecure-registry", Usage: "reach this registry host[:port] over plain HTTP (repeatable; localhost and 127.0.0.1 always are)"},
			&cli.BoolFlag{Name: "push", Usage: "push the result to every -t name that has a registry (not localhost/...)"},
			&cli.StringFlag{Name: "digestfile", Usage: "with --push, write the pushed manifest (or index) digest to this file"},
			&cli.BoolFlag{Name: "tls-verify", Value: true, Usage: "verify registries' TLS certificates when pushing (--push)"},
			authfileFlag, certDirFlag, registryTimeoutFlag,
			&cli.StringFlag{Name: "network", Value: "host", Usage: "network of RUN steps: host or none (RUN --network overrides)"},
			&cli.StringFlag{Name: "isolation", Value: "auto", Usage: "isolation of RUN steps: auto, chroot, userns or none (auto: as an unprivileged user, enter a user namespace when /etc/subuid and /etc/subgid give a range, as root without CAP_SYS_ADMIN use none; userns: enter one even with a single id mapped; none: NO ISOLATION, a chroot into an unpacked root file system: a RUN step can reach everything ibuild's own user can, so use it only where the pod or VM around ibuild is the security boundary, see docs/security.md)"},
			&cli.StringSliceFlag{Name: "cap-add", Usage: "add a capability to RUN steps' set, docker's default (e.g. NET_ADMIN, or ALL; repeatable)"},
			&cli.StringSliceFlag{Name: "cap-drop", Usage: "drop a capability from RUN steps' set (e.g. CHOWN, or ALL; repeatable; applied after --cap-add)"},
			&cli.StringSliceFlag{Name: "allow", Usage: "grant an entitlement (repeatable): security.insecure lets RUN --security=insecure steps hold every capability, with no seccomp filter; network.host allows RUN --network=host"},
		}, attestFlags()...),
		Action: runBuild,
	}
}

func runBuild(c *cli.Context) error {
	if c.NArg() != 1 {
		if hint := attestArgHint(c.Args().Slice()); hint != "" {
			return cli.Exit(hint, 2)
		}
		return cli.Exit("build needs exactly one CONTEXT: a directory, a git URL, an http(s) URL or - (e.g. ibuild build -t app:1 .)", 2)
	}
	if c.Args().First() == "-" && c.String("file") == "-" {
		return cli.Exit("-f - and the context - both read standard input: put the Dockerfile in the context tar (-f names it there), or give a context directory", 2)
	}
	if c.Bool("squash") && c.Bool("squash-all") {
		return cli.Exit("--squash and --squash-all exclude each other: --squash merges the layers the final stage adds, --squash-all every layer", 2)
	}
	isolation, err := builder.ParseIsolation(c.String("isolation"))
	if err != nil {
		return fmt.Errorf("--isolation: %w", err)
	}
	if err := enterUserNamespace(c, isolation); err != nil {
		return err
	}
	st, err := openStore(c)
	if err != nil {
		return err
	}
	defer st.Close()
	opts := builder.Options{
		Store:            st,
		ContextDir:       c.Args().First(),
		Dockerfile:       c.String("file"),
		IgnoreFile:       c.String("ignorefile"),
		Tags:             c.StringSlice("tag"),
		Target:           c.String("target"),
		NoCache:          c.Bool("no-cache"),
		NoCacheFilter:    c.StringSlice("no-cache-filter"),
		Jobs:             c.Int("jobs"),
		CompressionLevel: c.Int("compression-level"),
		Squash:           c.Bool("squash"),
		SquashAll:        c.Bool("squash-all"),
	}
	if opts.ContextDir == "-" {
		opts.ContextDir, opts.ContextTar = "", os.Stdin
	}
	if opts.BuildContexts, err = parseBuildContexts(c.StringSlice("build-context")); err != nil {
		return err
	}
	if opts.Dockerfile == "-" {
		data, err := readStdin(c.Context)
		if err != nil {
			return fmt.Errorf("-f -: %w", err)
		}
		opts.DockerfileContent = data
	}
	if opts.BuildArgs, err = parseKeyValues(c.StringSlice("build-arg"), true); err != nil {
		return fmt.Errorf("--build-arg: %w", err)
	}
	if opts.Labels, err = parseKeyValues(c.StringSlice("label"), false); err != nil {
		return fmt.Errorf("--label: %w", err)
	}
	if opts.Secrets, err = parseSecrets(c.StringSlice("secret")); err != nil {
		return err
	}
	if opts.SSH, err = parseSSH(c.StringSlice("ssh")); err != nil {
		return err
	}
	if opts.Pull, err = registry.ParsePullPolicy(c.String("pull")); err != nil {
		return fmt.Errorf("--pull: %w", err)
	}
	opts.InsecureRegistries = c.StringSlice("insecure-registry")
	opts.Registry = connOptions(c)
	opts.Registry.Insecure, opts.Registry.TLSVerify = nil, nil
	if opts.Network, err = builder.ParseNetwork(c.String("network")); err != nil {
		return fmt.Errorf("--network: %w", err)
	}
	opts.Isolation = isolation
	opts.CapAdd, opts.CapDrop = c.StringSlice("cap-add"), c.StringSlice("cap-drop")
	if opts.AllowInsecure, opts.AllowNetworkHost, err = parseAllow(c.StringSlice("allow")); err != nil {
		return err
	}
	if p := c.String("platform"); p != "" {
		if opts.Platforms, err = builder.ParsePlatforms(p); err != nil {
			return fmt.Errorf("--platform: %w", err)
		}
	}
	if opts.Format, err = builder.ParseFormat(c.String("format")); err != nil {
		return fmt.Errorf("--format: %w", err)
	}
	if opts.Attest, err = parseAttestFlags(c, version); err != nil {
		return err
	}
	if opts.Compression, err = layers.ParseCompression(c.String("compression")); err != nil {
		return fmt.Errorf("--compression: %w", err)
	}
	if err := checkFormatFlags(opts.Format, opts.Compression); err != nil {
		return err
	}
	epoch := c.String("source-date-epoch")
	if epoch == "" {
		epoch = os.Getenv("SOURCE_DATE_EPOCH")
	}
	if epoch != "" {
		n, err := strconv.ParseInt(epoch, 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("source date epoch %q: want a non-negative Unix time in seconds", epoch)
		}
		t := time.Unix(n, 0).UTC()
		opts.SourceDateEpoch = &t
	}
	opts.PushOptions = registry.PushOptions{Conn: connOptions(c)}
	var outs []registry.Output
	for _, spec := range c.StringSlice("output") {
		out, err := registry.ParseOutput(spec)
		if err != nil {
			return fmt.Errorf("--output %s: %w", spec, err)
		}
		outs = append(outs, out)
		if out.Type != registry.OutputImage {
			// type=image becomes names, pushes and annotations below.
			opts.Outputs = append(opts.Outputs, out)
			opts.Annotations = append(opts.Annotations, out.Annotations...)
		}
	}
	for _, a := range c.StringSlice("annotation") {
		anns, err := registry.ParseAnnotation(a)
		if err != nil {
			return fmt.Errorf("--annotation: %w", err)
		}
		opts.Annotations = append(opts.Annotations, anns...)
	}
	metaNames, canonical, err := imageOutputs(c, &opts, outs)
	if err != nil {
		return err
	}
	opts.Manifest = c.String("manifest")
	if err := cacheOptions(c, &opts, st); err != nil {
		return err
	}
	var pushTo []string
	if c.Bool("push") {
		for _, tag := range opts.Tags {
			n, err := layers.NormalizeName(tag)
			if err != nil {
				return fmt.Errorf("--tag %s: %w", tag, err)
			}
			if !registry.LocalOnly(n) {
				pushTo = append(pushTo, n)
			}
		}
		if len(pushTo) == 0 {
			return cli.Exit("--push needs a -t name with a registry (e.g. -t registry.example.com/app:1); localhost/... names stay local", 2)
		}
		for _, n := range pushTo {
			opts.Push = appendNew(opts.Push, n)
		}
	}
	if c.IsSet("digestfile") && len(opts.Push)+len(opts.PushByDigest) == 0 {
		return cli.Exit("--digestfile needs --push (or --output type=image,push=true)", 2)
	}
	mode := c.String("progress")
	var sink progress.Sink
	if c.Bool("quiet") {
		sink = warningSink{} // -q hides progress, not warnings
	} else if sink, err = progress.New(mode, os.Stderr); err != nil {
		return err
	}
	opts.Progress = sink
	if c, ok := sink.(io.Closer); ok {
		defer c.Close()
	}
	start := time.Now()
	res, err := builder.Build(c.Context, opts)
	if err != nil {
		return err
	}
	if err := tagCanonical(c, st, res, canonical); err != nil {
		return err
	}
	if f := c.String("metadata-file"); f != "" {
		if err := writeMetadata(f, res, metaNames, builder.PlatformsOf(opts.Platforms)); err != nil {
			return err
		}
	}
	if f := c.String("iidfile"); f != "" {
		if err := os.WriteFile(f, []byte(res.ID.String()), 0o644); err != nil {
			return fmt.Errorf("--iidfile: %w", err)
		}
	}
	if len(res.Pushed) > 0 {
		for _, p := range res.Pushed {
			if !c.Bool("quiet") && mode != "json" {
				fmt.Fprintf(os.Stderr, "pushed %s: %s\n", p.Ref, p.Digest)
			}
		}
		if f := c.String("digestfile"); f != "" {
			if err := os.WriteFile(f, []byte(res.Pushed[len(res.Pushed)-1].Digest.String()), 0o644); err != nil {
				return fmt.Errorf("--digestfile: %w", err)
			}
		}
	}
	if c.Bool("quiet") {
		fmt.Println(res.ID)
		return nil
	}
	// stdout gets the bare image ID, as docker build -q prints it; this
	// line labels it and the manifest digest a registry will show.
	msg := fmt.Sprintf("built image %s (manifest %s) in %.2fs", res.ID, res.Digest, time.Since(start).Seconds())
	if res.Index != nil {
		msg = fmt.Sprintf("built index %s in %.2fs", res.Digest, time.Since(start).Seconds())
	}
	if len(res.Names) > 0 && res.Stored {
		msg += ", tagged " + strings.Join(res.Names, ", ")
	}
	sink.Emit(progress.Event{Kind: progress.BuildDone, Time: time.Now(), Digest: res.Digest.String(), Message: msg})
	if mode != "json" {
		fmt.Println(res.ID)
	}
	return nil
}

// readStdin reads standard input to its end, or returns ctx's error once
// ctx is done: a pipe may stay open without data for as long as its
// writer likes.
func readStdin(ctx context.Context) ([]byte, error) {
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		data, err := dockerfile.ReadLimited(os.Stdin, "the Dockerfile on standard input")
		done <- result{data, err}
	}()
	select {
	case r := <-done:
		return r.data, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// cacheOptions reads --cache-from (importing each cache now: manifests
// and records, no layers) and --cache-to into opts.
func cacheOptions(c *cli.Context, opts *builder.Options, st *layers.Store) error {
	copts := registry.CacheOptions{Conn: connOptions(c), Store: st}
	for _, v := range c.StringSlice("cache-from") {
		spec, err := registry.ParseCacheSpec(v)
		if err != nil {
			return fmt.Errorf("--cache-from %s: %w", v, err)
		}
		var cache *registry.Cache
		switch {
		case spec.Type == registry.CacheTypeLocal && spec.Src == "":
			return fmt.Errorf("--cache-from %s: a local cache is read from src=DIR (dest= is --cache-to's)", v)
		case spec.Type == registry.CacheTypeLocal:
			cache, err = registry.ImportLocalCache(c.Context, spec.Src, spec.Tag, copts)
		default:
			cache, err = registry.ImportCache(c.Context, spec.Ref, copts)
		}
		if err != nil {
			return fmt.Errorf("--cache-from: %w", err)
		}
		if cache.Warning != "" {
			fmt.Fprintf(os.Stderr, "ibuild: warning: --cache-from: %s\n", cache.Warning)
		}
		opts.CacheFrom = append(opts.CacheFrom, cache)
	}
	for _, v := range c.StringSlice("cache-to") {
		spec, err := registry.ParseCacheSpec(v)
		if err != nil {
			return fmt.Errorf("--cache-to %s: %w", v, err)
		}
		if spec.Type == registry.CacheTypeLocal && spec.Dest == "" {
			return fmt.Errorf("--cache-to %s: a local cache is written to dest=DIR (src= is --cache-from's)", v)
		}
		exp, err := registry.NewCacheExport(spec, copts)
		if err != nil {
			return fmt.Errorf("--cache-to: %w", err)
		}
		opts.CacheTo = append(opts.CacheTo, exp)
	}
	return nil
}

// parseKeyValues parses KEY=VALUE items; with fromEnv, a bare KEY takes
// its value from the environment (and is skipped when unset), as docker
// build does for --build-arg.
func parseKeyValues(items []string, fromEnv bool) (map[string]string, error) {
	out := map[string]string{}
	for _, it := range items {
		k, v, ok := strings.Cut(it, "=")
		if k == "" {
			return nil, fmt.Errorf("%q: want KEY=VALUE", it)
		}
		if !ok {
			if !fromEnv {
				return nil, fmt.Errorf("%q: want KEY=VALUE", it)
			}
			ev, set := os.LookupEnv(k)
			if !set {
				continue
			}
			v = ev
		}
		out[k] = v
	}
	return out, nil
}

// parseBuildContexts parses --build-context NAME=VALUE items.
func parseBuildContexts(items []string) (map[string]string, error) {
	out := map[string]string{}
	for _, it := range items {
		k, v, ok := strings.Cut(it, "=")
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("--build-context %s: want NAME=VALUE (a directory, docker-image://REF, oci-layout://PATH, a git URL or an http(s) URL)", it)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("--build-context %s is given twice: give each name once", k)
		}
		out[k] = v
	}
	return out, nil
}

// parseSecrets parses --secret id=ID,src=FILE and id=ID,env=VAR (a bare
// id=ID reads the variable ID). Variables are read here, so the library
// never reads the environment; files are read when a step uses them.
func parseSecrets(items []string) (map[string]builder.SecretSource, error) {
	out := map[string]builder.SecretSource{}
	for _, it := range items {
		var id, src, env string
		for _, f := range strings.Split(it, ",") {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				return nil, fmt.Errorf("--secret %s: want id=ID,src=FILE or id=ID,env=VAR", it)
			}
			switch strings.ToLower(k) {
			case "id":
				id = v
			case "src", "source":
				src = v
			case "env":
				env = v
			case "type":
				if v != "file" && v != "env" {
					return nil, fmt.Errorf("--secret %s: type %q: want file or env", it, v)
				}
			default:
				return nil, fmt.Errorf("--secret %s: unknown key %q", it, k)
			}
		}
		if id == "" {
			return nil, fmt.Errorf("--secret %s: needs id=ID", it)
		}
		if src != "" && env != "" {
			return nil, fmt.Errorf("--secret %s: give src or env, not both", it)
		}
		if _, dup := out[id]; dup {
			return nil, fmt.Errorf("--secret id=%s is given twice: give each id once", id)
		}
		switch {
		case src != "":
			if _, err := os.Stat(src); err != nil {
				return nil, fmt.Errorf("--secret id=%s: %w", id, err)
			}
			out[id] = builder.SecretSource{File: src}
		default:
			if env == "" {
				env = id
			}
			v, ok := os.LookupEnv(env)
			if !ok {
				return nil, fmt.Errorf("--secret id=%s: environment variable %s is not set", id, env)
			}
			out[id] = builder.SecretSource{Value: []byte(v)}
		}
	}
	return out, nil
}

// parseSSH parses --ssh ID or ID=SOCKET; a bare ID uses $SSH_AUTH_SOCK.
func parseSSH(items []string) (map[string]string, error) {
	out := map[string]string{}
	for _, it := range items {
		id, sock, ok := strings.Cut(it, "=")
		if id == "" {
			return nil, fmt.Errorf("--ssh %s: want ID or ID=SOCKET", it)
		}
		if !ok {
			sock = os.Getenv("SSH_AUTH_SOCK")
			if sock == "" {
				return nil, fmt.Errorf("--ssh %s: SSH_AUTH_SOCK is not set; give %s=SOCKET", it, id)
			}
		}
		if strings.Contains(sock, ",") {
			return nil, fmt.Errorf("--ssh %s: one socket per id is supported", it)
		}
		if _, dup := out[id]; dup {
			return nil, fmt.Errorf("--ssh %s is given twice: give each id once", id)
		}
		out[id] = sock
	}
	return out, nil
}

// parseAllow reads --allow entitlements; security.insecure is the one
// ibuild grants (network.host is every step's default and accepted).
func parseAllow(values []string) (insecure, networkHost bool, err error) {
	for _, v := range values {
		for _, e := range strings.Split(v, ",") {
			switch strings.TrimSpace(e) {
			case "security.insecure":
				insecure = true
			case "network.host":
				networkHost = true
			default:
				return false, false, fmt.Errorf("--allow %s: unknown entitlement (security.insecure or network.host)", e)
			}
		}
	}
	return insecure, networkHost, nil
}

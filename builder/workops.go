package builder

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/sys/unix"

	"github.com/ibuild/ibuild/builder/attest"
	"github.com/ibuild/ibuild/builder/dockerfile"
	"github.com/ibuild/ibuild/builder/internal/copier"
	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/builder/sandbox"
	"github.com/ibuild/ibuild/layers"
)

// newOpsBuild is a one-stage build of text (which starts with FROM) whose
// stage runs on a working container; contextDir is where COPY and ADD
// read ("" for an empty one).
func newOpsBuild(ctx context.Context, opts *Options, name, text, contextDir string, platform v1.Platform) (*build, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	if contextDir == "" {
		// Nothing is read from it: an empty directory of the store's.
		dir, err := opts.Store.TempDir("context-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		contextDir = dir
	}
	cfs, err := copier.OpenContext(contextDir, "", "")
	if err != nil {
		return nil, err
	}
	warn := func(msg string) {
		opts.Progress.Emit(progress.Event{Kind: progress.Warning, Time: opts.Now(), Message: msg})
	}
	return newBuild(ctx, opts, name, []byte(text), cfs, platform, false, warn)
}

// apply runs Dockerfile instructions (text, without FROM) on the working
// container through the Dockerfile executor, then saves it. around, if
// not nil, is called with the stage before the steps and returns what to
// undo after them (before the state is saved).
func (c *Container) apply(ctx context.Context, step StepOptions, verb, text, contextDir string, around func(s *stageRun) func()) error {
	if c.work == nil {
		return errors.New("not a working container")
	}
	if mp := c.work.state.MountPoint; mp != "" {
		return fmt.Errorf("container %s is mounted at %s: ibuild umount %s first", c.work.state.Name, mp, c.work.state.Name)
	}
	opts := Options{Store: c.store, StepOptions: step}
	b, err := newOpsBuild(ctx, &opts, verb, "FROM scratch\n"+text, contextDir, c.platform)
	if err != nil {
		return err
	}
	b.containers = c.store
	unlock, err := c.store.Lock(ctx, false)
	if err != nil {
		return err
	}
	defer unlock()
	s := b.stages[0]
	s.c, s.args = c, &dockerfile.Vars{}
	s.steps = 1 + len(s.st.Commands)
	c.opts = containerOptions{
		commit: layers.CommitOptions{
			Compression: opts.Compression, Level: opts.CompressionLevel,
			TarOptions: layers.TarOptions{SourceDateEpoch: opts.SourceDateEpoch},
		},
		format: opts.Format, created: b.created, warn: b.warn,
	}
	defer c.removeUnpacked()
	undo := func() {}
	if around != nil {
		undo = around(s)
	}
	for i, cmd := range s.st.Commands {
		s.step = i + 2
		if err := s.runStep(ctx, cmd); err != nil {
			undo()
			return err
		}
	}
	undo()
	return c.save(ctx)
}

// RunOptions configure Container.Run.
type RunOptions struct {
	// Args is the command and its arguments (exec form, no shell).
	Args []string
	// User, WorkingDir and Env apply to this command only (Env entries
	// are KEY=VALUE and win over the image's ENV).
	User       string
	WorkingDir string
	Env        []string
	// Mounts are RUN --mount specs ("type=cache,target=/root/.cache").
	Mounts []string
	// Network is NetworkHost or NetworkNone; "" means Options.Network.
	Network Network
	// Output receives the command's output, line by line.
	Output func(line string)
	// Options supply isolation, secrets, SSH, progress and the like.
	Options StepOptions
}

// Run runs a command in the container, in the sandbox RUN uses, and keeps
// what it changed as a new layer (none when nothing changed). A command
// that fails leaves the container as it was; ExitCode tells its status.
func (c *Container) Run(ctx context.Context, o RunOptions) error {
	if len(o.Args) == 0 {
		return errors.New("run: no command given")
	}
	args, err := json.Marshal(o.Args)
	if err != nil {
		return err
	}
	var flags []string
	for _, m := range o.Mounts {
		if strings.ContainsAny(m, " \n") {
			return fmt.Errorf("--mount %q: spaces are not allowed", m)
		}
		flags = append(flags, "--mount="+m)
	}
	if o.Network != "" {
		n, err := ParseNetwork(string(o.Network))
		if err != nil {
			return err
		}
		flags = append(flags, "--network="+string(n))
	}
	text := "RUN " + strings.Join(append(flags, string(args)), " ") + "\n"
	opts := o.Options
	opts.AllowNetworkHost = true // buildah run --network host needs no entitlement
	opts.Progress = opsSink{next: opts.Progress, out: o.Output}
	return c.apply(ctx, opts, "ibuild run", text, "", func(s *stageRun) func() {
		cfg := s.c.imageConfig()
		env, user, wd := cfg.Env, cfg.User, cfg.WorkingDir
		if len(o.Env) > 0 {
			vars := dockerfile.NewVars(cfg.Env)
			for _, kv := range o.Env {
				k, v, _ := strings.Cut(kv, "=")
				vars.Set(k, v)
			}
			cfg.Env = vars.Environ()
		}
		if o.User != "" {
			cfg.User = o.User
		}
		if o.WorkingDir != "" {
			cfg.WorkingDir = o.WorkingDir
		}
		return func() {
			cfg := s.c.imageConfig()
			cfg.Env, cfg.User, cfg.WorkingDir = env, user, wd
		}
	})
}

// ExitCode is the exit status of a failed Run's command, if that is why
// it failed.
func ExitCode(err error) (int, bool) {
	var ee *sandbox.ExitError
	if errors.As(err, &ee) {
		return ee.Code, true
	}
	return 0, false
}

// CopyOptions configure Container.Copy.
type CopyOptions struct {
	// Sources are host paths (relative to the working directory, or
	// absolute) or, with From, paths in that container or image; Add
	// also takes URLs.
	Sources []string
	// Dest is the path in the container; relative paths are taken from
	// its working directory, and a trailing "/" means a directory.
	Dest string
	// From is another working container or an image to copy from.
	From string
	// Chown and Chmod are COPY's --chown and --chmod.
	Chown, Chmod string
	// Add gives ADD's behaviour: local archives are extracted, URLs
	// downloaded.
	Add bool
	// Checksum verifies an ADD URL (ADD --checksum).
	Checksum string
	// Options supply the HTTP client, progress and the like.
	Options StepOptions
}

// Copy copies files into the container as COPY (or ADD) does, as a new
// layer.
func (c *Container) Copy(ctx context.Context, o CopyOptions) error {
	if len(o.Sources) == 0 || o.Dest == "" {
		return errors.New("copy: need at least one source and a destination")
	}
	instr := "COPY"
	if o.Add {
		instr = "ADD"
	}
	var flags []string
	for _, f := range []struct{ name, v string }{{"chown", o.Chown}, {"chmod", o.Chmod}, {"from", o.From}, {"checksum", o.Checksum}} {
		if f.v == "" {
			continue
		}
		if strings.ContainsAny(f.v, " \n") {
			return fmt.Errorf("--%s %q: spaces are not allowed", f.name, f.v)
		}
		flags = append(flags, "--"+f.name+"="+f.v)
	}
	contextDir := ""
	srcs := make([]string, 0, len(o.Sources)+1)
	for _, src := range o.Sources {
		switch {
		case o.From != "", copier.IsURL(src):
			srcs = append(srcs, src)
		default:
			// Host paths: the context is "/", so every path is reachable
			// as the caller named it.
			abs, err := filepath.Abs(src)
			if err != nil {
				return err
			}
			if strings.HasSuffix(src, "/") && abs != "/" {
				abs += "/"
			}
			contextDir = "/"
			srcs = append(srcs, abs)
		}
	}
	srcs = append(srcs, o.Dest)
	js, err := json.Marshal(srcs)
	if err != nil {
		return err
	}
	if strings.Contains(string(js), "\n") {
		return errors.New("copy: paths may not contain newlines")
	}
	text := instr + " " + strings.Join(append(flags, string(js)), " ") + "\n"
	return c.apply(ctx, o.Options, "ibuild "+strings.ToLower(instr), text, contextDir, nil)
}

// ConfigOptions are changes to a container's image config; nil and empty
// fields change nothing. Most are Dockerfile instructions and are carried
// out as such (with their history entries): Env (ENV), Cmd (CMD, JSON or
// shell form), Entrypoint (ENTRYPOINT), Labels (LABEL), Ports (EXPOSE),
// User (USER), WorkingDir (WORKDIR, which creates the directory), Volumes
// (VOLUME), StopSignal (STOPSIGNAL), Healthcheck (HEALTHCHECK's
// arguments, e.g. "--interval=5s CMD curl -f http://localhost/"), Shell
// (SHELL, a JSON array), OnBuild (ONBUILD), Author (MAINTAINER).
type ConfigOptions struct {
	Env         []string
	Cmd         *string
	Entrypoint  *string
	Labels      map[string]string
	Annotations map[string]string
	Ports       []string
	User        *string
	WorkingDir  *string
	Volumes     []string
	StopSignal  *string
	Healthcheck *string
	Shell       *string
	OnBuild     []string
	Author      *string
	// Arch, OS and Variant set the image's platform fields.
	Arch, OS, Variant *string
	Options           StepOptions
}

// Config changes the container's image config.
func (c *Container) Config(ctx context.Context, o ConfigOptions) error {
	var lines []string
	add := func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) }
	for _, kv := range o.Env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("env %q: want KEY=VALUE", kv)
		}
		add("ENV %s=%s", k, quoteWord(v))
	}
	for _, k := range sortedKeys(o.Labels) {
		add("LABEL %s=%s", quoteWord(k), quoteWord(o.Labels[k]))
	}
	opt := func(instr string, v *string) {
		if v != nil {
			add("%s %s", instr, *v)
		}
	}
	opt("CMD", o.Cmd)
	opt("ENTRYPOINT", o.Entrypoint)
	for _, p := range o.Ports {
		add("EXPOSE %s", p)
	}
	opt("USER", o.User)
	opt("WORKDIR", o.WorkingDir)
	for _, v := range o.Volumes {
		add("VOLUME %s", quoteWord(v))
	}
	opt("STOPSIGNAL", o.StopSignal)
	opt("HEALTHCHECK", o.Healthcheck)
	opt("SHELL", o.Shell)
	for _, t := range o.OnBuild {
		add("ONBUILD %s", t)
	}
	opt("MAINTAINER", o.Author)
	text := strings.Join(lines, "\n")
	if strings.Count(text, "\n") != max(len(lines)-1, 0) {
		return errors.New("config: values may not contain newlines")
	}
	if text != "" {
		text += "\n"
	}
	return c.apply(ctx, o.Options, "ibuild config", text, "", func(s *stageRun) func() {
		cf := &s.c.config
		if o.Arch != nil {
			cf.Architecture = *o.Arch
		}
		if o.OS != nil {
			cf.OS = *o.OS
		}
		if o.Variant != nil {
			cf.Variant = *o.Variant
		}
		if len(o.Annotations) > 0 {
			st := c.work.state
			if st.Annotations == nil {
				st.Annotations = map[string]string{}
			}
			for k, v := range o.Annotations {
				st.Annotations[k] = v
			}
		}
		return func() {}
	})
}

// quoteWord quotes s for a Dockerfile instruction that takes KEY=VALUE
// words: $VAR stays expandable, as in a Dockerfile.
func quoteWord(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// CommitOptions configure Container.Commit.
type CommitOptions struct {
	// Format of the manifest and config; "" means OCI.
	Format Format
	// Squash makes the layers the container added one layer;
	// SquashAll makes the whole image one layer.
	Squash, SquashAll bool
	// Compression and CompressionLevel of a squashed layer.
	Compression      layers.Compression
	CompressionLevel int
	// SBOM, when set, attaches an SBOM attestation (ibuild commit
	// --sbom): the image is then stored as an index holding it, and the
	// returned descriptor is the index's.
	SBOM *attest.SBOMOptions
	// SourceDateEpoch, when set, is the SBOM's creation time (else now);
	// Version names ibuild as its tool.
	SourceDateEpoch *time.Time
	Version         string
}

// Commit writes the container as an image into the store, named name (if
// not ""). The container stays, and can go on changing.
func (c *Container) Commit(ctx context.Context, name string, o CommitOptions) (v1.Image, v1.Descriptor, error) {
	format, err := ParseFormat(string(o.Format))
	if err != nil {
		return nil, v1.Descriptor{}, err
	}
	if o.Compression == "" {
		o.Compression = layers.Gzip
	}
	if err := checkFormat(format, o.Compression); err != nil {
		return nil, v1.Descriptor{}, err
	}
	unlock, err := c.store.Lock(ctx, false)
	if err != nil {
		return nil, v1.Descriptor{}, err
	}
	defer unlock()
	c.opts.format = format
	// Layers still only in snapshots get their blobs made now, compressed
	// as asked.
	commit := layers.CommitOptions{Compression: o.Compression, Level: o.CompressionLevel}
	for i, l := range c.layers {
		c.layers[i] = c.store.Relazy(l, commit)
	}
	if err := c.store.Materialize(ctx, c.layers, runtime.NumCPU()); err != nil {
		return nil, v1.Descriptor{}, fmt.Errorf("commit: %w", err)
	}
	o.Format = format
	img, err := c.Image()
	if err != nil {
		return nil, v1.Descriptor{}, err
	}
	scanned := img
	if o.Squash && o.SquashAll {
		return nil, v1.Descriptor{}, errors.New("commit: Squash and SquashAll exclude each other")
	}
	if o.Squash || o.SquashAll {
		keep := c.work.state.BaseLayers
		if o.SquashAll {
			keep = 0
		}
		sq := SquashOptions{Commit: layers.CommitOptions{Compression: o.Compression, Level: o.CompressionLevel}, Warn: c.opts.warn}
		if img, err = SquashImage(ctx, c.store, img, keep, sq); err != nil {
			return nil, v1.Descriptor{}, fmt.Errorf("commit: %w", err)
		}
	}
	if a := c.work.state.Annotations; len(a) > 0 {
		img = mutate.Annotations(img, a).(v1.Image)
	}
	var desc v1.Descriptor
	if o.SBOM != nil {
		idx, err := commitSBOM(ctx, c.store, scanned, img, name, o, c.opts.warn)
		if err != nil {
			return nil, v1.Descriptor{}, fmt.Errorf("commit: %w", err)
		}
		desc, err = c.store.WriteIndex(ctx, idx)
	} else {
		desc, err = c.store.WriteImage(ctx, img)
	}
	if err != nil {
		return nil, v1.Descriptor{}, err
	}
	if name != "" {
		if err := c.store.Tag(ctx, name, desc); err != nil {
			return nil, v1.Descriptor{}, err
		}
	}
	return img, desc, nil
}

// MountOptions configure Mount. The zero value is the safe default: the
// mount is nosuid and nodev, so the image's setuid binaries and device
// nodes grant nothing to whoever reaches the mount point.
type MountOptions struct {
	// Suid honours setuid and setgid bits of files under the mount (no
	// nosuid).
	Suid bool
	// Dev lets device nodes under the mount be opened (no nodev).
	Dev bool
}

// Mount mounts the container's root file system (an overlay of its layers
// with a writable upper directory) and returns where; Unmount keeps what
// was changed through it as a new layer. The mount is nosuid and nodev
// unless opts say otherwise; a container already mounted is left as it
// is. Mounting needs root, or the user namespace `ibuild unshare` enters.
func (c *Container) Mount(ctx context.Context, opts MountOptions) (string, error) {
	st := c.work.state
	if st.MountPoint != "" {
		return st.MountPoint, nil
	}
	dirs, err := c.snapshotDirs(ctx)
	if err != nil {
		return "", err
	}
	paths := map[string]string{}
	for _, d := range []string{"upper", "work", "merged", "empty"} {
		paths[d] = filepath.Join(c.work.dir, d)
		if err := os.MkdirAll(paths[d], 0o755); err != nil {
			return "", err
		}
	}
	if len(dirs) == 0 {
		dirs = []string{paths["empty"]}
	}
	// nosuid and nodev are set as the overlay is mounted, so it is never
	// reachable without them.
	if err := sandbox.MountLayers(dirs, paths["upper"], paths["work"], paths["merged"], mountRestrictions(opts)); err != nil {
		return "", fmt.Errorf("mount %s: %w (rootless: run it inside `ibuild unshare`)", st.Name, err)
	}
	st.MountPoint = paths["merged"]
	if err := c.save(ctx); err != nil {
		unmountAll(paths["merged"])
		return "", err
	}
	return st.MountPoint, nil
}

// Unmount unmounts the container and commits what was changed through the
// mount as a layer.
func (c *Container) Unmount(ctx context.Context) error {
	st := c.work.state
	if st.MountPoint == "" {
		return nil
	}
	upper := filepath.Join(c.work.dir, "upper")
	// Checked while still mounted, so that the file can be renamed
	// through the mount and nothing written is lost.
	var bad *layers.WhiteoutNameError
	if err := layers.CheckNames(ctx, upper); errors.As(err, &bad) {
		return fmt.Errorf("umount %s: %s was written through the mount: a name starting with \".wh.\" cannot be carried in an OCI layer, where such names mark deleted files; rename or remove %s and umount again (the container stays mounted)",
			st.Name, bad.Path, filepath.Join(st.MountPoint, filepath.FromSlash(bad.Path)))
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("umount %s: %w", st.Name, err)
	}
	if err := unmountAll(st.MountPoint); err != nil {
		return fmt.Errorf("umount %s: %w", st.Name, err)
	}
	st.MountPoint = ""
	if ents, err := os.ReadDir(upper); err == nil && len(ents) > 0 {
		c.opts = containerOptions{commit: layers.CommitOptions{Compression: layers.Gzip}, created: time.Now().UTC()}
		if _, err := c.addLayerDir(ctx, upper, "ibuild mount "+st.Name); err != nil {
			return err
		}
	}
	os.RemoveAll(filepath.Join(c.work.dir, "work"))
	os.RemoveAll(upper)
	return c.save(ctx)
}

// mountRestrictions are the mount attributes (unix.MOUNT_ATTR_*) opts ask for.
func mountRestrictions(opts MountOptions) uint64 {
	var attrs uint64
	if !opts.Suid {
		attrs |= unix.MOUNT_ATTR_NOSUID
	}
	if !opts.Dev {
		attrs |= unix.MOUNT_ATTR_NODEV
	}
	return attrs
}

func unmountAll(p string) error {
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}

func randomHex() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return fmt.Sprint(time.Now().UnixNano())
	}
	return hex.EncodeToString(b)
}

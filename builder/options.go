package builder

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"runtime"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/builder/attest"
	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/builder/sandbox"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
)

// Options configure one Build. Only Store and ContextDir (or ContextTar)
// are required.
type Options struct {
	// Store is where layers, snapshots and the result go.
	Store *layers.Store
	// ContextDir is the build context directory; or, as docker build
	// takes them, a git URL (https://host/repo.git#REF:SUBDIR,
	// git@host:repo.git, ssh://, git://) or an http(s) URL of a tarball or
	// of a Dockerfile, fetched into the store's temporary directory for
	// the build (see package ctxfetch). Dockerfile then names a path
	// inside the fetched context.
	ContextDir string
	// ContextTar, when set, is the build context as a tar stream
	// (docker build - < ctx.tar; gzip, bzip2 or zstd compressed or not),
	// with the Dockerfile inside it, or a plain Dockerfile and an empty
	// context. ContextDir is then ignored.
	ContextTar io.Reader
	// BuildContexts are named contexts (--build-context NAME=VALUE): a
	// directory, docker-image://REF, oci-layout://PATH[@sha256:...|:TAG],
	// a git URL or an http(s) tarball URL. A named context replaces the
	// stage or image NAME in FROM, COPY --from and RUN --mount from=.
	BuildContexts map[string]string
	// Dockerfile is the Dockerfile's path; "" means ContextDir/Dockerfile,
	// then ContextDir/Containerfile.
	Dockerfile string
	// IgnoreFile is the ignore file filtering the context (--ignorefile);
	// "" means the first of <Dockerfile>.dockerignore,
	// <Dockerfile>.containerignore, CONTEXT/.containerignore and
	// CONTEXT/.dockerignore that exists.
	IgnoreFile string
	// DockerfileContent, when non-nil, is used instead of reading
	// Dockerfile (Dockerfile then only names it in messages). Either way
	// the Dockerfile may hold at most dockerfile.MaxFileSize bytes; a
	// Dockerfile path must name a regular file.
	DockerfileContent []byte
	// Tags name the result in the store.
	Tags []string
	// BuildArgs override ARG defaults (--build-arg).
	BuildArgs map[string]string
	// Target is the stage to build; "" means the last one.
	Target string
	// Platforms to build for; empty means the host's. More than one gives
	// an image index.
	Platforms []v1.Platform
	// Labels are added to the final image (--label).
	Labels map[string]string
	// Jobs bounds how many stages build at once; 0 means the CPU count.
	Jobs int
	// NoCache makes every step run: the build cache is not read (it is
	// still written).
	NoCache bool
	// NoCacheFilter names stages (by name or index) whose steps always
	// run (--no-cache-filter).
	NoCacheFilter []string
	// CacheFrom are caches to take steps from besides the store's own
	// (--cache-from), in order.
	CacheFrom []CacheSource
	// CacheTo receive the cache records of the build when it succeeded
	// (--cache-to).
	CacheTo []CacheExporter
	// Format of manifests and configs; "" means OCI.
	Format Format
	// Compression and CompressionLevel of new layers.
	Compression      layers.Compression
	CompressionLevel int
	// Squash merges the layers the final stage added on top of its base
	// (image or stage) into one; the base's layers stay. SquashAll makes
	// the whole result one layer. They exclude each other. Every step is
	// still cached on its own; the merge is made after the steps. See
	// SquashImage for the history.
	Squash    bool
	SquashAll bool
	// Outputs are written in addition to the store.
	Outputs []registry.Output
	// Attest asks for SBOM and provenance attestations (--sbom,
	// --provenance, --attest); the result is then an index holding them
	// (see docs/attestations.md), even for one platform.
	Attest attest.Options
	// Push are registry references the result is pushed to after a
	// successful build (--push), with PushOptions. Layers the build took
	// from a registry cache (CacheFrom) are mounted or skipped, never
	// downloaded to be uploaded again. When such layers were not needed
	// by any step (so they were not downloaded) and there are no Outputs,
	// the result is pushed from memory and not written to the store:
	// Result.Stored is false, Tags are not applied and a warning says so.
	// Without Push (or with Outputs) the result needs every layer's bytes,
	// and Build downloads them.
	//
	// PushOptions.Conn left at its zero value means Registry's (with
	// InsecureRegistries): one connection setting (credentials, keychain,
	// TLS) serves the pulls and the pushes of a build.
	Push        []string
	PushOptions registry.PushOptions
	// PushByDigest are repositories ("reg.io/team/app"; a tag is ignored)
	// the result is pushed to by digest, with no tag, as buildx's
	// --output type=image,push-by-digest=true does, with PushOptions; the
	// result is stored as for Push.
	PushByDigest []string
	// Annotations are set on the result's manifests, index and
	// descriptors, as buildx's --annotation sets them (see
	// registry.Annotation). Index annotations need several Platforms;
	// docker media types take manifest annotations only.
	Annotations []registry.Annotation
	// Manifest names a manifest list the result's images are added to
	// (created, with the build's Format, when missing), as buildah's build
	// --manifest does; the result is then always stored.
	Manifest string
	// StepOptions are the options the steps of a build share with the
	// working container operations (From, Run, Copy, Config): progress,
	// clock, RUN's sandbox, secrets, downloads and pulls.
	StepOptions

	// contextID names a fetched main context stably (fetchContexts),
	// dockerfileHost is where its Dockerfile is, and named are the opened
	// BuildContexts.
	contextID      string
	dockerfileHost string
	named          map[string]*namedContext

	// binfmtDir is where RUN looks for emulators; "" means
	// DefaultBinfmtDir. Tests point it at a fixture.
	binfmtDir string
}

// StepOptions configure how steps run, for a Build (Options embeds them)
// and for the operations on a working container.
type StepOptions struct {
	// SourceDateEpoch, when set, clamps file mtimes in new layers and sets
	// every timestamp of the config and history, for reproducible builds.
	SourceDateEpoch *time.Time
	// Progress receives events; nil discards them.
	Progress progress.Sink
	// HTTPClient fetches ADD URLs; nil means http.DefaultClient.
	HTTPClient *http.Client
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Secrets are what RUN --mount=type=secret steps may use, by id. They
	// are read when a step uses them and never reach an image.
	Secrets map[string]SecretSource
	// SSH maps RUN --mount=type=ssh ids to SSH agent socket paths.
	SSH map[string]string
	// Network is the RUN steps' network, NetworkHost ("" means this) or
	// NetworkNone; RUN --network overrides it for one step.
	Network Network
	// Isolation is how RUN steps are isolated: IsolationAuto ("" means
	// this), IsolationChroot, IsolationUserns or IsolationNone; see
	// ParseIsolation.
	Isolation Isolation
	// CapAdd and CapDrop change the capabilities RUN steps hold, from
	// docker's default set (sandbox.DefaultCapabilities): names such as
	// NET_ADMIN or CAP_NET_ADMIN, or ALL; added first, then dropped, as
	// buildah's --cap-add and --cap-drop.
	CapAdd, CapDrop []string
	// AllowInsecure grants the security.insecure entitlement, as
	// buildx's --allow security.insecure: RUN --security=insecure steps
	// then hold every capability, with no seccomp filter and no masked
	// paths. Without it such a step fails.
	AllowInsecure bool
	// AllowNetworkHost grants the network.host entitlement, as buildx's
	// --allow network.host: RUN --network=host steps are refused without
	// it, as docker build refuses them (the steps' default network,
	// Network, needs no entitlement).
	AllowNetworkHost bool
	// Pull is the base images' pull policy: registry.PullMissing (the
	// default, ""), PullAlways or PullNever. Images not in the store are
	// pulled from their registry (see registry.Pull).
	Pull registry.PullPolicy
	// InsecureRegistries are registry hosts (host[:port]) reached over
	// plain HTTP; localhost and 127.0.0.1 always are.
	InsecureRegistries []string
	// Registry is how base images' registries are reached (credentials,
	// TLS); InsecureRegistries is added to its Insecure list.
	Registry registry.Conn
}

// fill sets the defaults of unset options (Progress, Now, Jobs,
// Compression, Format) and checks the format and compression go together.
// Build and the working container operations both start with it.
func (o *Options) fill() error {
	if o.Progress == nil {
		o.Progress = progress.Discard{}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Jobs <= 0 {
		o.Jobs = runtime.NumCPU()
	}
	if o.Compression == "" {
		o.Compression = layers.Gzip
	}
	format, err := ParseFormat(string(o.Format))
	if err != nil {
		return err
	}
	o.Format = format
	return checkFormat(format, o.Compression)
}

// capabilities is the capability set of RUN steps.
func (o *Options) capabilities() ([]string, error) {
	return sandbox.Capabilities(o.CapAdd, o.CapDrop)
}

// registryConn is Registry with InsecureRegistries added.
func (o *Options) registryConn() registry.Conn {
	c := o.Registry
	c.Insecure = append(append([]string(nil), c.Insecure...), o.InsecureRegistries...)
	return c
}

// pushOptions is PushOptions, its Conn defaulting to registryConn and
// its layer transfers reported to Progress.
func (o *Options) pushOptions() registry.PushOptions {
	po := o.PushOptions
	if reflect.ValueOf(po.Conn).IsZero() {
		po.Conn = o.registryConn()
	}
	if po.Transfers == nil && o.Progress != nil {
		po.Transfers = TransferProgress(o.Progress)
	}
	return po
}

// pullProgress reports pull steps to Progress as log events.
func (o *Options) pullProgress() func(string) {
	if o.Progress == nil {
		return nil
	}
	return func(msg string) {
		o.Progress.Emit(progress.Event{Kind: progress.Log, Time: time.Now(), Message: msg})
	}
}

// SecretSource is where a secret's bytes come from: Value when non-nil,
// else the file File. The library never reads the process environment:
// a caller offering an environment variable passes its Value.
type SecretSource struct {
	File  string
	Value []byte
}

// Isolation is how RUN steps are isolated (sandbox.Isolation, which the
// sandbox's Spec takes).
type Isolation = sandbox.Isolation

// Isolation modes of RUN steps.
const (
	// IsolationAuto runs steps in new mount, pid, uts and ipc namespaces
	// (as root).
	IsolationAuto = sandbox.IsolationAuto
	// IsolationChroot runs steps in a new mount namespace only, chrooted
	// into the image: they share the host's pids, host name and IPC.
	IsolationChroot = sandbox.IsolationChroot
	// IsolationUserns is IsolationAuto in a user namespace the caller
	// entered (the ibuild command re-executes itself into one); the
	// library does not enter it.
	IsolationUserns = sandbox.IsolationUserns
	// IsolationNone makes no namespace and no mount: the stage's root file
	// system is unpacked into a directory, each step runs chrooted into it
	// (CAP_SYS_CHROOT suffices) and its changes are found by comparing
	// metadata indexes taken before and after. For CI pods that allow
	// neither user namespaces nor mounts; auto picks it as root without
	// CAP_SYS_ADMIN. RUN --mount and --network none are not available.
	IsolationNone = sandbox.IsolationNone
)

// Network is the network RUN steps see (sandbox.Network).
type Network = sandbox.Network

// Network modes of RUN steps.
const (
	// NetworkHost shares the host's network (the default).
	NetworkHost = sandbox.NetworkHost
	// NetworkNone gives steps only a loopback interface.
	NetworkNone = sandbox.NetworkNone
)

// ParseIsolation validates an isolation mode; "" means IsolationAuto.
func ParseIsolation(s string) (Isolation, error) {
	switch i := Isolation(s); i {
	case "", IsolationAuto:
		return IsolationAuto, nil
	case IsolationChroot, IsolationUserns, IsolationNone:
		return i, nil
	}
	return "", fmt.Errorf("unknown isolation %q: want auto, chroot, userns or none", s)
}

// ParseNetwork validates a network mode; "" and "default" mean
// NetworkHost.
func ParseNetwork(s string) (Network, error) {
	switch n := Network(s); n {
	case "", "default", NetworkHost:
		return NetworkHost, nil
	case NetworkNone:
		return n, nil
	}
	return "", fmt.Errorf("unknown network %q: want host or none", s)
}

// ErrNativeSnapshots is the error of a RUN step in a store opened with
// native snapshots, which RUN cannot mount.
var ErrNativeSnapshots = errors.New("RUN needs overlay or vfs snapshots (containers/storage); this store uses native snapshots: open it as root with layers.WithSnapshotter(layers.SnapshotterAuto)")

// EntitlementError is the error of a RUN step that needs an entitlement
// the build does not allow, as docker build refuses it.
type EntitlementError struct {
	// Name is the entitlement, as docker spells it: "network.host" or
	// "security.insecure".
	Name string
	// Step is what asked for it ("RUN --network=host").
	Step string
	// Option is the Options field that allows it.
	Option string
}

func (e *EntitlementError) Error() string {
	return fmt.Sprintf("%s needs the %s entitlement, as with docker build: allow it (Options.%s)", e.Step, e.Name, e.Option)
}

// MissingSecretError is the error of a RUN step whose required secret
// (or SSH agent) mount names an id the build was not given.
type MissingSecretError struct {
	ID string
	// SSH is set for an SSH agent (Options.SSH), else it is a secret
	// (Options.Secrets).
	SSH bool
}

func (e *MissingSecretError) Error() string {
	if e.SSH {
		return fmt.Sprintf("ssh agent %q is required but was not provided (Options.SSH[%q])", e.ID, e.ID)
	}
	return fmt.Sprintf("secret %q is required but was not provided (Options.Secrets[%q])", e.ID, e.ID)
}

// Pushed is one push of a build's result.
type Pushed struct {
	// Ref is the reference pushed to, as given in Options.Push.
	Ref string
	// Digest is the pushed manifest's (or index's) digest.
	Digest v1.Hash
}

// Result is what a build produced.
type Result struct {
	// Image is the built image for a single-platform build; nil otherwise.
	Image v1.Image
	// Index is the image index of a multi-platform build, or of a build
	// with attestations (Options.Attest), which holds them; nil otherwise.
	Index v1.ImageIndex
	// Digest is the manifest (or index) digest: the index's when there
	// is one.
	Digest v1.Hash
	// ID is the image ID: the config digest of an image, or the index
	// digest of an index.
	ID v1.Hash
	// Descriptor is the result's descriptor in the store, with the
	// descriptor annotations of Options.Annotations (manifest-descriptor
	// for an image, index-descriptor for an index), which only the
	// caller's report (such as --metadata-file) carries.
	Descriptor v1.Descriptor
	// Names are the normalized names of Options.Tags, which the result
	// was tagged with in the store when Stored.
	Names []string
	// Stored is false when the result was pushed (Options.Push) but not
	// written to the store, because layers it took from a registry cache
	// were never downloaded; Descriptor then describes the pushed
	// manifest.
	Stored bool
	// Pushed are the pushes of Options.Push, then of
	// Options.PushByDigest (Ref is then REPOSITORY@DIGEST), in order.
	Pushed []Pushed
	// Warnings collected during the build (also sent to Progress).
	Warnings []string
}

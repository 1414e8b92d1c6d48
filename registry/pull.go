package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/platforms"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	specs "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/ibuild/ibuild/builder/attest"
	"github.com/ibuild/ibuild/layers"
)

// PullPolicy says when a base image is pulled from its registry.
type PullPolicy string

// Pull policies, as buildah's and docker's --pull name them.
const (
	// PullAlways resolves the reference in the registry every time; blobs
	// already stored are not downloaded again.
	PullAlways PullPolicy = "always"
	// PullMissing uses the stored image when the name (and the requested
	// platform) is complete in the store, and pulls otherwise.
	PullMissing PullPolicy = "missing"
	// PullNever never contacts a registry.
	PullNever PullPolicy = "never"
)

// pullJobs bounds how many blobs of one image download at once.
const pullJobs = 3

// ParsePullPolicy validates a --pull value; "" means PullMissing, and the
// boolean forms docker accepts map to always (true) and missing (false).
func ParsePullPolicy(s string) (PullPolicy, error) {
	switch PullPolicy(strings.ToLower(strings.TrimSpace(s))) {
	case "", PullMissing, "false", "ifmissing", "if-missing":
		return PullMissing, nil
	case PullAlways, "true":
		return PullAlways, nil
	case PullNever:
		return PullNever, nil
	}
	return "", fmt.Errorf("unknown pull policy %q: want always, missing or never", s)
}

// PullOptions configure Pull.
type PullOptions struct {
	// Platform selects the manifest of an index; the zero value means the
	// host's platform.
	Platform v1.Platform
	// Policy is PullAlways, PullMissing ("" means this) or PullNever.
	Policy PullPolicy
	// Conn is how the registry is reached: insecure hosts, TLS,
	// credentials, transport.
	Conn
	// Progress receives one line per step; nil discards them.
	Progress func(string)
	// Transfers, when not nil, receives the progress of each layer
	// downloaded (see Transfer) instead of a Progress line per layer.
	Transfers func(Transfer)

	ref string // the canonical reference, for Transfers
}

func (o PullOptions) progress(format string, args ...any) {
	if o.Progress != nil {
		o.Progress(fmt.Sprintf(format, args...))
	}
}

func (o PullOptions) platform() v1.Platform {
	if o.Platform.OS == "" && o.Platform.Architecture == "" {
		p := platforms.Normalize(platforms.DefaultSpec())
		return v1.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}
	}
	return o.Platform
}

// ParseReference parses an image reference the way docker does: a name
// without a registry is on docker.io, and a one-component docker.io name
// is under library/. Registries in insecure (host[:port]) are reached over
// plain HTTP; localhost and loopback addresses are anyway.
func ParseReference(ref string, insecure []string) (name.Reference, error) {
	r, err := name.ParseReference(ref, name.WeakValidation)
	if err != nil {
		return nil, fmt.Errorf("invalid image reference %q: %w", ref, err)
	}
	if slices.Contains(insecure, r.Context().RegistryStr()) || slices.Contains(insecure, registryHost(r)) {
		r, err = name.ParseReference(ref, name.WeakValidation, name.Insecure)
		if err != nil {
			return nil, fmt.Errorf("invalid image reference %q: %w", ref, err)
		}
	}
	return r, nil
}

// registryHost is r's registry as the user writes it: docker.io rather
// than index.docker.io.
func registryHost(r name.Reference) string {
	h := r.Context().RegistryStr()
	if h == name.DefaultRegistry {
		return "docker.io"
	}
	return h
}

// CanonicalName is the full name a pulled image is stored under:
// "docker.io/library/alpine:3", "127.0.0.1:5000/app:1",
// "reg.io/a/b@sha256:...".
func CanonicalName(r name.Reference) string {
	s := registryHost(r) + "/" + r.Context().RepositoryStr()
	switch t := r.(type) {
	case name.Tag:
		return s + ":" + t.TagStr()
	case name.Digest:
		return s + "@" + t.DigestStr()
	}
	return s + ":" + r.Identifier()
}

// remoteOptions are the go-containerregistry options of Pull and Inspect.
func (o PullOptions) remoteOptions(ctx context.Context) []remote.Option {
	return o.Conn.remoteOptions(ctx, pullJobs)
}

// Pull stores the image ref names (for opts.Platform, when it is an index)
// in store under its full name (CanonicalName) and returns the descriptor
// of the stored manifest or index. Layers download in parallel and each is
// checked against its digest while it streams into the blob store, where
// it appears only once complete, so an interrupted pull leaves nothing
// half-written and a new pull starts cleanly. Manifests and configs are
// stored as blobs; an index is stored with the manifests of the platforms
// pulled so far. Errors name the reference.
func Pull(ctx context.Context, store *layers.Store, ref string, opts PullOptions) (v1.Descriptor, error) {
	policy, err := ParsePullPolicy(string(opts.Policy))
	if err != nil {
		return v1.Descriptor{}, err
	}
	r, err := ParseReference(ref, opts.Insecure)
	if err != nil {
		return v1.Descriptor{}, err
	}
	full := CanonicalName(r)
	opts.ref = full
	want := opts.platform()
	if policy != PullAlways {
		if d, ok := localImage(ctx, store, full, want); ok {
			return d, nil
		}
		if policy == PullNever {
			if _, err := store.Lookup(ctx, full); err == nil {
				return v1.Descriptor{}, fmt.Errorf("pull %s: the local store has no complete image for %s, and the pull policy is never", full, platforms.Format(toSpec(want)))
			}
			return v1.Descriptor{}, fmt.Errorf("pull %s: not in the local store, and the pull policy is never", full)
		}
	}
	fail := func(err error) (v1.Descriptor, error) {
		return v1.Descriptor{}, fmt.Errorf("pull %s: %w", full, explain(ctx, plainStall(err), r, "pull", opts.Conn))
	}
	ropts := opts.remoteOptions(ctx)
	opts.progress("resolving %s", full)
	var desc *remote.Descriptor
	if err := retryBroken(ctx, func() (err error) {
		desc, err = remote.Get(r, ropts...)
		return err
	}); err != nil {
		return fail(err)
	}
	var top v1.Descriptor
	if desc.MediaType.IsIndex() {
		im, err := v1.ParseIndexManifest(bytes.NewReader(desc.Manifest))
		if err != nil {
			return fail(err)
		}
		child, err := pickPlatform(im, want)
		if err != nil {
			return fail(err)
		}
		var cdesc *remote.Descriptor
		if err := retryBroken(ctx, func() (err error) {
			cdesc, err = remote.Get(r.Context().Digest(child.Digest.String()), ropts...)
			return err
		}); err != nil {
			return fail(err)
		}
		img, err := withConfig(ctx, cdesc)
		if err != nil {
			return fail(err)
		}
		if _, err := storeImage(ctx, store, img, opts); err != nil {
			return fail(err)
		}
		// Keep the platform's attestations (SBOM, provenance): small
		// manifests of small blobs, so a push of the pulled index
		// carries them on.
		for _, ad := range attest.For(im, child.Digest) {
			adesc, err := remote.Get(r.Context().Digest(ad.Digest.String()), ropts...)
			if err == nil {
				var att v1.Image
				if att, err = adesc.Image(); err == nil {
					_, err = storeImage(ctx, store, att, opts)
				}
			}
			if err != nil {
				return fail(fmt.Errorf("attestation manifest %s: %w", ad.Digest, err))
			}
		}
		top = v1.Descriptor{MediaType: desc.MediaType, Size: desc.Size, Digest: desc.Digest}
		if _, _, err := store.Blobs().Put(ctx, bytes.NewReader(desc.Manifest), &top.Digest); err != nil {
			return fail(fmt.Errorf("index %s: %w", top.Digest, err))
		}
	} else {
		img, err := withConfig(ctx, desc)
		if err != nil {
			return fail(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return fail(fmt.Errorf("config: %w", err))
		}
		if have := cf.Platform(); have != nil && have.OS != "" && !MatchPlatform(want, *have) {
			return fail(fmt.Errorf("the image is for %s, not the requested platform %s", platforms.Format(toSpec(*have)), platforms.Format(toSpec(want))))
		}
		if top, err = storeImage(ctx, store, img, opts); err != nil {
			return fail(err)
		}
	}
	if err := store.Tag(ctx, full, top); err != nil {
		return fail(err)
	}
	opts.progress("pulled %s: %s", full, top.Digest)
	return top, nil
}

// withConfig is the image desc describes, with its config downloaded
// (retried as retryBroken does). Each try starts from a new image: one
// whose config download broke keeps the part it got.
func withConfig(ctx context.Context, desc *remote.Descriptor) (v1.Image, error) {
	var img v1.Image
	err := retryBroken(ctx, func() (err error) {
		if img, err = desc.Image(); err != nil {
			return err
		}
		_, err = img.RawConfigFile()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return img, nil
}

// storeImage downloads img's missing blobs into store: layers (in
// parallel), then the config, then the manifest, so a stored manifest
// means a complete image.
func storeImage(ctx context.Context, store *layers.Store, img v1.Image, opts PullOptions) (v1.Descriptor, error) {
	unlock, err := store.Lock(ctx, false)
	if err != nil {
		return v1.Descriptor{}, err
	}
	defer unlock()
	ls, err := img.Layers()
	if err != nil {
		return v1.Descriptor{}, err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(pullJobs)
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			return v1.Descriptor{}, err
		}
		if mt, err := l.MediaType(); err == nil && !mt.IsDistributable() {
			continue // foreign layers are fetched from their URLs
		}
		if store.Blobs().Has(d) {
			continue
		}
		g.Go(func() error {
			return retryBroken(gctx, func() error {
				rc, err := l.Compressed()
				if err != nil {
					return fmt.Errorf("layer %s: %w", d, err)
				}
				defer rc.Close()
				var tr *transferReader
				if opts.Transfers != nil {
					size, _ := l.Size()
					tr = newTransferReader(rc, Transfer{Ref: opts.ref, Action: "pull", Digest: d, Size: size}, opts.Transfers)
					rc = tr
				}
				_, n, err := store.Blobs().Put(gctx, rc, &d)
				if err != nil {
					return fmt.Errorf("layer %s: %w", d, err)
				}
				if tr != nil {
					tr.finish(n)
				} else {
					opts.progress("layer %s: %d bytes", d, n)
				}
				return nil
			})
		})
	}
	if err := g.Wait(); err != nil {
		return v1.Descriptor{}, err
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("config: %w", err)
	}
	var rawCfg []byte
	if err := retryBroken(ctx, func() (err error) {
		rawCfg, err = img.RawConfigFile()
		return err
	}); err != nil {
		return v1.Descriptor{}, fmt.Errorf("config %s: %w", cfgName, err)
	}
	if _, _, err := store.Blobs().Put(ctx, bytes.NewReader(rawCfg), &cfgName); err != nil {
		return v1.Descriptor{}, fmt.Errorf("config %s: %w", cfgName, err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("manifest: %w", err)
	}
	dg, err := img.Digest()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("manifest: %w", err)
	}
	mt, err := img.MediaType()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("manifest: %w", err)
	}
	if _, _, err := store.Blobs().Put(ctx, bytes.NewReader(raw), &dg); err != nil {
		return v1.Descriptor{}, fmt.Errorf("manifest %s: %w", dg, err)
	}
	desc := v1.Descriptor{MediaType: mt, Size: int64(len(raw)), Digest: dg}
	if cf, err := v1.ParseConfigFile(bytes.NewReader(rawCfg)); err == nil {
		desc.Platform = cf.Platform()
	}
	return desc, nil
}

// pullAttempts bounds how often retryBroken tries.
const pullAttempts = 5

// retryBroken runs f until it succeeds, fails other than by a broken
// connection (a body cut short, a reset, a closed connection) or has run
// pullAttempts times, waiting 250ms, 500ms, 1s... between tries. The
// transport already retries 5xx and 429 answers; this covers a
// connection that breaks while a blob's body streams, which a whole new
// request repairs.
func retryBroken(ctx context.Context, f func() error) error {
	wait := 250 * time.Millisecond
	for i := 1; ; i++ {
		err := f()
		if err == nil || i >= pullAttempts || !brokenConn(err) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// brokenConn reports whether err is a connection that broke, or a body
// that stopped coming (a *StallError after the answer's headers; one
// before them was retried by the HTTP transport already).
func brokenConn(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var stall *StallError
	if errors.As(err, &stall) {
		return stall.inBody
	}
	var ne net.Error
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed) || errors.As(err, &ne)
}

// localImage reports whether the store holds name, complete for platform
// want (every blob of the platform's image is stored), and returns its
// descriptor.
func localImage(ctx context.Context, store *layers.Store, name string, want v1.Platform) (v1.Descriptor, bool) {
	d, err := store.Lookup(ctx, name)
	if err != nil {
		return v1.Descriptor{}, false
	}
	img := d
	if d.MediaType.IsIndex() {
		b, err := store.Blobs().ReadAll(d.Digest)
		if err != nil {
			return v1.Descriptor{}, false
		}
		im, err := v1.ParseIndexManifest(bytes.NewReader(b))
		if err != nil {
			return v1.Descriptor{}, false
		}
		c, err := pickPlatform(im, want)
		if err != nil {
			return v1.Descriptor{}, false
		}
		img = c
	}
	i, err := store.Image(ctx, img.Digest)
	if err != nil {
		return v1.Descriptor{}, false
	}
	if !d.MediaType.IsIndex() {
		if cf, err := i.ConfigFile(); err == nil {
			if have := cf.Platform(); have != nil && have.OS != "" && !MatchPlatform(want, *have) {
				return v1.Descriptor{}, false
			}
		}
	}
	m, err := i.Manifest()
	if err != nil {
		return v1.Descriptor{}, false
	}
	for _, l := range m.Layers {
		if l.MediaType.IsDistributable() && !store.Blobs().Has(l.Digest) {
			return v1.Descriptor{}, false
		}
	}
	return d, true
}

// pickPlatform returns the manifest of im that serves want; the error
// names want and the platforms im has.
func pickPlatform(im *v1.IndexManifest, want v1.Platform) (v1.Descriptor, error) {
	var have []string
	for _, d := range im.Manifests {
		if d.Platform == nil || !d.MediaType.IsImage() {
			continue
		}
		have = append(have, platforms.Format(toSpec(*d.Platform)))
		if MatchPlatform(want, *d.Platform) {
			return d, nil
		}
	}
	if len(have) == 0 {
		return v1.Descriptor{}, errors.New("the index lists no image with a platform")
	}
	return v1.Descriptor{}, fmt.Errorf("no manifest for platform %s (the index has: %s)", platforms.Format(toSpec(want)), strings.Join(have, ", "))
}

// MatchPlatform reports whether an image for have runs on want, with
// containerd/platforms normalization (arm64 = arm64/v8, x86_64 = amd64).
func MatchPlatform(want, have v1.Platform) bool {
	w := platforms.Normalize(toSpec(want))
	h := platforms.Normalize(toSpec(have))
	return platforms.NewMatcher(w).Match(h)
}

func toSpec(p v1.Platform) specs.Platform {
	return specs.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}
}

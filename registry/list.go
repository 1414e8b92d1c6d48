package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/containerd/platforms"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/layers"
)

// Manifest lists, as buildah's `manifest` commands edit them. A list is a
// stored index under a name (see layers.Store.UpdateList). Its entries are
// stored images, or images that live in a registry: of those only the
// manifest and config are stored, with the repository they came from as
// their source (layers.Store.AddSources), so that adding and pushing them
// moves no layer.

// DockerTransport is the prefix that makes a reference a registry's
// (buildah's transport syntax); references without it are looked up in
// the store first.
const DockerTransport = "docker://"

// OptionError is an error about how an option is set (or left unset).
// Option names it as the Go API spells it ("ListAddOptions.All", or a
// whole options type when several of its fields would do), so that a
// command can name its own flag.
type OptionError struct {
	Option string
	Err    error
}

func (e *OptionError) Error() string { return e.Err.Error() }

// Unwrap returns the error.
func (e *OptionError) Unwrap() error { return e.Err }

func optionError(option string, err error) error {
	return &OptionError{Option: option, Err: err}
}

// ListCreateOptions configure CreateList.
type ListCreateOptions struct {
	// MediaType is the list's: types.OCIImageIndex ("" means this) or
	// types.DockerManifestList.
	MediaType types.MediaType
	// Annotations are set on the index itself (OCI only).
	Annotations map[string]string
	// Amend keeps an existing list of that name (adding to it) instead of
	// failing; an existing image of that name becomes the first entry of
	// a new list.
	Amend bool
}

// ListEntryOptions override what a list records about an entry, as
// buildah's manifest add and annotate flags do. Zero fields change
// nothing.
type ListEntryOptions struct {
	OS, Architecture, Variant, OSVersion string
	OSFeatures, Features                 []string
	// Annotations are added to the entry's descriptor (OCI indexes only).
	Annotations map[string]string
}

// ListAddOptions configure AddToList.
type ListAddOptions struct {
	// Conn is how registries are reached.
	Conn
	// ListEntryOptions override the added entries' platform and annotate
	// them.
	ListEntryOptions
	// All adds every image of an index the reference names; otherwise
	// only the image for Platform.
	All bool
	// Platform picks the image of an index when not All; zero means the
	// host's.
	Platform v1.Platform
	// Progress receives one line per step; nil discards them.
	Progress func(string)
}

// ListAnnotateOptions configure AnnotateList.
type ListAnnotateOptions struct {
	// Conn is how a docker:// entry reference is resolved.
	Conn
	ListEntryOptions
	// Index sets Annotations on the index itself instead of on an entry;
	// the platform fields must then be empty.
	Index bool
}

// platformFieldRE is what an --os, --arch, --variant or --os-version
// value may hold.
var platformFieldRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func (o ListEntryOptions) check() error {
	for _, f := range []struct{ flag, v string }{{"os", o.OS}, {"arch", o.Architecture}, {"variant", o.Variant}, {"os-version", o.OSVersion}} {
		if f.v != "" && !platformFieldRE.MatchString(f.v) {
			return fmt.Errorf("--%s %q: want letters, digits, '.', '_' or '-'", f.flag, f.v)
		}
	}
	for _, fs := range [][]string{o.OSFeatures, o.Features} {
		for _, f := range fs {
			if !platformFieldRE.MatchString(f) {
				return fmt.Errorf("feature %q: want letters, digits, '.', '_' or '-'", f)
			}
		}
	}
	for k := range o.Annotations {
		if err := checkAnnotationKey(k); err != nil {
			return fmt.Errorf("annotation: %w", err)
		}
	}
	return nil
}

func (o ListEntryOptions) setsPlatform() bool {
	return o.OS != "" || o.Architecture != "" || o.Variant != "" || o.OSVersion != "" || len(o.OSFeatures)+len(o.Features) > 0
}

// apply overrides d's platform fields and adds the annotations.
func (o ListEntryOptions) apply(d *v1.Descriptor) {
	if o.setsPlatform() {
		p := v1.Platform{}
		if d.Platform != nil {
			p = *d.Platform
		}
		if o.OS != "" {
			p.OS = o.OS
		}
		if o.Architecture != "" {
			p.Architecture = o.Architecture
		}
		if o.Variant != "" {
			p.Variant = o.Variant
		}
		if o.OSVersion != "" {
			p.OSVersion = o.OSVersion
		}
		if len(o.OSFeatures) > 0 {
			p.OSFeatures = slices.Clone(o.OSFeatures)
		}
		if len(o.Features) > 0 {
			p.Features = slices.Clone(o.Features)
		}
		d.Platform = &p
	}
	d.Annotations = MergeAnnotations(d.Annotations, o.Annotations)
}

// listEntry is an image to add to a list: its descriptor in the list and
// the repository it can be fetched from ("" for none).
type listEntry struct {
	desc   v1.Descriptor
	source string
}

// CreateList makes an empty list named name (normalized as stored names
// are), or with Amend adds nothing to an existing one, and returns its
// descriptor; AddToList then adds images to it.
func CreateList(ctx context.Context, store *layers.Store, name string, opts ListCreateOptions) (v1.Descriptor, error) {
	mt := opts.MediaType
	if mt == "" {
		mt = types.OCIImageIndex
	}
	if !mt.IsIndex() {
		return v1.Descriptor{}, fmt.Errorf("manifest create %s: %q is not an index media type", name, mt)
	}
	if mt == types.DockerManifestList && len(opts.Annotations) > 0 {
		return v1.Descriptor{}, fmt.Errorf("manifest create %s: a docker manifest list has no annotations: use an OCI index", name)
	}
	for k := range opts.Annotations {
		if err := checkAnnotationKey(k); err != nil {
			return v1.Descriptor{}, fmt.Errorf("manifest create %s: annotation: %w", name, err)
		}
	}
	return store.UpdateList(ctx, name, func(cur *v1.IndexManifest, named *v1.Descriptor) (*v1.IndexManifest, error) {
		switch {
		case named != nil && !opts.Amend:
			what := "a manifest list"
			if cur == nil {
				what = "an image"
			}
			return nil, optionError("ListCreateOptions.Amend", fmt.Errorf("manifest create %s: the name is taken by %s (%s): set Amend to add to it, or use another name", name, what, named.Digest))
		case cur != nil:
			if len(opts.Annotations) > 0 && cur.MediaType == types.DockerManifestList {
				return nil, fmt.Errorf("manifest create %s: a docker manifest list has no annotations", name)
			}
			cur.Annotations = MergeAnnotations(cur.Annotations, opts.Annotations)
			return cur, nil
		}
		im := &v1.IndexManifest{SchemaVersion: 2, MediaType: mt, Manifests: []v1.Descriptor{}, Annotations: opts.Annotations}
		if named != nil {
			// --amend of an image: it becomes the list's first entry.
			d, err := storedEntry(store, *named)
			if err != nil {
				return nil, fmt.Errorf("manifest create %s: %w", name, err)
			}
			im.Manifests = append(im.Manifests, d)
		}
		return im, nil
	})
}

// AddToList adds the image ref names to the list named list, which must
// exist, and returns the added entries and the list's new descriptor. ref
// is "docker://REF" (a registry's), else a stored image (name, digest or
// ID prefix), else, when it names a registry, that registry's image. An
// index adds the image for opts.Platform, or every image with opts.All.
// Of an image in a registry only the manifest and config are fetched and
// stored, and its repository is recorded as its source: no layer is
// downloaded. An entry with the digest of one the list has replaces it.
func AddToList(ctx context.Context, store *layers.Store, list, ref string, opts ListAddOptions) ([]v1.Descriptor, v1.Descriptor, error) {
	fail := func(err error) ([]v1.Descriptor, v1.Descriptor, error) {
		return nil, v1.Descriptor{}, fmt.Errorf("manifest add %s %s: %w", list, ref, err)
	}
	if err := opts.ListEntryOptions.check(); err != nil {
		return fail(err)
	}
	// The shared lock keeps what is stored here from a prune until the
	// list references it.
	unlock, err := store.Lock(ctx, false)
	if err != nil {
		return fail(err)
	}
	defer unlock()
	if _, err := lookupList(ctx, store, list); err != nil {
		return nil, v1.Descriptor{}, err
	}
	entries, err := resolveEntries(ctx, store, ref, opts)
	if err != nil {
		return fail(err)
	}
	for i := range entries {
		opts.ListEntryOptions.apply(&entries[i].desc)
		if entries[i].source != "" {
			if err := store.AddSources(ctx, entries[i].desc.Digest, entries[i].source); err != nil {
				return fail(err)
			}
		}
	}
	return addEntries(ctx, store, list, entries, nil)
}

// AddImagesToList adds stored images (descriptors with their platforms)
// to the list named list, creating it (see ListCreateOptions.MediaType)
// when it does not exist, and returns the list's new descriptor. It is
// what `build --manifest` does with the images it built.
func AddImagesToList(ctx context.Context, store *layers.Store, list string, images []v1.Descriptor, create ListCreateOptions) (v1.Descriptor, error) {
	entries := make([]listEntry, len(images))
	for i, d := range images {
		if !d.MediaType.IsImage() {
			return v1.Descriptor{}, fmt.Errorf("manifest list %s: %s is not an image manifest", list, d.Digest)
		}
		entries[i] = listEntry{desc: v1.Descriptor{MediaType: d.MediaType, Size: d.Size, Digest: d.Digest, Platform: d.Platform, Annotations: d.Annotations}}
	}
	_, desc, err := addEntries(ctx, store, list, entries, &create)
	return desc, err
}

// addEntries puts entries into the list, creating it when create is set.
func addEntries(ctx context.Context, store *layers.Store, list string, entries []listEntry, create *ListCreateOptions) ([]v1.Descriptor, v1.Descriptor, error) {
	var added []v1.Descriptor
	desc, err := store.UpdateList(ctx, list, func(cur *v1.IndexManifest, named *v1.Descriptor) (*v1.IndexManifest, error) {
		switch {
		case cur == nil && named != nil:
			return nil, notAList(list, *named)
		case cur == nil && create == nil:
			return nil, fmt.Errorf("no manifest list named %s: create it with ibuild manifest create %s", list, list)
		case cur == nil:
			mt := create.MediaType
			if mt == "" {
				mt = types.OCIImageIndex
			}
			cur = &v1.IndexManifest{SchemaVersion: 2, MediaType: mt, Annotations: create.Annotations}
		}
		for _, e := range entries {
			if cur.MediaType == types.DockerManifestList && len(e.desc.Annotations) > 0 {
				return nil, fmt.Errorf("manifest list %s is a docker manifest list, whose entries have no annotations: use an OCI index (ListCreateOptions.MediaType types.OCIImageIndex)", list)
			}
			if i := slices.IndexFunc(cur.Manifests, func(d v1.Descriptor) bool { return d.Digest == e.desc.Digest }); i >= 0 {
				cur.Manifests[i] = e.desc
			} else {
				cur.Manifests = append(cur.Manifests, e.desc)
			}
			added = append(added, e.desc)
		}
		return cur, nil
	})
	if err != nil {
		return nil, v1.Descriptor{}, err
	}
	return added, desc, nil
}

func notAList(list string, named v1.Descriptor) error {
	return fmt.Errorf("%s is an image (%s), not a manifest list", list, named.Digest)
}

// lookupList finds the stored list name names; an image is an error.
func lookupList(ctx context.Context, store *layers.Store, list string) (v1.Descriptor, error) {
	d, err := store.Lookup(ctx, list)
	if errors.Is(err, layers.ErrNotFound) {
		return v1.Descriptor{}, fmt.Errorf("no manifest list named %s: create it with ibuild manifest create %s", list, list)
	} else if err != nil {
		return v1.Descriptor{}, err
	}
	if !d.MediaType.IsIndex() {
		return v1.Descriptor{}, notAList(list, d)
	}
	return d, nil
}

// resolveEntries finds what ref names, as AddToList describes.
func resolveEntries(ctx context.Context, store *layers.Store, ref string, opts ListAddOptions) ([]listEntry, error) {
	if r, ok := strings.CutPrefix(ref, DockerTransport); ok {
		return remoteEntries(ctx, store, r, opts)
	}
	d, err := store.Lookup(ctx, ref)
	if err == nil {
		return localEntries(ctx, store, ref, d, opts)
	}
	if !errors.Is(err, layers.ErrNotFound) {
		return nil, err
	}
	if n, nerr := layers.NormalizeName(ref); nerr == nil && !LocalOnly(n) {
		return remoteEntries(ctx, store, ref, opts)
	}
	return nil, fmt.Errorf("not in the local store, and it names no registry (for a registry's image write docker://REF): %w", err)
}

// sourceOf is the repository of a stored name that has a registry, or "".
func sourceOf(ref string, insecure []string) string {
	n, err := layers.NormalizeName(ref)
	if err != nil || LocalOnly(n) {
		return ""
	}
	r, err := ParseReference(n, insecure)
	if err != nil {
		return ""
	}
	return repositoryName(r)
}

// repositoryName is "registry/repository" of r, as the user writes it.
func repositoryName(r name.Reference) string {
	return registryHost(r) + "/" + r.Context().RepositoryStr()
}

// localEntries are the entries for the stored image or index d.
func localEntries(ctx context.Context, store *layers.Store, ref string, d v1.Descriptor, opts ListAddOptions) ([]listEntry, error) {
	source := sourceOf(ref, opts.Insecure)
	if d.MediaType.IsImage() {
		e, err := storedEntry(store, d)
		if err != nil {
			return nil, err
		}
		return []listEntry{{desc: e, source: source}}, nil
	}
	raw, err := store.Blobs().ReadAll(d.Digest)
	if err != nil {
		return nil, err
	}
	im, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("index %s: %w", d.Digest, err)
	}
	children, err := pickChildren(im, opts)
	if err != nil {
		return nil, err
	}
	var out []listEntry
	for _, c := range children {
		if !store.Blobs().Has(c.Digest) {
			if source == "" {
				return nil, fmt.Errorf("the image %s (%s) of the index is not stored", c.Digest, platformText(c.Platform))
			}
			es, err := remoteEntries(ctx, store, source+"@"+c.Digest.String(), ListAddOptions{Conn: opts.Conn, Progress: opts.Progress})
			if err != nil {
				return nil, err
			}
			es[0].desc.Platform = c.Platform
			out = append(out, es[0])
			continue
		}
		out = append(out, listEntry{desc: v1.Descriptor{MediaType: c.MediaType, Size: c.Size, Digest: c.Digest, Platform: c.Platform}, source: source})
	}
	return out, nil
}

// storedEntry is the list entry of the stored image d: its platform is
// its config's.
func storedEntry(store *layers.Store, d v1.Descriptor) (v1.Descriptor, error) {
	img, err := store.Image(context.Background(), d.Digest)
	if err != nil {
		return v1.Descriptor{}, err
	}
	e := v1.Descriptor{MediaType: d.MediaType, Size: d.Size, Digest: d.Digest}
	if cf, err := img.ConfigFile(); err == nil {
		e.Platform = cf.Platform()
	}
	return e, nil
}

// pickChildren are the images of im that opts asks for.
func pickChildren(im *v1.IndexManifest, opts ListAddOptions) ([]v1.Descriptor, error) {
	if opts.All {
		var out []v1.Descriptor
		for _, c := range im.Manifests {
			if c.MediaType.IsImage() {
				out = append(out, c)
			}
		}
		if len(out) == 0 {
			return nil, errors.New("the index lists no image")
		}
		return out, nil
	}
	want := opts.Platform
	if want.OS == "" && want.Architecture == "" {
		p := platforms.Normalize(platforms.DefaultSpec())
		want = v1.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}
		if opts.OS != "" {
			want.OS = opts.OS
		}
		if opts.Architecture != "" {
			want.Architecture, want.Variant = opts.Architecture, opts.Variant
		}
	}
	c, err := pickPlatform(im, want)
	if err != nil {
		return nil, optionError("ListAddOptions.All", fmt.Errorf("%w; All adds every image", err))
	}
	return []v1.Descriptor{c}, nil
}

// remoteEntries fetches the manifest (and, for an index, the chosen
// images' manifests) and the configs of ref from its registry, stores
// them, and returns the entries with ref's repository as their source.
// No layer is downloaded.
func remoteEntries(ctx context.Context, store *layers.Store, ref string, opts ListAddOptions) ([]listEntry, error) {
	r, err := ParseReference(ref, opts.Insecure)
	if err != nil {
		return nil, err
	}
	ropts := append(opts.Conn.remoteOptions(ctx, pullJobs), retryOptions()...)
	progress := func(format string, args ...any) {
		if opts.Progress != nil {
			opts.Progress(fmt.Sprintf(format, args...))
		}
	}
	progress("resolving %s", CanonicalName(r))
	desc, err := remote.Get(r, ropts...)
	if err != nil {
		return nil, fmt.Errorf("%s (registry %s): %w", CanonicalName(r), registryHost(r), err)
	}
	source := repositoryName(r)
	if !desc.MediaType.IsIndex() {
		e, err := storeRemoteImage(ctx, store, desc)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", CanonicalName(r), err)
		}
		return []listEntry{{desc: e, source: source}}, nil
	}
	im, err := v1.ParseIndexManifest(bytes.NewReader(desc.Manifest))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CanonicalName(r), err)
	}
	children, err := pickChildren(im, opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CanonicalName(r), err)
	}
	var out []listEntry
	for _, c := range children {
		cd, err := remote.Get(r.Context().Digest(c.Digest.String()), ropts...)
		if err != nil {
			return nil, fmt.Errorf("%s@%s: %w", repositoryName(r), c.Digest, err)
		}
		e, err := storeRemoteImage(ctx, store, cd)
		if err != nil {
			return nil, fmt.Errorf("%s@%s: %w", repositoryName(r), c.Digest, err)
		}
		// The index's platform, as buildah records it (it may say more
		// than the config, such as a variant).
		if c.Platform != nil {
			e.Platform = c.Platform
		}
		out = append(out, listEntry{desc: e, source: source})
	}
	return out, nil
}

// storeRemoteImage stores the manifest and config of the registry image
// desc (its layers stay there) and returns its list entry, with the
// config's platform.
func storeRemoteImage(ctx context.Context, store *layers.Store, desc *remote.Descriptor) (v1.Descriptor, error) {
	if !desc.MediaType.IsImage() {
		return v1.Descriptor{}, fmt.Errorf("%s has media type %q, not an image manifest", desc.Digest, desc.MediaType)
	}
	img, err := desc.Image()
	if err != nil {
		return v1.Descriptor{}, err
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return v1.Descriptor{}, err
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
	if _, _, err := store.Blobs().Put(ctx, bytes.NewReader(desc.Manifest), &desc.Digest); err != nil {
		return v1.Descriptor{}, fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	e := v1.Descriptor{MediaType: desc.MediaType, Size: int64(len(desc.Manifest)), Digest: desc.Digest}
	if cf, err := v1.ParseConfigFile(bytes.NewReader(rawCfg)); err == nil {
		e.Platform = cf.Platform()
	}
	return e, nil
}

// RemoveFromList removes an entry from the list named list and returns
// the removed digest and the list's new descriptor. entry is the entry's
// digest (or a unique prefix of at least 12 hex digits), a stored image
// whose manifest the list holds, or docker://REF.
func RemoveFromList(ctx context.Context, store *layers.Store, list, entry string, conn Conn) (v1.Hash, v1.Descriptor, error) {
	var removed v1.Hash
	desc, err := editEntry(ctx, store, list, entry, conn, func(im *v1.IndexManifest, i int) error {
		removed = im.Manifests[i].Digest
		im.Manifests = slices.Delete(im.Manifests, i, i+1)
		return nil
	})
	if err != nil {
		return v1.Hash{}, v1.Descriptor{}, fmt.Errorf("manifest remove %s %s: %w", list, entry, err)
	}
	return removed, desc, nil
}

// AnnotateList changes the platform or annotations of an entry of the
// list named list (entry as for RemoveFromList), or with opts.Index the
// annotations of the index itself (entry is then ""), and returns the
// annotated entry's digest (zero for the index) and the list's new
// descriptor.
func AnnotateList(ctx context.Context, store *layers.Store, list, entry string, opts ListAnnotateOptions) (v1.Hash, v1.Descriptor, error) {
	fail := func(err error) (v1.Hash, v1.Descriptor, error) {
		return v1.Hash{}, v1.Descriptor{}, fmt.Errorf("manifest annotate %s: %w", list, err)
	}
	if err := opts.ListEntryOptions.check(); err != nil {
		return fail(err)
	}
	if opts.Index {
		if entry != "" {
			return fail(optionError("ListAnnotateOptions.Index", fmt.Errorf("Index annotates the index itself: name no entry (%s)", entry)))
		}
		if opts.setsPlatform() {
			return fail(optionError("ListAnnotateOptions.Index", errors.New("Index sets annotations only: OS, Architecture, Variant, OSVersion and the features are an entry's")))
		}
		if len(opts.Annotations) == 0 {
			return fail(optionError("ListEntryOptions.Annotations", errors.New("Index needs Annotations")))
		}
		desc, err := store.UpdateList(ctx, list, func(cur *v1.IndexManifest, named *v1.Descriptor) (*v1.IndexManifest, error) {
			if cur == nil {
				return nil, missingList(list, named)
			}
			if cur.MediaType == types.DockerManifestList {
				return nil, errors.New("a docker manifest list has no annotations")
			}
			cur.Annotations = MergeAnnotations(cur.Annotations, opts.Annotations)
			return cur, nil
		})
		if err != nil {
			return fail(err)
		}
		return v1.Hash{}, desc, nil
	}
	if entry == "" {
		return fail(optionError("ListAnnotateOptions.Index", errors.New("name the entry to annotate (its digest or image), or set Index")))
	}
	if !opts.setsPlatform() && len(opts.Annotations) == 0 {
		return fail(optionError("ListEntryOptions", errors.New("nothing to change: set Annotations, OS, Architecture, Variant, OSVersion, OSFeatures or Features")))
	}
	var annotated v1.Hash
	desc, err := editEntry(ctx, store, list, entry, opts.Conn, func(im *v1.IndexManifest, i int) error {
		if im.MediaType == types.DockerManifestList && len(opts.Annotations) > 0 {
			return errors.New("a docker manifest list's entries have no annotations")
		}
		opts.ListEntryOptions.apply(&im.Manifests[i])
		annotated = im.Manifests[i].Digest
		return nil
	})
	if err != nil {
		return fail(err)
	}
	return annotated, desc, nil
}

func missingList(list string, named *v1.Descriptor) error {
	if named != nil {
		return notAList(list, *named)
	}
	return fmt.Errorf("no manifest list named %s: create it with ibuild manifest create %s", list, list)
}

// editEntry applies fn to the entry of list that entry names.
func editEntry(ctx context.Context, store *layers.Store, list, entry string, conn Conn, fn func(im *v1.IndexManifest, i int) error) (v1.Descriptor, error) {
	// A docker:// entry is resolved before the list is locked.
	var remoteDigest *v1.Hash
	if r, ok := strings.CutPrefix(entry, DockerTransport); ok {
		ref, err := ParseReference(r, conn.Insecure)
		if err != nil {
			return v1.Descriptor{}, err
		}
		d, err := remote.Head(ref, append(conn.remoteOptions(ctx, pullJobs), retryOptions()...)...)
		if err != nil {
			return v1.Descriptor{}, fmt.Errorf("%s (registry %s): %w", CanonicalName(ref), registryHost(ref), err)
		}
		remoteDigest = &d.Digest
	}
	return store.UpdateList(ctx, list, func(cur *v1.IndexManifest, named *v1.Descriptor) (*v1.IndexManifest, error) {
		if cur == nil {
			return nil, missingList(list, named)
		}
		i, err := findListEntry(ctx, store, cur, entry, remoteDigest)
		if err != nil {
			return nil, err
		}
		if err := fn(cur, i); err != nil {
			return nil, err
		}
		return cur, nil
	})
}

// findListEntry is the index in im of the entry that entry names.
func findListEntry(ctx context.Context, store *layers.Store, im *v1.IndexManifest, entry string, remoteDigest *v1.Hash) (int, error) {
	match := func(pred func(v1.Descriptor) bool) []int {
		var out []int
		for i, d := range im.Manifests {
			if pred(d) {
				out = append(out, i)
			}
		}
		return out
	}
	var hits []int
	switch hexPart := strings.TrimPrefix(entry, "sha256:"); {
	case remoteDigest != nil:
		hits = match(func(d v1.Descriptor) bool { return d.Digest == *remoteDigest })
	case len(hexPart) >= 12 && len(hexPart) <= 64 && strings.Trim(hexPart, "0123456789abcdef") == "":
		hits = match(func(d v1.Descriptor) bool { return strings.HasPrefix(d.Digest.Hex, hexPart) })
	default:
		d, err := store.Lookup(ctx, entry)
		if err != nil {
			return 0, fmt.Errorf("%s is neither an entry's digest nor a stored image: %w", entry, err)
		}
		hits = match(func(e v1.Descriptor) bool { return e.Digest == d.Digest })
	}
	switch len(hits) {
	case 1:
		return hits[0], nil
	case 0:
		var have []string
		for _, d := range im.Manifests {
			have = append(have, d.Digest.String()+" ("+platformText(d.Platform)+")")
		}
		if len(have) == 0 {
			return 0, fmt.Errorf("the list has no entry %s: it is empty", entry)
		}
		return 0, fmt.Errorf("the list has no entry %s (it has: %s)", entry, strings.Join(have, ", "))
	}
	return 0, fmt.Errorf("%s matches %d entries: give more of the digest", entry, len(hits))
}

// platformText is "os/arch[/variant]", or "no platform".
func platformText(p *v1.Platform) string {
	if p == nil || (p.OS == "" && p.Architecture == "") {
		return "no platform"
	}
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// InspectList returns the stored list's index, as stored.
func InspectList(ctx context.Context, store *layers.Store, list string) ([]byte, error) {
	d, err := lookupList(ctx, store, list)
	if err != nil {
		return nil, err
	}
	return store.Blobs().ReadAll(d.Digest)
}

// InspectRemoteList returns the index ref names in its registry; an
// image manifest is an error.
func InspectRemoteList(ctx context.Context, ref string, conn Conn) ([]byte, error) {
	r, err := ParseReference(ref, conn.Insecure)
	if err != nil {
		return nil, err
	}
	d, err := remote.Get(r, append(conn.remoteOptions(ctx, pullJobs), retryOptions()...)...)
	if err != nil {
		return nil, fmt.Errorf("manifest inspect %s (registry %s): %w", CanonicalName(r), registryHost(r), err)
	}
	if !d.MediaType.IsIndex() {
		return nil, fmt.Errorf("manifest inspect %s: it is an image manifest (%s), not a manifest list: ibuild inspect docker://%s shows it", CanonicalName(r), d.MediaType, ref)
	}
	return d.Manifest, nil
}

// RemoveList removes the list named list, as rmi does: the name, and the
// index and entries' data nothing else references. An image is an error.
func RemoveList(ctx context.Context, store *layers.Store, list string) (layers.RemoveReport, error) {
	if _, err := lookupList(ctx, store, list); err != nil {
		return layers.RemoveReport{}, err
	}
	return store.Remove(ctx, list)
}

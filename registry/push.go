package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/builder/attest"
	"github.com/ibuild/ibuild/layers"
)

// pushJobs is how many blobs of one image upload at once by default.
const pushJobs = 3

// PushOptions configure Push.
type PushOptions struct {
	// Conn is how the registry is reached: insecure hosts, TLS,
	// credentials, transport.
	Conn
	// Format is "oci" or "docker" to push the image (or index) with that
	// format's media types, over the same blobs; "" pushes it as stored.
	// A conversion changes the manifest digest.
	Format string
	// Jobs bounds how many blobs upload at once; 0 means 3.
	Jobs int
	// Progress receives one line per step; nil discards them.
	Progress func(string)
	// Transfers, when not nil, receives the progress of each layer
	// uploaded (see Transfer).
	Transfers func(Transfer)
}

// LocalOnly reports whether a stored name has no registry: it was
// normalized under "localhost/" (see layers.NormalizeName), so it cannot
// be pushed as is.
func LocalOnly(storedName string) bool {
	return strings.HasPrefix(storedName, "localhost/")
}

// Push uploads the image or index src (a stored name, digest or ID
// prefix, as layers.Store.Lookup takes) to the registry reference dest,
// or to src's own name when dest is "", and returns the digest of the
// pushed manifest or index. Layers are sent compressed as stored, never
// recompressed; blobs the registry has are not uploaded again (HEAD first,
// or a cross-repository mount from src's repository on the same
// registry), and the manifest goes last, so the tag never names an
// incomplete image. 5xx and 429 answers are retried with backoff. Errors
// name the destination and its registry.
func Push(ctx context.Context, store *layers.Store, src, dest string, opts PushOptions) (v1.Hash, error) {
	desc, err := store.Lookup(ctx, src)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", src, err)
	}
	if dest == "" {
		n, err := layers.NormalizeName(src)
		if err != nil || strings.HasPrefix(src, "sha256:") || isHexPrefix(src) {
			return v1.Hash{}, fmt.Errorf("push %s: an image ID has no name to push to; give a destination reference", src)
		}
		if LocalOnly(n) {
			return v1.Hash{}, fmt.Errorf("push %s: %s names no registry; give a destination such as registry.example.com/%s", src, n, strings.TrimPrefix(n, "localhost/"))
		}
		dest = n
	}
	// Hold a shared lock so nothing is garbage-collected under the upload.
	unlock, err := store.Lock(ctx, false)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", dest, err)
	}
	defer unlock()
	var img v1.Image
	var idx v1.ImageIndex
	switch {
	case desc.MediaType.IsIndex():
		// As a list: entries that live in a registry are pushed from there.
		var li *listIndex
		if li, err = openList(ctx, store, desc.Digest, opts.Conn, dest); err == nil {
			idx = li
		}
	case desc.MediaType.IsImage():
		img, err = store.Image(ctx, desc.Digest)
	default:
		err = fmt.Errorf("%s is a %s, neither an image nor an index", desc.Digest, desc.MediaType)
	}
	if err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", dest, err)
	}
	return push(ctx, img, idx, src, dest, opts)
}

// PushImage uploads img to the registry reference dest and returns the
// digest of the pushed manifest, as Push does for a stored image. img
// need not be in a store: a build's result whose layers came from a
// registry cache is pushed without downloading them, since a layer that
// is (or wraps, through an Unwrap() v1.Layer method) a
// *remote.MountableLayer naming a repository of dest's registry is
// mounted from there, or skipped when dest already has it.
func PushImage(ctx context.Context, img v1.Image, dest string, opts PushOptions) (v1.Hash, error) {
	return push(ctx, img, nil, "", dest, opts)
}

// PushIndex is PushImage for an image index.
func PushIndex(ctx context.Context, idx v1.ImageIndex, dest string, opts PushOptions) (v1.Hash, error) {
	return push(ctx, nil, idx, "", dest, opts)
}

// push uploads img or idx to dest; src, when not "", is the stored name
// the layers may be mounted from (see mountSource).
func push(ctx context.Context, img v1.Image, idx v1.ImageIndex, src, dest string, opts PushOptions) (v1.Hash, error) {
	var format types.MediaType
	switch opts.Format {
	case "":
	case "oci":
		format = types.OCIManifestSchema1
	case "docker":
		format = types.DockerManifestSchema2
	default:
		return v1.Hash{}, fmt.Errorf("push %s: unknown format %q (want oci or docker)", dest, opts.Format)
	}
	r, err := ParseReference(dest, opts.Insecure)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("push: %w", err)
	}
	full := CanonicalName(r)
	fail := func(err error) (v1.Hash, error) {
		return v1.Hash{}, fmt.Errorf("push %s (registry %s): %w", full, registryHost(r), explain(ctx, plainStall(err), r, "push", opts.Conn))
	}
	jobs := opts.Jobs
	if jobs <= 0 {
		jobs = pushJobs
	}
	ropts := append(opts.Conn.remoteOptions(ctx, jobs), retryOptions()...)
	progress := func(format string, args ...any) {
		if opts.Progress != nil {
			opts.Progress(fmt.Sprintf(format, args...))
		}
	}
	var from name.Reference
	if src != "" {
		from = mountSource(src, r, opts.Insecure)
	}
	var pushed v1.Hash
	switch {
	case idx != nil:
		if format != "" {
			var dropped int
			if idx, dropped, err = convertIndex(idx, format); err != nil {
				return fail(err)
			}
			if dropped > 0 {
				// Always said, even without a Progress callback: the
				// pushed index lacks what the stored one has.
				msg := fmt.Sprintf("warning: docker format: %d attestation manifest(s) (SBOM, provenance) dropped: a docker manifest list cannot hold them; push in oci format to keep them", dropped)
				if opts.Progress != nil {
					opts.Progress(msg)
				} else {
					fmt.Fprintln(os.Stderr, "ibuild: "+msg)
				}
			}
		}
		if pushed, err = idx.Digest(); err != nil {
			return fail(err)
		}
		progress("pushing index %s to %s", pushed, full)
		if err := remote.WriteIndex(r, &mountIndex{idx: idx, from: from, dest: r, report: opts.Transfers}, ropts...); err != nil {
			return fail(err)
		}
	case img != nil:
		if format != "" {
			if img, err = convertImage(img, format); err != nil {
				return fail(err)
			}
		}
		if pushed, err = img.Digest(); err != nil {
			return fail(err)
		}
		progress("pushing image %s to %s", pushed, full)
		if err := remote.Write(r, &mountImage{Image: img, from: from, dest: r, report: opts.Transfers}, ropts...); err != nil {
			return fail(err)
		}
	default:
		return fail(errors.New("nothing to push"))
	}
	progress("pushed %s: %s", full, pushed)
	return pushed, nil
}

func isHexPrefix(s string) bool {
	return len(s) >= 12 && len(s) <= 64 && strings.Trim(s, "0123456789abcdef") == ""
}

// convertedImage is an image whose manifest was rewritten with another
// format's media types; config and layer bytes are the base's.
type convertedImage struct {
	v1.Image
	raw      []byte
	manifest *v1.Manifest
	digest   v1.Hash
}

func (c *convertedImage) MediaType() (types.MediaType, error) { return c.manifest.MediaType, nil }
func (c *convertedImage) RawManifest() ([]byte, error)        { return c.raw, nil }
func (c *convertedImage) Manifest() (*v1.Manifest, error)     { return c.manifest.DeepCopy(), nil }
func (c *convertedImage) Digest() (v1.Hash, error)            { return c.digest, nil }
func (c *convertedImage) Size() (int64, error)                { return int64(len(c.raw)), nil }

var _ v1.Image = (*convertedImage)(nil)

// convertImage returns img with manifest media type mt (OCI or Docker
// schema 2) and the matching config and layer media types; img itself
// when it already has them.
func convertImage(img v1.Image, mt types.MediaType) (v1.Image, error) {
	have, err := img.MediaType()
	if err != nil {
		return nil, err
	}
	if have == mt {
		return img, nil
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	docker := mt == types.DockerManifestSchema2
	m.MediaType = mt
	m.Config.MediaType = types.OCIConfigJSON
	if docker {
		m.Config.MediaType = types.DockerConfigJSON
	}
	for i, l := range m.Layers {
		nt, err := layerType(l.MediaType, docker)
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", l.Digest, err)
		}
		m.Layers[i].MediaType = nt
	}
	if docker {
		// Docker schema 2 has no manifest annotations, subject or artifact type.
		m.Annotations, m.Subject = nil, nil
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	d, _, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	return &convertedImage{Image: img, raw: raw, manifest: m, digest: d}, nil
}

// layerType maps a layer media type to the docker (docker) or OCI
// equivalent naming the same bytes.
func layerType(mt types.MediaType, docker bool) (types.MediaType, error) {
	pairs := [][2]types.MediaType{
		{types.DockerLayer, types.OCILayer},
		{types.DockerUncompressedLayer, types.OCIUncompressedLayer},
		{types.DockerForeignLayer, types.OCIRestrictedLayer},
	}
	for _, p := range pairs {
		if mt == p[0] || mt == p[1] {
			if docker {
				return p[0], nil
			}
			return p[1], nil
		}
	}
	if docker && mt == types.OCILayerZStd {
		return "", errors.New("a zstd layer has no docker media type; push it in oci format")
	}
	return mt, nil
}

// convertedIndex is an index whose manifests were converted.
type convertedIndex struct {
	raw      []byte
	manifest *v1.IndexManifest
	digest   v1.Hash
	children map[v1.Hash]v1.Image
}

func (c *convertedIndex) MediaType() (types.MediaType, error) { return c.manifest.MediaType, nil }
func (c *convertedIndex) RawManifest() ([]byte, error)        { return c.raw, nil }
func (c *convertedIndex) Digest() (v1.Hash, error)            { return c.digest, nil }
func (c *convertedIndex) Size() (int64, error)                { return int64(len(c.raw)), nil }
func (c *convertedIndex) IndexManifest() (*v1.IndexManifest, error) {
	return c.manifest.DeepCopy(), nil
}

func (c *convertedIndex) Image(h v1.Hash) (v1.Image, error) {
	if img, ok := c.children[h]; ok {
		return img, nil
	}
	return nil, fmt.Errorf("image %s: not in the index", h)
}

func (c *convertedIndex) ImageIndex(h v1.Hash) (v1.ImageIndex, error) {
	return nil, fmt.Errorf("index %s: nested indexes are not converted", h)
}

var _ v1.ImageIndex = (*convertedIndex)(nil)

// convertIndex converts idx and each of its images to manifest media type
// mt (an image type; the index gets the matching index type). Converting
// to docker drops attestation manifests (BuildKit's layout needs OCI
// media types); dropped says how many.
func convertIndex(idx v1.ImageIndex, mt types.MediaType) (_ v1.ImageIndex, dropped int, _ error) {
	want := types.OCIImageIndex
	if mt == types.DockerManifestSchema2 {
		want = types.DockerManifestList
	}
	have, err := idx.MediaType()
	if err != nil {
		return nil, 0, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, 0, err
	}
	c := &convertedIndex{manifest: im, children: map[v1.Hash]v1.Image{}}
	same := have == want
	if want == types.DockerManifestList {
		kept := im.Manifests[:0]
		for _, d := range im.Manifests {
			if attest.IsAttestation(d) {
				dropped++
				continue
			}
			kept = append(kept, d)
		}
		im.Manifests = kept
		same = same && dropped == 0
	}
	for i, d := range im.Manifests {
		if !d.MediaType.IsImage() {
			return nil, 0, fmt.Errorf("%s: only indexes of images are converted", d.Digest)
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, 0, err
		}
		if img, err = convertImage(img, mt); err != nil {
			return nil, 0, fmt.Errorf("image %s: %w", d.Digest, err)
		}
		if im.Manifests[i].Digest, err = img.Digest(); err != nil {
			return nil, 0, err
		}
		if im.Manifests[i].Size, err = img.Size(); err != nil {
			return nil, 0, err
		}
		im.Manifests[i].MediaType = mt
		same = same && im.Manifests[i].Digest == d.Digest
		c.children[im.Manifests[i].Digest] = img
	}
	if same {
		return idx, 0, nil
	}
	im.MediaType = want
	if want == types.DockerManifestList {
		im.Annotations, im.Subject = nil, nil
	}
	if c.raw, err = json.Marshal(im); err != nil {
		return nil, 0, err
	}
	if c.digest, _, err = v1.SHA256(bytes.NewReader(c.raw)); err != nil {
		return nil, 0, err
	}
	return c, dropped, nil
}

// remoteOptions are the go-containerregistry options shared by Pull,
// Inspect and Push.
func (c Conn) remoteOptions(ctx context.Context, jobs int) []remote.Option {
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(c.keychain()),
		remote.WithTransport(c.roundTripper()),
		remote.WithJobs(jobs),
	}
}

// mountSource is the repository blobs of src may be mounted from when
// pushing to dest: src's own name, when it is in another repository of
// dest's registry. nil otherwise.
func mountSource(src string, dest name.Reference, insecure []string) name.Reference {
	n, err := layers.NormalizeName(src)
	if err != nil || LocalOnly(n) {
		return nil
	}
	r, err := ParseReference(n, insecure)
	if err != nil || r.Context().RegistryStr() != dest.Context().RegistryStr() || r.Context().RepositoryStr() == dest.Context().RepositoryStr() {
		return nil
	}
	return r
}

// layerSource is the repository a layer can be mounted from: the
// Reference of the *remote.MountableLayer it is or wraps (through
// Unwrap() v1.Layer methods); nil when there is none.
func layerSource(l v1.Layer) name.Reference {
	for range 16 {
		switch t := l.(type) {
		case *remote.MountableLayer:
			return t.Reference
		case interface{ Unwrap() v1.Layer }:
			l = t.Unwrap()
		default:
			return nil
		}
	}
	return nil
}

// mountable offers l to remote.Write as mountable into dest: from its own
// source repository (layerSource) when that is on dest's registry, else
// from from (when not nil). Layers from another registry are uploaded
// (their bytes are read from where they are). The bytes are tagged with
// the blob's digest (see namedLayer).
func mountable(l v1.Layer, from, dest name.Reference) v1.Layer {
	m := mountableAs(l, from, dest)
	if ml, ok := m.(*remote.MountableLayer); ok {
		return &remote.MountableLayer{Layer: namedLayer{ml.Layer}, Reference: ml.Reference}
	}
	return namedLayer{m}
}

// namedLayer tags the bytes of its blob with its digest, so that a
// stalled upload of them can name the blob: remote.Write uploads them in
// requests whose URLs do not (see stallTransport.describe).
type namedLayer struct{ v1.Layer }

func (n namedLayer) Unwrap() v1.Layer { return n.Layer }

func (n namedLayer) Compressed() (io.ReadCloser, error) {
	rc, err := n.Layer.Compressed()
	if err != nil {
		return nil, err
	}
	d, err := n.Layer.Digest()
	if err != nil {
		return rc, nil
	}
	return &blobBody{ReadCloser: rc, digest: d.String()}, nil
}

// blobBody is the content of the blob digest.
type blobBody struct {
	io.ReadCloser
	digest string
}

func (b *blobBody) blobDigest() string { return b.digest }

// mountableAs is mountable without the tagging.
func mountableAs(l v1.Layer, from, dest name.Reference) v1.Layer {
	if own := layerSource(l); own != nil {
		if own.Context().RegistryStr() == dest.Context().RegistryStr() {
			if ml, ok := l.(*remote.MountableLayer); ok && ml.Reference == own {
				return l
			}
			return &remote.MountableLayer{Layer: l, Reference: own}
		}
		if ml, ok := l.(*remote.MountableLayer); ok {
			l = ml.Layer // not mountable into dest: a plain upload
		}
	}
	if from != nil {
		return &remote.MountableLayer{Layer: l, Reference: from}
	}
	return l
}

// mountImage offers its layers to remote.Write as mountable from another
// repository of the same registry: the registry links them instead of
// receiving their bytes again (and falls back to an upload if it cannot).
// A layer that knows its own source repository (see layerSource) is
// mounted from there; the others from from, when it is not nil.
type mountImage struct {
	v1.Image
	from   name.Reference
	dest   name.Reference
	report func(Transfer) // uploads, when not nil
}

func (m *mountImage) Layers() ([]v1.Layer, error) {
	ls, err := m.Image.Layers()
	if err != nil {
		return nil, err
	}
	out := make([]v1.Layer, len(ls))
	for i, l := range ls {
		out[i] = withTransfers(mountable(l, m.from, m.dest), CanonicalName(m.dest), m.report)
	}
	return out, nil
}

func (m *mountImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	l, err := m.Image.LayerByDigest(h)
	if err != nil {
		return nil, err
	}
	return withTransfers(mountable(l, m.from, m.dest), CanonicalName(m.dest), m.report), nil
}

// ConfigLayer offers the config blob as mountable too.
func (m *mountImage) ConfigLayer() (v1.Layer, error) {
	l, err := partial.ConfigLayer(m.Image)
	if err != nil {
		return nil, err
	}
	// As a layer: mountable from its own source (a list entry's) or from,
	// its bytes named for a stall's error.
	return mountable(l, m.from, m.dest), nil
}

// mountIndex is an index whose images are mountImages.
type mountIndex struct {
	idx    v1.ImageIndex
	from   name.Reference
	dest   name.Reference
	report func(Transfer)
}

func (m *mountIndex) MediaType() (types.MediaType, error)       { return m.idx.MediaType() }
func (m *mountIndex) Digest() (v1.Hash, error)                  { return m.idx.Digest() }
func (m *mountIndex) Size() (int64, error)                      { return m.idx.Size() }
func (m *mountIndex) IndexManifest() (*v1.IndexManifest, error) { return m.idx.IndexManifest() }
func (m *mountIndex) RawManifest() ([]byte, error)              { return m.idx.RawManifest() }
func (m *mountIndex) ImageIndex(h v1.Hash) (v1.ImageIndex, error) {
	return m.idx.ImageIndex(h)
}

func (m *mountIndex) Image(h v1.Hash) (v1.Image, error) {
	img, err := m.idx.Image(h)
	if err != nil {
		return nil, err
	}
	return &mountImage{Image: img, from: m.from, dest: m.dest, report: m.report}, nil
}

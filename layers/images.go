package layers

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"go.podman.io/storage"
)

var (
	domainRE    = regexp.MustCompile(`^[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?$`)
	componentRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	tagRE       = regexp.MustCompile(`^\w[\w.-]{0,127}$`)
	digestRE    = regexp.MustCompile(`^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$`)
)

// NormalizeName turns a user's image reference into the form the store
// records, following buildah: a name whose first component is not a
// registry host (no '.' or ':', not "localhost") goes under "localhost/",
// and a name without tag or digest gets ":latest".
//
//	demo                -> localhost/demo:latest
//	demo:1              -> localhost/demo:1
//	a/b                 -> localhost/a/b:latest
//	reg.io:5000/a/b:2   -> reg.io:5000/a/b:2
//	demo@sha256:<hex>   -> localhost/demo@sha256:<hex>
func NormalizeName(ref string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("invalid image name %q: %s", ref, why)
	}
	rest := ref
	var tag, digest string
	if i := strings.IndexByte(rest, '@'); i >= 0 {
		rest, digest = rest[:i], rest[i+1:]
		if !digestRE.MatchString(digest) {
			return bad("bad digest " + digest)
		}
	}
	if i := strings.LastIndexByte(rest, ':'); i > strings.LastIndexByte(rest, '/') {
		rest, tag = rest[:i], rest[i+1:]
		if !tagRE.MatchString(tag) {
			return bad("bad tag " + tag)
		}
	}
	if rest == "" {
		return bad("no repository")
	}
	comps := strings.Split(rest, "/")
	domain := "localhost"
	if len(comps) > 1 && (strings.ContainsAny(comps[0], ".:") || comps[0] == "localhost") {
		domain, comps = comps[0], comps[1:]
		if !domainRE.MatchString(domain) {
			return bad("bad registry host " + domain)
		}
	}
	for _, c := range comps {
		if !componentRE.MatchString(c) {
			return bad(fmt.Sprintf("bad path component %q (want lowercase letters, digits and . _ - separators)", c))
		}
	}
	out := domain + "/" + strings.Join(comps, "/")
	if len(out) > 255 {
		return bad("repository longer than 255 characters")
	}
	if tag != "" {
		out += ":" + tag
	} else if digest == "" {
		out += ":latest"
	}
	if digest != "" {
		out += "@" + digest
	}
	return out, nil
}

// WriteImage stores img's layer blobs (unless already stored), config and
// manifest, and returns the manifest's descriptor with the config's
// platform. It holds a shared lock; the image is not named until Tag.
func (s *Store) WriteImage(ctx context.Context, img v1.Image) (v1.Descriptor, error) {
	unlock, err := s.Lock(ctx, false)
	if err != nil {
		return v1.Descriptor{}, err
	}
	defer unlock()
	return s.writeImage(ctx, img)
}

// WriteIndex stores idx, every image and index it lists (recursively) and
// their blobs, and returns the index's descriptor.
func (s *Store) WriteIndex(ctx context.Context, idx v1.ImageIndex) (v1.Descriptor, error) {
	unlock, err := s.Lock(ctx, false)
	if err != nil {
		return v1.Descriptor{}, err
	}
	defer unlock()
	return s.writeIndex(ctx, idx)
}

func (s *Store) writeImage(ctx context.Context, img v1.Image) (v1.Descriptor, error) {
	ls, err := img.Layers()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("write image: %w", err)
	}
	for _, l := range ls {
		if mt, err := l.MediaType(); err == nil && !mt.IsDistributable() {
			continue // foreign layers are fetched from their URLs, not stored
		}
		d, err := l.Digest()
		if err != nil {
			return v1.Descriptor{}, fmt.Errorf("write image: layer digest: %w", err)
		}
		if err := s.ensureBlob(ctx, d, l.Compressed); err != nil {
			return v1.Descriptor{}, fmt.Errorf("write image: layer %s: %w", d, err)
		}
	}
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("write image: config: %w", err)
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("write image: config: %w", err)
	}
	if err := s.ensureBlob(ctx, cfgName, bytesOpener(rawCfg)); err != nil {
		return v1.Descriptor{}, fmt.Errorf("write image: config %s: %w", cfgName, err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("write image: manifest: %w", err)
	}
	dg, err := img.Digest()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("write image: manifest digest: %w", err)
	}
	mt, err := img.MediaType()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("write image: media type: %w", err)
	}
	if err := s.ensureBlob(ctx, dg, bytesOpener(raw)); err != nil {
		return v1.Descriptor{}, fmt.Errorf("write image: manifest %s: %w", dg, err)
	}
	desc := v1.Descriptor{MediaType: mt, Size: int64(len(raw)), Digest: dg}
	if cf, err := v1.ParseConfigFile(bytes.NewReader(rawCfg)); err == nil {
		desc.Platform = cf.Platform()
	}
	return desc, nil
}

func (s *Store) writeIndex(ctx context.Context, idx v1.ImageIndex) (v1.Descriptor, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("write index: %w", err)
	}
	for _, c := range im.Manifests {
		switch {
		case c.MediaType.IsIndex():
			child, err := idx.ImageIndex(c.Digest)
			if err == nil {
				_, err = s.writeIndex(ctx, child)
			}
			if err != nil {
				return v1.Descriptor{}, fmt.Errorf("write index: %s: %w", c.Digest, err)
			}
		case c.MediaType.IsImage():
			child, err := idx.Image(c.Digest)
			if err == nil {
				_, err = s.writeImage(ctx, child)
			}
			if err != nil {
				return v1.Descriptor{}, fmt.Errorf("write index: %s: %w", c.Digest, err)
			}
		default:
			return v1.Descriptor{}, fmt.Errorf("write index: child %s has unsupported media type %q", c.Digest, c.MediaType)
		}
	}
	raw, err := idx.RawManifest()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("write index: %w", err)
	}
	dg, err := idx.Digest()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("write index: %w", err)
	}
	mt, err := idx.MediaType()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("write index: %w", err)
	}
	if err := s.ensureBlob(ctx, dg, bytesOpener(raw)); err != nil {
		return v1.Descriptor{}, fmt.Errorf("write index %s: %w", dg, err)
	}
	return v1.Descriptor{MediaType: mt, Size: int64(len(raw)), Digest: dg}, nil
}

// ensureBlob stores the blob want from open unless it is already stored,
// then refreshes its mtime so a concurrent Prune counts it as fresh.
func (s *Store) ensureBlob(ctx context.Context, want v1.Hash, open func() (io.ReadCloser, error)) error {
	if !s.blobs.Has(want) {
		rc, err := open()
		if err != nil {
			return err
		}
		_, _, err = s.blobs.Put(ctx, rc, &want)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return touchNow(s.blobs.Path(want))
}

func bytesOpener(b []byte) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
}

// Tag points name (normalized with NormalizeName) at desc, a stored manifest
// or index, replacing whatever it named before.
func (s *Store) Tag(ctx context.Context, name string, desc v1.Descriptor) error {
	n, err := NormalizeName(name)
	if err != nil {
		return err
	}
	if !desc.MediaType.IsImage() && !desc.MediaType.IsIndex() {
		return fmt.Errorf("tag %s: %s has media type %q, not an image or index", n, desc.Digest, desc.MediaType)
	}
	unlock, err := s.Lock(ctx, false)
	if err != nil {
		return err
	}
	defer unlock()
	// Checked under the lock, so a prune cannot delete it before the entry
	// exists.
	if size, err := s.blobs.Size(desc.Digest); err != nil {
		return fmt.Errorf("tag %s: manifest %s is not stored", n, desc.Digest)
	} else if size != desc.Size {
		return fmt.Errorf("tag %s: descriptor says %d bytes, manifest %s has %d", n, desc.Size, desc.Digest, size)
	}
	return s.updateIndex(ctx, func(im *v1.IndexManifest) error {
		im.Manifests = slices.DeleteFunc(im.Manifests, func(d v1.Descriptor) bool {
			return d.Annotations[RefNameAnnotation] == n
		})
		d := desc
		d.Annotations = map[string]string{}
		for k, v := range desc.Annotations {
			d.Annotations[k] = v
		}
		d.Annotations[RefNameAnnotation] = n
		im.Manifests = append(im.Manifests, d)
		return nil
	})
}

// Untag removes name; the image's content stays until Prune (Remove both
// untags and deletes).
func (s *Store) Untag(ctx context.Context, name string) error {
	n, err := NormalizeName(name)
	if err != nil {
		return err
	}
	unlock, err := s.Lock(ctx, false)
	if err != nil {
		return err
	}
	defer unlock()
	return s.updateIndex(ctx, func(im *v1.IndexManifest) error {
		before := len(im.Manifests)
		im.Manifests = slices.DeleteFunc(im.Manifests, func(d v1.Descriptor) bool {
			return d.Annotations[RefNameAnnotation] == n
		})
		if len(im.Manifests) == before {
			return fmt.Errorf("untag %s: %w", n, ErrNotFound)
		}
		return nil
	})
}

// RemoveReport says what Remove untagged and deleted.
type RemoveReport struct {
	Untagged []string
	Deleted  []v1.Hash
}

// Remove is rmi: it untags ref (a name; or a digest or ID, which must then
// have at most one name) and, when nothing else references the image any
// more, deletes its manifest or index, configs, layer blobs and snapshots
// that no other image, index or root references. It holds the exclusive
// lock, so it waits for writers to finish.
func (s *Store) Remove(ctx context.Context, ref string) (RemoveReport, error) {
	var rep RemoveReport
	unlock, err := s.Lock(ctx, true)
	if err != nil {
		return rep, err
	}
	defer unlock()
	desc, byName, err := s.lookup(ref)
	if err != nil {
		return rep, err
	}
	err = s.updateIndex(ctx, func(im *v1.IndexManifest) error {
		var names []string
		for _, d := range im.Manifests {
			if n := d.Annotations[RefNameAnnotation]; d.Digest == desc.Digest && (byName == "" || n == byName) {
				names = append(names, n)
			}
		}
		if len(names) == 0 {
			return fmt.Errorf("remove %s: %s has no name of its own (it belongs to an index): remove the index", ref, desc.Digest)
		}
		if byName == "" && len(names) > 1 {
			return fmt.Errorf("remove %s: image has %d names (%s): remove them by name", ref, len(names), strings.Join(names, ", "))
		}
		im.Manifests = slices.DeleteFunc(im.Manifests, func(d v1.Descriptor) bool {
			return d.Digest == desc.Digest && (byName == "" || d.Annotations[RefNameAnnotation] == byName)
		})
		rep.Untagged = names
		return nil
	})
	if err != nil {
		return rep, err
	}
	live, err := s.reachable()
	if err != nil {
		return rep, err
	}
	if live.blobs[desc.Digest] {
		return rep, nil
	}
	dead := newMarks()
	if err := s.mark(dead, desc); err != nil {
		return rep, err
	}
	// The manifest goes first: an interrupted Remove leaves orphans for
	// Prune, never a manifest whose blobs are gone.
	order := []v1.Hash{desc.Digest}
	for h := range dead.blobs {
		if h != desc.Digest {
			order = append(order, h)
		}
	}
	slices.SortFunc(order[1:], func(a, b v1.Hash) int { return strings.Compare(a.Hex, b.Hex) })
	for _, h := range order {
		if live.blobs[h] || !s.blobs.Has(h) {
			continue
		}
		if err := s.blobs.Delete(h); err != nil {
			return rep, err
		}
		rep.Deleted = append(rep.Deleted, h)
	}
	s.dropSources(rep.Deleted)
	_, _, err = s.csDelete(ctx, func(l storage.Layer) bool {
		h := v1.Hash{Algorithm: "sha256", Hex: l.ID}
		return dead.chains[h] && !live.chains[h]
	})
	if err != nil {
		return rep, fmt.Errorf("remove %s: %w", ref, err)
	}
	for c := range dead.chains {
		if !live.chains[c] {
			if _, _, err := s.removeSnapshot(c.Hex); err != nil {
				return rep, err
			}
		}
	}
	return rep, nil
}

// Lookup finds the image or index ref names: a name (normalized with
// NormalizeName), "sha256:<hex>", or a unique hex prefix of at least 12
// digits of a manifest or index digest or of an image ID (config digest),
// searched among named images and the children of named indexes. The
// descriptor carries no name annotation.
func (s *Store) Lookup(ctx context.Context, ref string) (v1.Descriptor, error) {
	if err := ctx.Err(); err != nil {
		return v1.Descriptor{}, err
	}
	d, _, err := s.lookup(ref)
	return d, err
}

// lookup is Lookup; it also returns the normalized name when ref matched
// one.
func (s *Store) lookup(ref string) (v1.Descriptor, string, error) {
	im, err := s.readIndex()
	if err != nil {
		return v1.Descriptor{}, "", err
	}
	n, nameErr := NormalizeName(ref)
	if nameErr == nil {
		for _, d := range im.Manifests {
			if d.Annotations[RefNameAnnotation] == n {
				return withoutName(d), n, nil
			}
		}
	}
	prefix := strings.TrimPrefix(ref, "sha256:")
	if len(prefix) < 12 || len(prefix) > 64 || strings.Trim(prefix, "0123456789abcdef") != "" {
		if nameErr != nil {
			return v1.Descriptor{}, "", nameErr
		}
		return v1.Descriptor{}, "", fmt.Errorf("%s: %w", ref, ErrNotFound)
	}
	var found []v1.Descriptor
	add := func(d v1.Descriptor) {
		if !slices.ContainsFunc(found, func(f v1.Descriptor) bool { return f.Digest == d.Digest }) {
			found = append(found, withoutName(d))
		}
	}
	var visit func(d v1.Descriptor, depth int)
	visit = func(d v1.Descriptor, depth int) {
		if strings.HasPrefix(d.Digest.Hex, prefix) {
			add(d)
		}
		b, err := s.blobs.ReadAll(d.Digest)
		if err != nil {
			return
		}
		switch {
		case d.MediaType.IsImage():
			if m, err := v1.ParseManifest(bytes.NewReader(b)); err == nil && strings.HasPrefix(m.Config.Digest.Hex, prefix) {
				add(d)
			}
		case d.MediaType.IsIndex() && depth < 8:
			if cm, err := v1.ParseIndexManifest(bytes.NewReader(b)); err == nil {
				for _, c := range cm.Manifests {
					visit(c, depth+1)
				}
			}
		}
	}
	for _, d := range im.Manifests {
		visit(d, 0)
	}
	switch len(found) {
	case 0:
		return v1.Descriptor{}, "", fmt.Errorf("%s: %w", ref, ErrNotFound)
	case 1:
		return found[0], "", nil
	}
	var ds []string
	for _, d := range found {
		ds = append(ds, d.Digest.String())
	}
	return v1.Descriptor{}, "", fmt.Errorf("%s is ambiguous: it matches %s", ref, strings.Join(ds, ", "))
}

func withoutName(d v1.Descriptor) v1.Descriptor {
	if _, ok := d.Annotations[RefNameAnnotation]; !ok {
		return d
	}
	anns := map[string]string{}
	for k, v := range d.Annotations {
		if k != RefNameAnnotation {
			anns[k] = v
		}
	}
	if len(anns) == 0 {
		anns = nil
	}
	d.Annotations = anns
	return d
}

// ImageRecord describes one stored image or index, as `images` lists it.
type ImageRecord struct {
	Names  []string
	Digest v1.Hash
	// ID is the config digest (images only).
	ID        v1.Hash
	MediaType types.MediaType
	// Created is the config's creation time (for an index, the newest of
	// its images).
	Created time.Time
	// Size is the sum of the distinct stored blobs: manifests, configs,
	// layers (a manifest list's entries that live only in a registry add
	// their manifest and config).
	Size int64
	// Platforms are "os/arch[/variant]" of the image or the index's images.
	Platforms []string
}

// Images lists the named images and indexes, newest first. Blobs that are
// missing or unreadable leave the fields they would have filled empty.
func (s *Store) Images(ctx context.Context) ([]ImageRecord, error) {
	im, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	var recs []*ImageRecord
	byDigest := map[v1.Hash]*ImageRecord{}
	for _, d := range im.Manifests {
		r := byDigest[d.Digest]
		if r == nil {
			r = &ImageRecord{Digest: d.Digest, MediaType: d.MediaType}
			byDigest[d.Digest] = r
			recs = append(recs, r)
		}
		if n := d.Annotations[RefNameAnnotation]; n != "" {
			r.Names = append(r.Names, n)
		}
	}
	out := make([]ImageRecord, 0, len(recs))
	for _, r := range recs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		slices.Sort(r.Names)
		sizes := map[v1.Hash]int64{}
		s.describe(r, v1.Descriptor{Digest: r.Digest, MediaType: r.MediaType}, sizes, 0)
		for _, n := range sizes {
			r.Size += n
		}
		out = append(out, *r)
	}
	slices.SortStableFunc(out, func(a, b ImageRecord) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return strings.Compare(a.Digest.Hex, b.Digest.Hex)
	})
	return out, nil
}

// describe fills r from the manifest or index d and records the size of
// every blob it references in sizes.
func (s *Store) describe(r *ImageRecord, d v1.Descriptor, sizes map[v1.Hash]int64, depth int) {
	b, err := s.blobs.ReadAll(d.Digest)
	if err != nil {
		return
	}
	sizes[d.Digest] = int64(len(b))
	if d.MediaType.IsIndex() && depth < 8 {
		if im, err := v1.ParseIndexManifest(bytes.NewReader(b)); err == nil {
			for _, c := range im.Manifests {
				s.describe(r, c, sizes, depth+1)
			}
		}
		return
	}
	if !d.MediaType.IsImage() {
		return
	}
	m, err := v1.ParseManifest(bytes.NewReader(b))
	if err != nil {
		return
	}
	sizes[m.Config.Digest] = m.Config.Size
	for _, l := range m.Layers {
		// A list's entry that lives in a registry has no layer here: count
		// what the store holds.
		if s.blobs.Has(l.Digest) {
			sizes[l.Digest] = l.Size
		}
	}
	if depth == 0 {
		r.ID = m.Config.Digest
	}
	cb, err := s.blobs.ReadAll(m.Config.Digest)
	if err != nil {
		return
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(cb))
	if err != nil {
		return
	}
	if cf.Created.After(r.Created) {
		r.Created = cf.Created.Time
	}
	p := cf.Platform()
	if d.Platform != nil {
		p = d.Platform
	}
	if p != nil && p.OS != "" && p.OS != "unknown" {
		ps := p.OS + "/" + p.Architecture
		if p.Variant != "" {
			ps += "/" + p.Variant
		}
		if !slices.Contains(r.Platforms, ps) {
			r.Platforms = append(r.Platforms, ps)
		}
	}
}

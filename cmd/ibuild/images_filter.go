package main

import (
	"context"
	"fmt"
	"path"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/layers"
)

// imageFilter is what `ibuild images --filter` keeps, as docker images
// and buildah images filter: reference=PATTERN (any one of them matches),
// label=KEY or label=KEY=VALUE (every one must match), dangling=true|false.
type imageFilter struct {
	refs     []string
	labels   [][2]string // key, value; a value of "\x00" means any
	dangling *bool
}

// anyValue marks a label filter without a value.
const anyValue = "\x00"

// parseImageFilters reads --filter values.
func parseImageFilters(vals []string) (*imageFilter, error) {
	f := &imageFilter{}
	for _, v := range vals {
		key, val, ok := strings.Cut(v, "=")
		if !ok || val == "" {
			return nil, fmt.Errorf("--filter %q: want reference=PATTERN, label=KEY[=VALUE] or dangling=true|false", v)
		}
		switch key {
		case "reference":
			if _, err := path.Match(val, ""); err != nil {
				return nil, fmt.Errorf("--filter %q: bad pattern: %w", v, err)
			}
			f.refs = append(f.refs, val)
		case "label":
			k, lv, ok := strings.Cut(val, "=")
			if !ok {
				lv = anyValue
			}
			f.labels = append(f.labels, [2]string{k, lv})
		case "dangling":
			b, err := strconv.ParseBool(val)
			if err != nil {
				return nil, fmt.Errorf("--filter %q: want dangling=true or dangling=false", v)
			}
			f.dangling = &b
		default:
			return nil, fmt.Errorf("--filter %q: unknown filter %q (reference, label or dangling)", v, key)
		}
	}
	return f, nil
}

// showUntagged reports whether images without a name are listed: with
// --all, or when the filter asks for dangling ones.
func (f *imageFilter) showUntagged(all bool) bool {
	if f.dangling != nil {
		return *f.dangling
	}
	return all && len(f.refs) == 0
}

// keepRecord applies the filters that look at the image as a whole:
// dangling and label.
func (f *imageFilter) keepRecord(ctx context.Context, st *layers.Store, r layers.ImageRecord) (bool, error) {
	if f.dangling != nil && *f.dangling != (len(r.Names) == 0) {
		return false, nil
	}
	if len(f.labels) == 0 {
		return true, nil
	}
	labels, err := recordLabels(ctx, st, r)
	if err != nil {
		return false, err
	}
	for _, set := range labels {
		if matchLabels(set, f.labels) {
			return true, nil
		}
	}
	return false, nil
}

// keepName applies the reference filter to one name of an image ("" for
// an untagged image, which only an empty reference filter keeps).
func (f *imageFilter) keepName(name string) bool {
	if len(f.refs) == 0 {
		return true
	}
	if name == "" {
		return false
	}
	for _, p := range f.refs {
		if matchReference(p, name) {
			return true
		}
	}
	return false
}

// matchReference matches a stored name ("localhost/app:1",
// "docker.io/library/alpine:3") against a docker-style reference pattern:
// the full or the familiar name ("app:1", "alpine:3"), and, when the
// pattern names no tag or digest, the repository without its tag.
func matchReference(pattern, name string) bool {
	repo, _ := splitName(name)
	cands := []string{name, familiar(name)}
	if !strings.ContainsAny(pattern[strings.LastIndex(pattern, "/")+1:], ":@") {
		cands = append(cands, repo, familiar(repo))
	}
	for _, c := range cands {
		if ok, _ := path.Match(pattern, c); ok {
			return true
		}
	}
	return false
}

// familiar is a stored name as users write it: without localhost/,
// docker.io/ or docker.io/library/.
func familiar(name string) string {
	for _, p := range []string{"docker.io/library/", "docker.io/", "localhost/"} {
		if rest, ok := strings.CutPrefix(name, p); ok {
			return rest
		}
	}
	return name
}

// matchLabels reports whether labels has every key (and value) of want.
func matchLabels(labels map[string]string, want [][2]string) bool {
	for _, kv := range want {
		v, ok := labels[kv[0]]
		if !ok || (kv[1] != anyValue && v != kv[1]) {
			return false
		}
	}
	return true
}

// recordLabels returns the config labels of an image, or of each stored
// image of an index.
func recordLabels(ctx context.Context, st *layers.Store, r layers.ImageRecord) ([]map[string]string, error) {
	configLabels := func(img v1.Image) (map[string]string, error) {
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		return cf.Config.Labels, nil
	}
	if r.MediaType.IsIndex() {
		idx, err := st.ImageIndex(ctx, r.Digest)
		if err != nil {
			return nil, err
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, err
		}
		var out []map[string]string
		for _, d := range im.Manifests {
			if !d.MediaType.IsImage() {
				continue
			}
			img, err := idx.Image(d.Digest)
			if err != nil {
				continue // a platform not pulled
			}
			if l, err := configLabels(img); err == nil {
				out = append(out, l)
			}
		}
		return out, nil
	}
	img, err := st.Image(ctx, r.Digest)
	if err != nil {
		return nil, err
	}
	l, err := configLabels(img)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", r.Digest, err)
	}
	return []map[string]string{l}, nil
}

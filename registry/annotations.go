package registry

import (
	"fmt"
	"maps"
	"regexp"
	"strings"
	"unicode"

	"github.com/containerd/platforms"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// AnnotationType is the part of a pushed image an annotation goes on, as
// buildx's --annotation names them.
type AnnotationType string

// The annotation types.
const (
	// AnnotationManifest annotates image manifests (the default).
	AnnotationManifest AnnotationType = "manifest"
	// AnnotationManifestDescriptor annotates the descriptors of the image
	// manifests in an index.
	AnnotationManifestDescriptor AnnotationType = "manifest-descriptor"
	// AnnotationIndex annotates the image index.
	AnnotationIndex AnnotationType = "index"
	// AnnotationIndexDescriptor annotates the index's own descriptor,
	// which no registry stores: it is reported in the build's metadata.
	AnnotationIndexDescriptor AnnotationType = "index-descriptor"
)

// Annotation is one --annotation (or --output annotation.KEY=VALUE).
type Annotation struct {
	Type AnnotationType
	// Platform limits a manifest or manifest-descriptor annotation to the
	// image of that platform (normalized as containerd does); nil means
	// every image.
	Platform *v1.Platform
	Key      string
	Value    string
}

// annotationTypeRE is one type of an --annotation prefix, with an
// optional platform in brackets.
var annotationTypeRE = regexp.MustCompile(`^([a-z-]+)(?:\[([A-Za-z0-9_/-]+)\])?$`)

// ParseAnnotation parses an --annotation value as buildx does:
// "[TYPE[,TYPE...]:]KEY=VALUE", where TYPE is manifest (the default),
// manifest-descriptor, index or index-descriptor, each optionally followed
// by a platform in brackets ("manifest[linux/amd64]"). It returns one
// annotation per type.
func ParseAnnotation(s string) ([]Annotation, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return nil, fmt.Errorf("annotation %q: want [TYPE:]KEY=VALUE", s)
	}
	typesPart, key, typed := strings.Cut(k, ":")
	if !typed {
		key, typesPart = typesPart, ""
	}
	if err := checkAnnotationKey(key); err != nil {
		return nil, fmt.Errorf("annotation %q: %w", s, err)
	}
	if !typed {
		return []Annotation{{Type: AnnotationManifest, Key: key, Value: v}}, nil
	}
	var out []Annotation
	for _, tp := range strings.Split(typesPart, ",") {
		g := annotationTypeRE.FindStringSubmatch(tp)
		if g == nil {
			return nil, fmt.Errorf("annotation %q: invalid type %q: want manifest, manifest-descriptor, index or index-descriptor, optionally with a platform in brackets (manifest[linux/amd64])", s, tp)
		}
		a, err := newAnnotation(g[1], g[2], key, v)
		if err != nil {
			return nil, fmt.Errorf("annotation %q: %w", s, err)
		}
		out = append(out, a)
	}
	return out, nil
}

// annotationAttrRE is an --output attribute that sets an annotation:
// annotation.KEY, annotation-TYPE.KEY, annotation-TYPE[PLATFORM].KEY.
var annotationAttrRE = regexp.MustCompile(`^annotation(?:-([a-z-]+))?(?:\[([A-Za-z0-9_/-]+)\])?\.(.*)$`)

// ParseAnnotationAttr parses an --output attribute as BuildKit's image
// exporter does: "annotation.KEY", "annotation-TYPE.KEY" and
// "annotation-TYPE[PLATFORM].KEY" (TYPE as for ParseAnnotation). ok is
// false when attr is not an annotation attribute.
func ParseAnnotationAttr(attr, value string) (a Annotation, ok bool, err error) {
	g := annotationAttrRE.FindStringSubmatch(attr)
	if g == nil {
		return Annotation{}, false, nil
	}
	if err := checkAnnotationKey(g[3]); err != nil {
		return Annotation{}, true, fmt.Errorf("%s: %w", attr, err)
	}
	a, err = newAnnotation(g[1], g[2], g[3], value)
	if err != nil {
		return Annotation{}, true, fmt.Errorf("%s: %w", attr, err)
	}
	return a, true, nil
}

func checkAnnotationKey(key string) error {
	if key == "" {
		return fmt.Errorf("empty key")
	}
	if strings.IndexFunc(key, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return fmt.Errorf("key %q holds white space or a control character", key)
	}
	return nil
}

func newAnnotation(typ, platform, key, value string) (Annotation, error) {
	a := Annotation{Type: AnnotationType(typ), Key: key, Value: value}
	switch a.Type {
	case "":
		a.Type = AnnotationManifest
	case AnnotationManifest, AnnotationManifestDescriptor, AnnotationIndex, AnnotationIndexDescriptor:
	default:
		return Annotation{}, fmt.Errorf("unknown annotation type %q (want manifest, manifest-descriptor, index or index-descriptor)", typ)
	}
	if platform != "" && (a.Type == AnnotationManifest || a.Type == AnnotationManifestDescriptor) {
		// An index has no platform: BuildKit drops one given there.
		p, err := platforms.Parse(platform)
		if err != nil {
			return Annotation{}, fmt.Errorf("platform %q: %w", platform, err)
		}
		p = platforms.Normalize(p)
		a.Platform = &v1.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}
	}
	return a, nil
}

// Applies reports whether a applies to an image of platform p.
func (a Annotation) Applies(p v1.Platform) bool {
	if a.Platform == nil {
		return true
	}
	n := platforms.Normalize(toSpec(p))
	return a.Platform.OS == n.OS && a.Platform.Architecture == n.Architecture && a.Platform.Variant == n.Variant
}

// SelectAnnotations returns the annotations of type t in anns, as a map;
// for the manifest types, those that apply to platform p (nil: only those
// without a platform). A later annotation of a key wins. nil when none.
func SelectAnnotations(anns []Annotation, t AnnotationType, p *v1.Platform) map[string]string {
	var out map[string]string
	for _, a := range anns {
		if a.Type != t || (a.Platform != nil && (p == nil || !a.Applies(*p))) {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[a.Key] = a.Value
	}
	return out
}

// MergeAnnotations returns base with over's keys set (over wins); nil
// when both are empty.
func MergeAnnotations(base, over map[string]string) map[string]string {
	if len(base)+len(over) == 0 {
		return nil
	}
	out := maps.Clone(base)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, over)
	return out
}

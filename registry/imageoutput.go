package registry

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ImageOutput is what an --output type=image (or type=registry) says
// beyond its type, with the keys BuildKit's image exporter takes.
type ImageOutput struct {
	// Names are the references of name= (buildx allows several,
	// comma-separated, in a quoted field: "name=a:1,b:1"); empty means the
	// build's -t names.
	Names []string
	// Push pushes the result to every name (push=true; type=registry sets
	// it unless push=false is given).
	Push bool
	// PushByDigest pushes without a tag (push-by-digest=true): each name's
	// repository gets the manifest (or index) by digest only, and the names
	// do not tag the stored result.
	PushByDigest bool
	// NameCanonical also names the stored result NAME@DIGEST for each name
	// (name-canonical=true).
	NameCanonical bool
	// Insecure reaches the names' registries over plain HTTP
	// (registry.insecure=true).
	Insecure bool
	// OCIMediaTypes, when not nil, chooses OCI (true) or docker (false)
	// media types (oci-mediatypes=).
	OCIMediaTypes *bool
}

// imageKeyList names the keys only type=image and type=registry take.
const imageKeyList = "push, push-by-digest, name-canonical, registry.insecure, oci-mediatypes and annotation.KEY"

// setImageKey sets the key k of an image output, or an annotation
// attribute (valid for every type; checkNotImage refuses it where it has
// no meaning). handled is false for keys it does not know.
func (o *Output) setImageKey(k, v string) (handled bool, err error) {
	if a, ok, err := ParseAnnotationAttr(k, v); ok {
		if err != nil {
			return true, err
		}
		o.Annotations = append(o.Annotations, a)
		return true, nil
	}
	boolean := func(dst *bool) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not a boolean", v)
		}
		*dst = b
		return nil
	}
	switch k {
	case "push":
		return true, boolean(&o.Push)
	case "push-by-digest":
		return true, boolean(&o.PushByDigest)
	case "name-canonical":
		return true, boolean(&o.NameCanonical)
	case "registry.insecure":
		return true, boolean(&o.Insecure)
	case "oci-mediatypes":
		var b bool
		if err := boolean(&b); err != nil {
			return true, err
		}
		o.OCIMediaTypes = &b
		return true, nil
	}
	return false, nil
}

// finishImage completes a type=image or type=registry output: the names
// of name=, and push for type=registry.
func (o *Output) finishImage(seen map[string]bool) error {
	if o.Type == OutputRegistry {
		o.Type = OutputImage
		if !seen["push"] {
			o.Push = true
		}
	}
	if o.Name != "" {
		for _, n := range strings.Split(o.Name, ",") {
			n = strings.TrimSpace(n)
			if n == "" {
				return fmt.Errorf("key \"name\": empty name in %q", o.Name)
			}
			o.Names = append(o.Names, n)
		}
	}
	if o.PushByDigest && !o.Push {
		return errors.New("key \"push-by-digest\": needs push=true (or type=registry)")
	}
	return nil
}

// checkNotImage refuses the keys of type=image on other types, and
// annotations on outputs that hold no manifest.
func (o *Output) checkNotImage(seen map[string]bool) error {
	for _, k := range []string{"push", "push-by-digest", "name-canonical", "registry.insecure", "oci-mediatypes"} {
		if seen[k] {
			return fmt.Errorf("key %q: only for type=image or type=registry", k)
		}
	}
	if len(o.Annotations) > 0 && (o.Type == OutputLocal || o.Type == OutputTar) {
		return fmt.Errorf("annotations are not valid for type=%s, which writes files, not an image", o.Type)
	}
	return nil
}

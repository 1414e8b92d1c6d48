package registry_test

import (
	"reflect"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/registry"
)

func TestParseAnnotation(t *testing.T) {
	amd64 := &v1.Platform{OS: "linux", Architecture: "amd64"}
	tests := []struct {
		in      string
		want    []registry.Annotation
		wantErr string
	}{
		{in: "foo=bar", want: []registry.Annotation{{Type: registry.AnnotationManifest, Key: "foo", Value: "bar"}}},
		{in: "org.opencontainers.image.url=https://x.example/a=b", want: []registry.Annotation{{Type: registry.AnnotationManifest, Key: "org.opencontainers.image.url", Value: "https://x.example/a=b"}}},
		{in: "index:foo=", want: []registry.Annotation{{Type: registry.AnnotationIndex, Key: "foo"}}},
		{in: "index,manifest,manifest-descriptor:foo=bar", want: []registry.Annotation{
			{Type: registry.AnnotationIndex, Key: "foo", Value: "bar"},
			{Type: registry.AnnotationManifest, Key: "foo", Value: "bar"},
			{Type: registry.AnnotationManifestDescriptor, Key: "foo", Value: "bar"},
		}},
		{in: "manifest[linux/amd64]:foo=bar", want: []registry.Annotation{{Type: registry.AnnotationManifest, Platform: amd64, Key: "foo", Value: "bar"}}},
		{in: "manifest-descriptor[linux/x86_64]:foo=bar", want: []registry.Annotation{{Type: registry.AnnotationManifestDescriptor, Platform: amd64, Key: "foo", Value: "bar"}}},
		{in: "index[linux/amd64]:foo=bar", want: []registry.Annotation{{Type: registry.AnnotationIndex, Key: "foo", Value: "bar"}}},
		{in: "index-descriptor:foo=bar", want: []registry.Annotation{{Type: registry.AnnotationIndexDescriptor, Key: "foo", Value: "bar"}}},
		{in: "foo", wantErr: "KEY=VALUE"},
		{in: "=bar", wantErr: "empty key"},
		{in: "manifest:=bar", wantErr: "empty key"},
		{in: "layer:foo=bar", wantErr: `unknown annotation type "layer"`},
		{in: ":foo=bar", wantErr: `invalid type ""`},
		{in: "manifest[linux/*]:foo=bar", wantErr: "invalid type"},
		{in: "manifest[linux/bogus!]:foo=bar", wantErr: "invalid type"},
		{in: "manifest:fo o=bar", wantErr: "white space"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := registry.ParseAnnotation(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), tc.in) {
					t.Fatalf("ParseAnnotation(%q) = %+v, %v; want an error naming it and containing %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("ParseAnnotation(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestSelectAnnotations(t *testing.T) {
	var anns []registry.Annotation
	for _, s := range []string{"a=1", "manifest[linux/arm64]:b=2", "manifest[linux/amd64]:c=3", "index:d=4", "manifest[linux/arm64/v8]:a=5"} {
		as, err := registry.ParseAnnotation(s)
		if err != nil {
			t.Fatal(err)
		}
		anns = append(anns, as...)
	}
	arm := &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	if got := registry.SelectAnnotations(anns, registry.AnnotationManifest, arm); !reflect.DeepEqual(got, map[string]string{"a": "5", "b": "2"}) {
		t.Errorf("arm64 manifest annotations %v", got)
	}
	if got := registry.SelectAnnotations(anns, registry.AnnotationManifest, nil); !reflect.DeepEqual(got, map[string]string{"a": "1"}) {
		t.Errorf("unqualified manifest annotations %v", got)
	}
	if got := registry.SelectAnnotations(anns, registry.AnnotationIndex, nil); !reflect.DeepEqual(got, map[string]string{"d": "4"}) {
		t.Errorf("index annotations %v", got)
	}
	if got := registry.SelectAnnotations(anns, registry.AnnotationIndexDescriptor, nil); got != nil {
		t.Errorf("index-descriptor annotations %v, want nil", got)
	}
}

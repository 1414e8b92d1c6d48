package registry_test

import (
	"testing"

	"github.com/ibuild/ibuild/registry"
)

func TestCanonicalName(t *testing.T) {
	for _, tc := range []struct{ ref, want, scheme string }{
		{"alpine", "docker.io/library/alpine:latest", "https"},
		{"alpine:3", "docker.io/library/alpine:3", "https"},
		{"docker.io/team/app", "docker.io/team/app:latest", "https"},
		{"127.0.0.1:5000/app:1", "127.0.0.1:5000/app:1", "http"},
		{"localhost:5000/a/b:2", "localhost:5000/a/b:2", "http"},
		{"reg.example:5000/x:1", "reg.example:5000/x:1", "http"}, // in the insecure list
		{"reg.io/a/b@sha256:" + sixtyFour, "reg.io/a/b@sha256:" + sixtyFour, "https"},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			r, err := registry.ParseReference(tc.ref, []string{"reg.example:5000"})
			if err != nil {
				t.Fatal(err)
			}
			if got := registry.CanonicalName(r); got != tc.want {
				t.Errorf("CanonicalName = %q, want %q", got, tc.want)
			}
			if got := r.Context().Registry.Scheme(); got != tc.scheme {
				t.Errorf("scheme = %q, want %q", got, tc.scheme)
			}
		})
	}
	if _, err := registry.ParseReference("Bad Name", nil); err == nil {
		t.Error("a bad reference parsed")
	}
}

func TestParsePullPolicy(t *testing.T) {
	for in, want := range map[string]registry.PullPolicy{"": "missing", "always": "always", "true": "always", "false": "missing", "never": "never", "Missing": "missing"} {
		if got, err := registry.ParsePullPolicy(in); err != nil || got != want {
			t.Errorf("ParsePullPolicy(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := registry.ParsePullPolicy("sometimes"); err == nil {
		t.Error("sometimes accepted")
	}
}

const sixtyFour = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

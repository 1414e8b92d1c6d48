package builder

import (
	"errors"
	"testing"
)

func TestClosestStage(t *testing.T) {
	b := &build{byName: map[string]int{"build": 0, "test": 1, "runtime-deps": 2}}
	tests := []struct{ ref, want string }{
		{"biuld", "build"},
		{"BUILD2", "build"},
		{"tset", "test"},
		{"runtime-dep", "runtime-deps"},
		{"alpine", ""},            // nothing close
		{"builder:1", ""},         // a tag: an image
		{"reg.io/build", ""},      // a registry: an image
		{"build@sha256:0abc", ""}, // a digest: an image
		{"golang", ""},
	}
	for _, tc := range tests {
		if got := b.closestStage(tc.ref); got != tc.want {
			t.Errorf("closestStage(%q) = %q, want %q", tc.ref, got, tc.want)
		}
	}
	cause := errors.New("pull failed")
	err := b.stageHint("biuld", cause)
	var ns *NoStageError
	if !errors.As(err, &ns) || ns.Closest != "build" || !errors.Is(err, cause) {
		t.Fatalf("stageHint: %v", err)
	}
	if err := b.stageHint("alpine", cause); err != cause {
		t.Fatalf("stageHint of an image name: %v", err)
	}
}

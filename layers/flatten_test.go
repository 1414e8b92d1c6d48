package layers

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestFlattenMatchesExtract checks that Flatten gives the tree that
// extracting the layers one by one (ApplyWhiteouts) gives.
func TestFlattenMatchesExtract(t *testing.T) {
	cases := []struct {
		name   string
		layers [][]byte
	}{
		{
			name: "directory replaced by a file, then by a directory",
			layers: [][]byte{
				buildTar(t, dirEnt("d/", 0o755), regEnt("d/old", "old", 0o644)),
				buildTar(t, regEnt("d", "a file", 0o644)),
				buildTar(t, dirEnt("d/", 0o755), regEnt("d/new", "new", 0o644)),
			},
		},
		{
			name: "directory replaced by a symlink, then by a directory",
			layers: [][]byte{
				buildTar(t, dirEnt("lib/", 0o755), regEnt("lib/old", "old", 0o644)),
				buildTar(t, symEnt("lib", "usr/lib")),
				buildTar(t, dirEnt("lib/", 0o755), regEnt("lib/new", "new", 0o644)),
			},
		},
		{
			name: "file replaced twice",
			layers: [][]byte{
				buildTar(t, regEnt("f", "1", 0o644)),
				buildTar(t, regEnt("f", "2", 0o600)),
				buildTar(t, regEnt("f", "3", 0o640)),
			},
		},
	}
	ctx := context.Background()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := openTestStore(t)
			var ls []v1.Layer
			for _, b := range tc.layers {
				d, err := s.CommitTar(ctx, bytes.NewReader(b), CommitOptions{})
				mustDo(t, err)
				ls = append(ls, s.Layer(d))
			}
			want := filepath.Join(t.TempDir(), "want")
			extractAll(t, want, ApplyWhiteouts, tc.layers...)

			var buf bytes.Buffer
			mustDo(t, Flatten(ctx, &buf, ls))
			got := filepath.Join(t.TempDir(), "got")
			mustDo(t, os.Mkdir(got, 0o755))
			mustDo(t, Extract(ctx, &buf, got, ExtractOptions{Source: "flattened"}))
			if diff := diffTrees(describeTree(t, got), describeTree(t, want)); diff != "" {
				t.Errorf("Flatten differs from extracting the layers in order:\n%s", diff)
			}
		})
	}
}

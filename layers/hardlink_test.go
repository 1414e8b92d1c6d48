package layers_test

import (
	"archive/tar"
	"context"
	"strings"
	"testing"

	"github.com/ibuild/ibuild/layers"
)

// TestHostileHardLinkErrorsNameEntry checks that a layer whose hard link
// points at nothing, out of the root, through a symlink or at a directory
// fails to unpack, with every snapshotter, with an error that names the
// layer, the tar entry and the link's target (containers/storage's own
// message names none of them).
func TestHostileHardLinkErrorsNameEntry(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name   string
		files  []fixtureFile
		target string
	}{
		{"missing target", []fixtureFile{{Name: "usr/", Typ: tar.TypeDir}, {Name: "usr/evil-link", Typ: tar.TypeLink, Link: "no/such/file"}}, "no/such/file"},
		{"climbs out", []fixtureFile{{Name: "usr/", Typ: tar.TypeDir}, {Name: "usr/evil-link", Typ: tar.TypeLink, Link: "../../../../etc/shadow"}}, "../../../../etc/shadow"},
		{"absolute", []fixtureFile{{Name: "usr/", Typ: tar.TypeDir}, {Name: "usr/evil-link", Typ: tar.TypeLink, Link: "/etc/shadow"}}, "/etc/shadow"},
		{"through a symlink", []fixtureFile{{Name: "s", Typ: tar.TypeSymlink, Link: "/etc"}, {Name: "usr/", Typ: tar.TypeDir}, {Name: "usr/evil-link", Typ: tar.TypeLink, Link: "s/shadow"}}, "s/shadow"},
		{"a directory", []fixtureFile{{Name: "d/", Typ: tar.TypeDir}, {Name: "usr/", Typ: tar.TypeDir}, {Name: "usr/evil-link", Typ: tar.TypeLink, Link: "d"}}, "d"},
	}
	for _, snap := range snapshotters {
		t.Run(snap, func(t *testing.T) {
			needRootFor(t, snap)
			s := fixtureStore(t, layers.WithSnapshotter(snap))
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					l := fixtureLayer(t, s, tc.files)
					d := digestOf(t, l)
					_, err := s.Snapshots(ctx, fixtureImage(t, "amd64", l), nil)
					if err == nil {
						t.Fatal("a hostile hard link was unpacked")
					}
					for _, want := range []string{d.String(), "usr/evil-link", tc.target} {
						if !strings.Contains(err.Error(), want) {
							t.Errorf("error %q does not name %s", err, want)
						}
					}
				})
			}
		})
	}
}

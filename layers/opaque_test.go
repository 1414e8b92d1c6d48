package layers_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/ibuild/ibuild/layers"
)

// opaqueRootLayers are three layers of which the second has an opaque
// whiteout at its root: of the first layer nothing may show.
func opaqueRootLayers(t testing.TB, s *layers.Store) []v1.Layer {
	t.Helper()
	return []v1.Layer{
		fixtureLayer(t, s, []fixtureFile{{Name: "a", Body: "lower"}, {Name: "d/", Typ: tar.TypeDir}, {Name: "d/x", Body: "lower"}}),
		fixtureLayer(t, s, []fixtureFile{{Name: ".wh..wh..opq"}, {Name: "c", Body: "c"}, {Name: "d/", Typ: tar.TypeDir}, {Name: "d/y", Body: "y"}}),
		fixtureLayer(t, s, []fixtureFile{{Name: "e", Body: "e"}}),
	}
}

// opaqueRootWant is the tree of opaqueRootLayers, by the OCI image spec.
var opaqueRootWant = []string{"/c", "/d", "/d/y", "/e"}

func wantTree(t *testing.T, view string, listing map[string]string) {
	t.Helper()
	got := slices.Sorted(maps.Keys(listing))
	if !slices.Equal(got, opaqueRootWant) {
		t.Errorf("%s shows %q, want %q: a .wh..wh..opq at a layer's root hides every lower layer's files", view, got, opaqueRootWant)
	}
}

// mountListing mounts a read-only overlay of dirs (bottom first), as RUN
// and ibuild mount do, and lists it.
func mountListing(t *testing.T, dirs []string) map[string]string {
	t.Helper()
	lowers := slices.Clone(dirs)
	slices.Reverse(lowers)
	if len(lowers) == 1 { // an overlay without an upper directory needs two lowers
		lowers = append(lowers, t.TempDir())
	}
	mp := t.TempDir()
	if err := unix.Mount("overlay", mp, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(lowers, ":")); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	defer unix.Unmount(mp, unix.MNT_DETACH)
	return dirListing(t, mp)
}

// TestOpaqueRootLayer checks that an opaque whiteout at the root of a layer
// hides every lower layer's files in every view of the image: the merged
// view of each snapshotter's snapshots, an overlay mount of them (what
// RUN sees), Flatten (--output type=local and tar), and Squash, of the
// whole stack and of the layers on top of the first.
func TestOpaqueRootLayer(t *testing.T) {
	ctx := context.Background()
	for _, name := range snapshotters {
		t.Run(name, func(t *testing.T) {
			needRootFor(t, name)
			s := fixtureStore(t, layers.WithSnapshotter(name))
			img := fixtureImage(t, "amd64", opaqueRootLayers(t, s)...)
			dirs, err := s.Snapshots(ctx, img, nil)
			if err != nil {
				t.Fatal(err)
			}
			wantTree(t, "the merged view of the snapshots", rootFSListing(t, layers.NewRootFS(dirs)))
			checkRootFS(t, img, dirs)
			if name != layers.SnapshotterNative { // the kernel reads no .wh. files
				wantTree(t, "an overlay mount of the snapshots", mountListing(t, dirs))
			}
		})
	}
	s := fixtureStore(t, layers.WithSnapshotter(layers.SnapshotterNative))
	ls := opaqueRootLayers(t, s)
	extractInto := func(t *testing.T, ls ...v1.Layer) map[string]string {
		t.Helper()
		dir := filepath.Join(t.TempDir(), "tree")
		for i, l := range ls {
			rc, err := l.Uncompressed()
			if err != nil {
				t.Fatal(err)
			}
			err = layers.Extract(ctx, rc, dir, layers.ExtractOptions{Source: fmt.Sprint("layer ", i+1)})
			rc.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
		return dirListing(t, dir)
	}
	t.Run("extract", func(t *testing.T) {
		wantTree(t, "the layers extracted in order", extractInto(t, ls...))
	})
	t.Run("flatten", func(t *testing.T) {
		var buf bytes.Buffer
		if err := layers.Flatten(ctx, &buf, ls); err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(t.TempDir(), "flat")
		if err := layers.Extract(ctx, &buf, dir, layers.ExtractOptions{Source: "flattened"}); err != nil {
			t.Fatal(err)
		}
		wantTree(t, "Flatten", dirListing(t, dir))
	})
	t.Run("squash all", func(t *testing.T) {
		d, err := s.Squash(ctx, ls, layers.SquashOptions{All: true})
		if err != nil {
			t.Fatal(err)
		}
		wantTree(t, "the squashed image", extractInto(t, s.Blobs().Layer(d)))
	})
	t.Run("squash on top", func(t *testing.T) {
		d, err := s.Squash(ctx, ls[1:], layers.SquashOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sq := s.Blobs().Layer(d)
		wantTree(t, "the first layer under the squash of the others", extractInto(t, ls[0], sq))
		img := fixtureImage(t, "amd64", ls[0], sq)
		dirs, err := s.Snapshots(ctx, img, nil)
		if err != nil {
			t.Fatal(err)
		}
		wantTree(t, "the snapshots of the squashed image", rootFSListing(t, layers.NewRootFS(dirs)))
	})
	if os.Geteuid() == 0 {
		// The overlay snapshotter again, on an image whose opaque layer is
		// the top one.
		t.Run("overlay top", func(t *testing.T) {
			s := fixtureStore(t, layers.WithSnapshotter(layers.SnapshotterOverlay))
			img := fixtureImage(t, "amd64", opaqueRootLayers(t, s)[:2]...)
			dirs, err := s.Snapshots(ctx, img, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := slices.Sorted(maps.Keys(mountListing(t, dirs))); !slices.Equal(got, []string{"/c", "/d", "/d/y"}) {
				t.Errorf("an overlay mount shows %q, want [/c /d /d/y]", got)
			}
		})
	}
}

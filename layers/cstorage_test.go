package layers_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/layers/layertest"
)

// snapshotters are the backends every test below runs on. overlay and vfs
// need root (containers/storage without a user namespace).
var snapshotters = []string{layers.SnapshotterOverlay, layers.SnapshotterVFS, layers.SnapshotterNative}

func needRootFor(t *testing.T, snapshotter string) {
	t.Helper()
	if snapshotter != layers.SnapshotterNative && os.Geteuid() != 0 {
		layertest.SkipOrFail(t, "snapshotter %s needs root", snapshotter)
	}
}

// whiteoutLayers are three layers exercising what a merged view must get
// right: a deleted file, a directory deleted and recreated (opaque), and a
// file replaced by a directory.
func whiteoutLayers(t testing.TB, s *layers.Store) []v1.Layer {
	t.Helper()
	return []v1.Layer{
		fixtureLayer(t, s, []fixtureFile{
			{Name: "etc/", Typ: tar.TypeDir}, {Name: "etc/keep", Body: "keep"}, {Name: "etc/gone", Body: "gone"},
			{Name: "opq/", Typ: tar.TypeDir}, {Name: "opq/old", Body: "old"}, {Name: "opq/sub/", Typ: tar.TypeDir}, {Name: "opq/sub/deep", Body: "deep"},
			{Name: "swap", Body: "I was a file"},
			{Name: "lnk", Typ: tar.TypeSymlink, Link: "/etc/keep"},
		}),
		fixtureLayer(t, s, []fixtureFile{
			{Name: "etc/", Typ: tar.TypeDir}, {Name: "etc/.wh.gone"},
			{Name: "opq/", Typ: tar.TypeDir}, {Name: "opq/.wh..wh..opq"}, {Name: "opq/new", Body: "new"},
		}),
		fixtureLayer(t, s, []fixtureFile{
			{Name: "swap/", Typ: tar.TypeDir}, {Name: "swap/inside", Body: "now a dir"},
			{Name: "etc/", Typ: tar.TypeDir}, {Name: "etc/added", Body: "added"},
		}),
	}
}

// flattened extracts img's layers into one directory, applying whiteouts:
// the image's root filesystem by an independent route.
func flattened(t testing.TB, img v1.Image) string {
	t.Helper()
	dir := t.TempDir()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range ls {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		err = layers.Extract(context.Background(), rc, dir, layers.ExtractOptions{Whiteouts: layers.ApplyWhiteouts, Source: fmt.Sprint("layer ", i)})
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// dirListing describes every path under root: type, permissions, and the
// content of files or the target of symlinks.
func dirListing(t testing.TB, root string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := e.Info()
		if err != nil {
			return err
		}
		m["/"+rel] = describe(t, fi, func() ([]byte, error) { return os.ReadFile(p) }, func() (string, error) { return os.Readlink(p) })
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// rootFSListing is dirListing for a merged view.
func rootFSListing(t testing.TB, r *layers.RootFS) map[string]string {
	t.Helper()
	m := map[string]string{}
	var walk func(dir string)
	walk = func(dir string) {
		ents, err := r.ReadDir(dir)
		if err != nil {
			t.Fatalf("ReadDir(%s): %v", dir, err)
		}
		for _, e := range ents {
			p := path.Join(dir, e.Name())
			fi, real, err := r.Lstat(p)
			if err != nil {
				t.Fatalf("Lstat(%s): %v", p, err)
			}
			m[p] = describe(t, fi, func() ([]byte, error) { return r.ReadFile(p) }, func() (string, error) { return os.Readlink(real) })
			if fi.IsDir() {
				walk(p)
			}
		}
	}
	walk("/")
	return m
}

func describe(t testing.TB, fi fs.FileInfo, read func() ([]byte, error), link func() (string, error)) string {
	t.Helper()
	d := fi.Mode().String()
	switch {
	case fi.Mode().IsRegular():
		b, err := read()
		if err != nil {
			t.Fatal(err)
		}
		d += " " + string(b)
	case fi.Mode()&fs.ModeSymlink != 0:
		l, err := link()
		if err != nil {
			t.Fatal(err)
		}
		d += " -> " + l
	}
	return d
}

func lstat(t testing.TB, p string) fs.FileInfo {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

func diffListings(want, got map[string]string) string {
	var out []string
	for p, w := range want {
		if g, ok := got[p]; !ok {
			out = append(out, fmt.Sprintf("%s: missing, want %q", p, w))
		} else if g != w {
			out = append(out, fmt.Sprintf("%s: got %q, want %q", p, g, w))
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			out = append(out, fmt.Sprintf("%s: unexpected %q", p, g))
		}
	}
	slices.Sort(out)
	return fmt.Sprint(out)
}

// checkRootFS fails unless the merged view of dirs is img's flattened root
// filesystem.
func checkRootFS(t testing.TB, img v1.Image, dirs []string) {
	t.Helper()
	flat := flattened(t, img)
	want := dirListing(t, flat)
	want["/"] = describe(t, lstat(t, flat), nil, nil)
	r := layers.NewRootFS(dirs)
	got := rootFSListing(t, r)
	rootFI, _, err := r.Lstat("/")
	if err != nil {
		t.Fatal(err)
	}
	got["/"] = describe(t, rootFI, nil, nil)
	if len(want) == 0 || !maps.Equal(want, got) {
		t.Errorf("merged view differs from the flattened image: %s", diffListings(want, got))
	}
}

func chainHexes(t testing.TB, img v1.Image) []string {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range layers.ChainIDs(cf.RootFS.DiffIDs) {
		out = append(out, c.Hex)
	}
	return out
}

func snapshotHexes(t testing.TB, s *layers.Store) []string {
	t.Helper()
	ids, err := s.SnapshotIDs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, h := range ids {
		out = append(out, h.Hex)
	}
	return out
}

func TestSnapshottersMergedView(t *testing.T) {
	for _, name := range snapshotters {
		t.Run(name, func(t *testing.T) {
			needRootFor(t, name)
			ctx := context.Background()
			s := fixtureStore(t, layers.WithSnapshotter(name))
			img := fixtureImage(t, "amd64", whiteoutLayers(t, s)...)
			dirs, err := s.Snapshots(ctx, img, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Snapshotter(); got != name {
				t.Errorf("Snapshotter() = %q, want %q", got, name)
			}
			checkRootFS(t, img, dirs)
			// A second call reuses what the first one stored.
			again, err := s.Snapshots(ctx, img, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(again, dirs) {
				t.Errorf("second Snapshots = %v, first %v", again, dirs)
			}
		})
	}
}

func TestSnapshottersShareLayers(t *testing.T) {
	for _, name := range snapshotters {
		t.Run(name, func(t *testing.T) {
			needRootFor(t, name)
			ctx := context.Background()
			s := fixtureStore(t, layers.WithSnapshotter(name))
			ls := whiteoutLayers(t, s)
			imgA := fixtureImage(t, "amd64", ls[0], ls[1])
			imgB := fixtureImage(t, "amd64", ls[0], ls[2])
			for _, img := range []v1.Image{imgA, imgB} {
				dirs, err := s.Snapshots(ctx, img, nil)
				if err != nil {
					t.Fatal(err)
				}
				checkRootFS(t, img, dirs)
			}
			want := append(chainHexes(t, imgA), chainHexes(t, imgB)[1:]...)
			slices.Sort(want)
			if got := snapshotHexes(t, s); !slices.Equal(got, want) {
				t.Errorf("stored snapshots %v, want %v (the shared layer once)", got, want)
			}
		})
	}
}

func TestSnapshottersConcurrentProcesses(t *testing.T) {
	for _, name := range snapshotters {
		t.Run(name, func(t *testing.T) {
			needRootFor(t, name)
			ctx := context.Background()
			s := fixtureStore(t, layers.WithSnapshotter(name))
			img := fixtureImage(t, "amd64", whiteoutLayers(t, s)...)
			desc, err := s.WriteImage(ctx, img)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Tag(ctx, "concurrent:1", desc); err != nil {
				t.Fatal(err)
			}
			got := runChildren[[]string](t, "TestHelperProcessSnapshots", 2, func(int) childSpec {
				return childSpec{Root: s.Root(), Ref: "concurrent:1", Snapshotter: name}
			})
			for i, dirs := range got {
				if !slices.Equal(dirs, got[0]) {
					t.Errorf("child %d got %v, child 0 got %v", i, dirs, got[0])
				}
			}
			checkRootFS(t, img, got[0])
			want := chainHexes(t, img)
			slices.Sort(want)
			if got := snapshotHexes(t, s); !slices.Equal(got, want) {
				t.Errorf("stored snapshots %v, want %v", got, want)
			}
		})
	}
}

func TestSnapshottersPruneAndRemove(t *testing.T) {
	for _, name := range snapshotters {
		t.Run(name, func(t *testing.T) {
			needRootFor(t, name)
			ctx := context.Background()
			s := fixtureStore(t, layers.WithSnapshotter(name))
			ls := whiteoutLayers(t, s)
			imgA := fixtureImage(t, "amd64", ls[0], ls[1])
			imgB := fixtureImage(t, "amd64", ls[0], ls[2])
			for i, img := range []v1.Image{imgA, imgB} {
				desc, err := s.WriteImage(ctx, img)
				if err != nil {
					t.Fatal(err)
				}
				if err := s.Tag(ctx, fmt.Sprintf("img%d:1", i), desc); err != nil {
					t.Fatal(err)
				}
				if _, err := s.Snapshots(ctx, img, nil); err != nil {
					t.Fatal(err)
				}
			}
			chainsA, chainsB := chainHexes(t, imgA), chainHexes(t, imgB)

			// Untagged A: prune takes its top layer, keeps the shared one.
			if err := s.Untag(ctx, "img0:1"); err != nil {
				t.Fatal(err)
			}
			old, _ := filepath.Glob(filepath.Join(s.Root(), "snapshots", "*"))
			backdate(t, old...)
			rep, err := s.Prune(ctx)
			if err != nil {
				t.Fatal(err)
			}
			want := slices.Clone(chainsB)
			slices.Sort(want)
			if got := snapshotHexes(t, s); !slices.Equal(got, want) {
				t.Errorf("after prune: snapshots %v, want %v (B's, not A's top %s)", got, want, chainsA[1])
			}
			if rep.Snapshots != 1 {
				t.Errorf("prune report %+v, want 1 snapshot", rep)
			}
			descB, err := s.Lookup(ctx, "img1:1")
			if err != nil {
				t.Fatal(err)
			}
			imgB2, err := s.Image(ctx, descB.Digest)
			if err != nil {
				t.Fatal(err)
			}
			dirs, err := s.Snapshots(ctx, imgB2, nil)
			if err != nil {
				t.Fatal(err)
			}
			checkRootFS(t, imgB, dirs)

			// Removing B leaves nothing.
			if _, err := s.Remove(ctx, "img1:1"); err != nil {
				t.Fatal(err)
			}
			if got := snapshotHexes(t, s); len(got) != 0 {
				t.Errorf("after remove: snapshots %v, want none", got)
			}
		})
	}
}

// TestOpenStoreRejectsUnknownSnapshotter checks option validation.
func TestOpenStoreRejectsUnknownSnapshotter(t *testing.T) {
	if _, err := layers.OpenStore(context.Background(), t.TempDir(), layers.WithSnapshotter("btrfs")); err == nil {
		t.Fatal("OpenStore accepted snapshotter btrfs")
	}
}

// TestAutoSnapshotter checks that auto means containers/storage for root
// and native otherwise.
func TestAutoSnapshotter(t *testing.T) {
	ctx := context.Background()
	s := fixtureStore(t)
	img := fixtureImage(t, "amd64", whiteoutLayers(t, s)...)
	dirs, err := s.Snapshots(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkRootFS(t, img, dirs)
	got := s.Snapshotter()
	if os.Geteuid() != 0 {
		if got != layers.SnapshotterNative {
			t.Errorf("unprivileged auto chose %q, want native", got)
		}
		return
	}
	if got != layers.SnapshotterOverlay && got != layers.SnapshotterVFS {
		t.Errorf("root auto chose %q, want overlay or vfs", got)
	}
	if !bytes.HasPrefix([]byte(dirs[0]), []byte(filepath.Join(s.Root(), "storage")+"/")) {
		t.Errorf("snapshot %s is not in the storage graph root", dirs[0])
	}
}

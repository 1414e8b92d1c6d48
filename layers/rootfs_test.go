package layers_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/layers/layertest"
)

// layerDir makes a snapshot-like directory. Keys ending in "/" are
// directories, values starting with "->" are symlinks, the rest files.
func layerDir(t testing.TB, tree map[string]string) string {
	t.Helper()
	root := t.TempDir()
	keys := make([]string, 0, len(tree))
	for k := range tree {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := tree[k]
		p := filepath.Join(root, k)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case strings.HasSuffix(k, "/"):
			err = os.MkdirAll(p, 0o755)
		case strings.HasPrefix(v, "->"):
			err = os.Symlink(strings.TrimPrefix(v, "->"), p)
		default:
			err = os.WriteFile(p, []byte(v), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func rootFSFixture(t testing.TB) (*layers.RootFS, []string) {
	t.Helper()
	l0 := layerDir(t, map[string]string{
		"etc/passwd":    "root:x:0:0",
		"etc/hosts":     "127.0.0.1",
		"a/b/c.txt":     "old c",
		"d/old":         "gone dir",
		"opq/x":         "hidden by opaque",
		"file":          "a file",
		"dir2file/sub":  "under a dir a file replaces",
		"link":          "->/etc",
		"abs":           "->/../../etc",
		"rel":           "->../../../etc/passwd",
		"loop1":         "->loop2",
		"loop2":         "->loop1",
		"chain":         "->link/../rel",
		"recreated/old": "from before the recreate",
	})
	l1 := layerDir(t, map[string]string{
		"etc/.wh.hosts":      "",
		".wh.d":              "",
		"opq/.wh..wh..opq":   "",
		"opq/y":              "new in opaque dir",
		"a/b/c.txt":          "new c",
		"a/b/new":            "added",
		"dir2file":           "now a file",
		".wh.recreated":      "",
		"recreated/new":      "after the recreate",
		"etc/.wh..wh.plnk/x": "aufs metadata",
	})
	return layers.NewRootFS([]string{l0, l1}), []string{l0, l1}
}

// rootFSKinds are the two ways a merged view looks paths up: walking
// every layer (NewRootFS), and through the per-directory answers a view of
// snapshots remembers (NewSnapshotRootFS). Both must agree.
var rootFSKinds = []struct {
	name string
	new  func([]string) *layers.RootFS
}{
	{"plain", layers.NewRootFS},
	{"snapshots", layers.NewSnapshotRootFS},
}

func TestRootFSLstat(t *testing.T) {
	_, dirs := rootFSFixture(t)
	for _, kind := range rootFSKinds {
		t.Run(kind.name, func(t *testing.T) { testRootFSLstat(t, kind.new(dirs), dirs) })
	}
}

func testRootFSLstat(t *testing.T, r *layers.RootFS, dirs []string) {
	tests := []struct {
		path      string
		wantLayer int // -1: must not exist
		wantDir   bool
	}{
		{"/", 1, true},
		{"/etc/passwd", 0, false},
		{"/etc/hosts", -1, false},
		{"/etc/.wh.hosts", -1, false},
		{"/a/b/c.txt", 1, false},
		{"/a/b", 1, true},
		{"/a/b/new", 1, false},
		{"/d", -1, false},
		{"/d/old", -1, false},
		{"/opq/x", -1, false},
		{"/opq/y", 1, false},
		{"/opq", 1, true},
		{"/dir2file", 1, false},
		{"/dir2file/sub", -1, false},
		{"/recreated/old", -1, false},
		{"/recreated/new", 1, false},
		{"/link", 0, false},
		{"/link/passwd", -1, false}, // Lstat follows no symlink
		{"/nope", -1, false},
		{"/a/../etc/passwd", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			fi, host, err := r.Lstat(tc.path)
			if tc.wantLayer < 0 {
				if !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("Lstat(%q) = %v, %q, %v; want not exist", tc.path, fi, host, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Lstat(%q): %v", tc.path, err)
			}
			if !strings.HasPrefix(host, dirs[tc.wantLayer]) || fi.IsDir() != tc.wantDir {
				t.Errorf("Lstat(%q) = dir %v in %q; want dir %v in layer %d", tc.path, fi.IsDir(), host, tc.wantDir, tc.wantLayer)
			}
		})
	}
}

func TestRootFSResolve(t *testing.T) {
	r, _ := rootFSFixture(t)
	tests := []struct {
		path       string
		parentOnly bool
		want       string
		wantErr    error
	}{
		{path: "/etc/passwd", want: "/etc/passwd"},
		{path: "/link/passwd", want: "/etc/passwd"},
		{path: "/link", want: "/etc"},
		{path: "/link", parentOnly: true, want: "/link"},
		{path: "/link/passwd", parentOnly: true, want: "/etc/passwd"},
		{path: "/abs/passwd", want: "/etc/passwd"},
		{path: "/rel", want: "/etc/passwd"},
		{path: "/chain", want: "/etc/passwd"},
		{path: "/link/../a", want: "/a"},
		{path: "/../../link/./passwd", want: "/etc/passwd"},
		{path: "/missing/x/../y", want: "/missing/y"},
		{path: "/link/missing", want: "/etc/missing"},
		{path: "a/b/", want: "/a/b"},
		{path: "/loop1", wantErr: syscall.ELOOP},
		{path: "/loop1/x", parentOnly: true, wantErr: syscall.ELOOP},
		{path: "/loop1", parentOnly: true, want: "/loop1"},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			resolve := r.Resolve
			if tc.parentOnly {
				resolve = r.ResolveParent
			}
			got, err := resolve(tc.path)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("resolve(%q) = %q, %v; want %v", tc.path, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("resolve(%q) = %q, %v; want %q", tc.path, got, err, tc.want)
			}
		})
	}
}

func TestRootFSReadDirAndFile(t *testing.T) {
	r, _ := rootFSFixture(t)
	dirTests := []struct {
		path string
		want []string
	}{
		{"/", []string{"a", "abs", "chain", "dir2file", "etc", "file", "link", "loop1", "loop2", "opq", "recreated", "rel"}},
		{"/etc", []string{"passwd"}},
		{"/link", []string{"passwd"}},
		{"/opq", []string{"y"}},
		{"/a/b", []string{"c.txt", "new"}},
		{"/recreated", []string{"new"}},
	}
	for _, tc := range dirTests {
		t.Run("dir "+tc.path, func(t *testing.T) {
			ents, err := r.ReadDir(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range ents {
				got = append(got, e.Name())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("ReadDir(%q) = %q, want %q", tc.path, got, tc.want)
			}
		})
	}
	for _, p := range []string{"/d", "/dir2file/sub"} {
		if _, err := r.ReadDir(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("ReadDir(%q): %v, want not exist", p, err)
		}
	}
	if _, err := r.ReadDir("/file"); !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("ReadDir of a file: %v, want ENOTDIR", err)
	}
	fileTests := []struct {
		path, want string
		wantErr    bool
	}{
		{path: "/a/b/c.txt", want: "new c"},
		{path: "/rel", want: "root:x:0:0"},
		{path: "/link/passwd", want: "root:x:0:0"},
		{path: "/etc/hosts", wantErr: true},
		{path: "/etc", wantErr: true},
	}
	for _, tc := range fileTests {
		t.Run("file "+tc.path, func(t *testing.T) {
			b, err := r.ReadFile(tc.path)
			if (err != nil) != tc.wantErr || string(b) != tc.want {
				t.Errorf("ReadFile(%q) = %q, %v; want %q", tc.path, b, err, tc.want)
			}
		})
	}
}

func TestRootFSOverlayWhiteouts(t *testing.T) {
	l0 := layerDir(t, map[string]string{"gone": "x", "xo/old": "x", "keep": "x"})
	l1 := layerDir(t, map[string]string{"xo/": ""})
	if err := unix.Mknod(filepath.Join(l1, "gone"), unix.S_IFCHR|0o600, 0); err != nil {
		layertest.SkipOrFail(t, "cannot make a 0/0 device (needs root): %v", err)
	}
	opaqueSet := false
	for _, attr := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
		if unix.Lsetxattr(filepath.Join(l1, "xo"), attr, []byte("y"), 0) == nil {
			opaqueSet = true
			break
		}
	}
	r := layers.NewRootFS([]string{l0, l1})
	if _, _, err := r.Lstat("/gone"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("char device whiteout: Lstat = %v", err)
	}
	ents, err := r.ReadDir("/")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"keep", "xo"}) {
		t.Errorf("ReadDir(/) = %q", names)
	}
	if !opaqueSet {
		layertest.SkipOrFail(t, "no overlay opaque xattr could be set (trusted.* needs root)")
	}
	if _, _, err := r.Lstat("/xo/old"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("opaque xattr: Lstat = %v", err)
	}
	if ents, err := r.ReadDir("/xo"); err != nil || len(ents) != 0 {
		t.Errorf("opaque xattr: ReadDir = %v, %v", ents, err)
	}
}

// TestRootFSSnapshotLookups compares, path by path, the lookups of a view
// of snapshots with those of the plain view over layers that hide things
// in every way a layer can: whiteouts (markers and 0/0 devices) of files
// and directories, opaque directories (marker and xattr) at every depth,
// an opaque layer root, a non-directory over a directory and back, and a
// marker beside a directory of the same layer.
func TestRootFSSnapshotLookups(t *testing.T) {
	l0 := layerDir(t, map[string]string{
		"a/b/c/f": "0", "a/b/g": "0", "a/h": "0", "x/y/z": "0", "top": "0",
		"n2d/f": "0", "d2n": "0", "deep/1/2/3/4": "0", "wd/k": "0", "same/k": "0",
	})
	l1 := layerDir(t, map[string]string{
		"a/b/.wh..wh..opq": "", "a/b/new": "1", "x/.wh.y": "", "n2d": "file now",
		"d2n/f": "dir now", "deep/1/2/.wh.3": "", "deep/1/2/3/5": "1", "same/": "",
		"same/k2": "1", "wd/": "",
	})
	l2 := layerDir(t, map[string]string{
		"a/b/c/f2": "2", "x/y/again": "2", "n2d/": "", "deep/1/2/3/6": "2",
		".wh.top": "", "same/k3": "2",
	})
	l3 := layerDir(t, map[string]string{"only3/q": "3", "a/h": "3"})
	// Same-layer marker beside a directory: lower copies are hidden.
	if err := os.WriteFile(filepath.Join(l1, ".wh.same"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(l2, "wd"), unix.S_IFCHR|0o600, 0); err != nil {
		layertest.SkipOrFail(t, "cannot make a 0/0 device (needs root): %v", err)
	}
	for _, attr := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
		if unix.Lsetxattr(filepath.Join(l2, "deep/1"), attr, []byte("y"), 0) == nil {
			break
		}
	}
	stacks := map[string][]string{
		"four":        {l0, l1, l2, l3},
		"two":         {l0, l1},
		"opaque root": {l0, l1, layerDirOpaqueRoot(t), l3},
	}
	for name, dirs := range stacks {
		t.Run(name, func(t *testing.T) {
			plain, snap := layers.NewRootFS(dirs), layers.NewSnapshotRootFS(dirs)
			paths := map[string]bool{"/": true, "/nope": true, "/a/nope/x": true}
			for _, d := range dirs {
				filepath.WalkDir(d, func(p string, _ fs.DirEntry, err error) error {
					if err == nil && p != d {
						rel := "/" + filepath.ToSlash(strings.TrimPrefix(p, d+"/"))
						paths[rel], paths[rel+"/under"] = true, true
					}
					return nil
				})
			}
			// Twice over: the second round answers from what the
			// first remembered.
			for round := range 2 {
				for p := range paths {
					fi1, h1, err1 := plain.Lstat(p)
					fi2, h2, err2 := snap.Lstat(p)
					if (err1 == nil) != (err2 == nil) || h1 != h2 || err1 == nil && fi1.IsDir() != fi2.IsDir() {
						t.Errorf("round %d, Lstat(%q): plain %q, %v; snapshots %q, %v", round, p, h1, err1, h2, err2)
					}
				}
			}
		})
	}
}

// layerDirOpaqueRoot is a layer whose root directory is opaque.
func layerDirOpaqueRoot(t *testing.T) string {
	d := layerDir(t, map[string]string{"a/b/c/f": "r", "fresh": "r"})
	if err := os.WriteFile(filepath.Join(d, ".wh..wh..opq"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

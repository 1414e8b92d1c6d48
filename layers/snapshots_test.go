package layers_test

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/layers"
)

func hashOf(s string) v1.Hash {
	sum := sha256.Sum256([]byte(s))
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

func TestChainIDs(t *testing.T) {
	a, b, c := hashOf("a"), hashOf("b"), hashOf("c")
	ab := hashOf(a.String() + " " + b.String())
	abc := hashOf(ab.String() + " " + c.String())
	tests := []struct {
		name string
		in   []v1.Hash
		want []v1.Hash
	}{
		{"none", nil, []v1.Hash{}},
		{"one", []v1.Hash{a}, []v1.Hash{a}},
		{"two", []v1.Hash{a, b}, []v1.Hash{a, ab}},
		{"three", []v1.Hash{a, b, c}, []v1.Hash{a, ab, abc}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := layers.ChainIDs(tc.in); !slices.Equal(got, tc.want) {
				t.Errorf("ChainIDs = %v, want %v", got, tc.want)
			}
		})
	}
}

// snapshotImage is a three-layer image whose top layer deletes a file and
// makes a directory opaque.
func snapshotImage(t testing.TB, s *layers.Store) v1.Image {
	t.Helper()
	return fixtureImage(t, "amd64",
		fixtureLayer(t, s, []fixtureFile{{Name: "etc/", Typ: tar.TypeDir}, {Name: "etc/a", Body: "a"}, {Name: "etc/b", Body: "b"}, {Name: "opq/", Typ: tar.TypeDir}, {Name: "opq/old", Body: "old"}}),
		fixtureLayer(t, s, []fixtureFile{{Name: "etc/", Typ: tar.TypeDir}, {Name: "etc/c", Body: "c"}, {Name: "lnk", Typ: tar.TypeSymlink, Link: "/etc"}}),
		fixtureLayer(t, s, []fixtureFile{{Name: "etc/", Typ: tar.TypeDir}, {Name: "etc/.wh.a", Body: ""}, {Name: "opq/", Typ: tar.TypeDir}, {Name: "opq/.wh..wh..opq"}, {Name: "opq/new", Body: "new"}}),
	)
}

func TestSnapshots(t *testing.T) {
	ctx := context.Background()
	s := nativeStore(t)
	img := snapshotImage(t, s)
	dirs, err := s.Snapshots(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	chains := layers.ChainIDs(cf.RootFS.DiffIDs)
	for i, d := range dirs {
		if want := filepath.Join(s.Root(), "snapshots", chains[i].Hex); d != want {
			t.Errorf("snapshot %d at %s, want %s", i, d, want)
		}
	}
	tests := []struct {
		layer int
		path  string
		want  string
	}{
		{0, "etc/a", "a"},
		{1, "etc/c", "c"},
		{2, "etc/.wh.a", ""}, // markers are kept
		{2, "opq/.wh..wh..opq", ""},
		{2, "opq/new", "new"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("layer%d/%s", tc.layer, tc.path), func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(dirs[tc.layer], tc.path))
			if err != nil || string(b) != tc.want {
				t.Errorf("read = %q, %v; want %q", b, err, tc.want)
			}
		})
	}
	if _, err := os.Lstat(filepath.Join(dirs[1], "etc/a")); !os.IsNotExist(err) {
		t.Error("a snapshot holds more than its own layer")
	}
	// The merged view of the snapshots is the image's filesystem.
	r := layers.NewRootFS(dirs)
	ents, err := r.ReadDir("/lnk")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"b", "c"}) {
		t.Errorf("merged /etc = %q, want [b c]", names)
	}

	// A second call, and an image sharing the lower layers, reuse the
	// snapshots instead of extracting again.
	sentinel := filepath.Join(dirs[0], "sentinel")
	if err := os.WriteFile(sentinel, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	again, err := s.Snapshots(ctx, img, nil)
	if err != nil || !slices.Equal(again, dirs) {
		t.Fatalf("second call = %v, %v", again, err)
	}
	ls, _ := img.Layers()
	sibling := fixtureImage(t, "amd64", ls[0], ls[1], fixtureLayer(t, s, []fixtureFile{{Name: "other", Body: "x"}}))
	sib, err := s.Snapshots(ctx, sibling, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(sib[:2], dirs[:2]) || sib[2] == dirs[2] {
		t.Errorf("sibling snapshots %v do not share the lower two of %v", sib, dirs)
	}
	if _, err := os.Stat(sentinel); err != nil {
		t.Error("snapshot was extracted again:", err)
	}
	// Same top layer on a different base: a different chain ID.
	moved := fixtureImage(t, "amd64", ls[2])
	mv, err := s.Snapshots(ctx, moved, nil)
	if err != nil || mv[0] == dirs[2] {
		t.Errorf("layer on another base got snapshot %v (err %v), top of the first image is %s", mv, err, dirs[2])
	}
}

func TestSnapshotsRejectsWrongDiffID(t *testing.T) {
	ctx := context.Background()
	s := fixtureStore(t)
	good := fixtureLayer(t, s, []fixtureFile{{Name: "f", Body: "content"}})
	d, _ := good.Digest()
	size, _ := good.Size()
	liar := s.Blobs().Layer(layers.Descriptor{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: d, Size: size, DiffID: hashOf("something else")})
	img := fixtureImage(t, "amd64", liar)
	if _, err := s.Snapshots(ctx, img, nil); err == nil || !strings.Contains(err.Error(), "diff ID") {
		t.Fatalf("Snapshots of a lying layer: %v", err)
	}
	ents, _ := os.ReadDir(filepath.Join(s.Root(), "snapshots"))
	for _, e := range ents {
		if e.IsDir() {
			t.Errorf("snapshot %s left behind", e.Name())
		}
	}
	left, _ := filepath.Glob(filepath.Join(s.Root(), "tmp", "snapshot-*"))
	if len(left) != 0 {
		t.Errorf("temporary extraction left behind: %v", left)
	}
}

const snapshotChildEnv = "IBUILD_TEST_SNAPSHOT_CHILD"

// TestSnapshotProcessHelper is the child of TestSnapshotsConcurrent: it
// takes the snapshots of a stored image and prints their directories.
func TestSnapshotProcessHelper(t *testing.T) {
	spec := os.Getenv(snapshotChildEnv)
	if spec == "" {
		t.Skip("helper process only")
	}
	root, ref, _ := strings.Cut(spec, "|")
	ctx := context.Background()
	s, err := layers.OpenStore(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.Lookup(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.Image(ctx, d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	dirs, err := s.Snapshots(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(dirs)
	fmt.Printf("DIRS=%s\n", b)
}

func TestSnapshotsConcurrent(t *testing.T) {
	for _, mode := range []string{"goroutines", "processes"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			s := fixtureStore(t)
			img := snapshotImage(t, s)
			desc, err := s.WriteImage(ctx, img)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Tag(ctx, "snap", desc); err != nil {
				t.Fatal(err)
			}
			const callers = 4
			results := make([][]string, callers)
			errs := make([]error, callers)
			var wg sync.WaitGroup
			for i := range callers {
				wg.Go(func() {
					if mode == "goroutines" {
						results[i], errs[i] = s.Snapshots(ctx, img, nil)
						return
					}
					cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestSnapshotProcessHelper$", "-test.count=1", "-test.v")
					cmd.Env = append(os.Environ(), snapshotChildEnv+"="+s.Root()+"|snap")
					out, err := cmd.CombinedOutput()
					if err != nil {
						errs[i] = fmt.Errorf("child: %v\n%s", err, out)
						return
					}
					for _, line := range strings.Split(string(out), "\n") {
						if after, ok := strings.CutPrefix(line, "DIRS="); ok {
							errs[i] = json.Unmarshal([]byte(after), &results[i])
						}
					}
				})
			}
			wg.Wait()
			for i := range callers {
				if errs[i] != nil {
					t.Fatal(errs[i])
				}
				if len(results[i]) != 3 || !slices.Equal(results[i], results[0]) {
					t.Fatalf("caller %d got %v, caller 0 got %v", i, results[i], results[0])
				}
			}
			left, _ := filepath.Glob(filepath.Join(s.Root(), "tmp", "snapshot-*"))
			if len(left) != 0 {
				t.Errorf("temporary extractions left behind: %v", left)
			}
			b, err := os.ReadFile(filepath.Join(results[0][2], "opq", "new"))
			if err != nil || string(b) != "new" {
				t.Errorf("top snapshot content = %q, %v", b, err)
			}
		})
	}
}

package layers_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ibuild/ibuild/layers/layertest"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ibuild/ibuild/layers"
)

// fixtureFile is one tar entry of a test layer. Typ defaults to a regular
// file; directories are implied by paths but may be listed.
type fixtureFile struct {
	Name string
	Body string
	Typ  byte
	Link string
}

// fixtureTar makes an uncompressed layer tar.
func fixtureTar(t testing.TB, files []fixtureFile) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := &tar.Header{Name: f.Name, Typeflag: f.Typ, Mode: 0o644, Linkname: f.Link, ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
		switch f.Typ {
		case 0:
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(f.Body))
		case tar.TypeDir:
			hdr.Mode = 0o755
		case tar.TypeSymlink:
			hdr.Mode = 0o777
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(f.Body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// fixtureLayer commits files as a gzip layer into s and returns it.
func fixtureLayer(t testing.TB, s *layers.Store, files []fixtureFile) v1.Layer {
	t.Helper()
	d, err := s.Blobs().CommitTar(context.Background(), bytes.NewReader(fixtureTar(t, files)), layers.CommitOptions{Compression: layers.Gzip})
	if err != nil {
		t.Fatal(err)
	}
	return s.Blobs().Layer(d)
}

// fixtureImage builds an OCI image (not yet written to the store) from
// layers whose blobs are in s. arch sets the config's platform.
func fixtureImage(t testing.TB, arch string, ls ...v1.Layer) v1.Image {
	t.Helper()
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.AppendLayers(img, ls...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: time.Unix(1700000000, 0).UTC()}
	cf.Config.Cmd = []string{"/bin/sh"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func fixtureStore(t testing.TB, opts ...layers.StoreOption) *layers.Store {
	t.Helper()
	s, err := layers.OpenStore(context.Background(), t.TempDir(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// nativeStore is a store with the native snapshotter, for tests of its
// on-disk layout.
func nativeStore(t testing.TB) *layers.Store {
	t.Helper()
	return fixtureStore(t, layers.WithSnapshotter(layers.SnapshotterNative))
}

// storedImage writes a one-layer image with a file of the given content and
// tags it.
func storedImage(t testing.TB, s *layers.Store, name, content string, extra ...v1.Layer) (v1.Image, v1.Descriptor) {
	t.Helper()
	ls := append(slices.Clone(extra), fixtureLayer(t, s, []fixtureFile{{Name: "etc/", Typ: tar.TypeDir}, {Name: "etc/content", Body: content}}))
	img := fixtureImage(t, "amd64", ls...)
	desc, err := s.WriteImage(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	if name != "" {
		if err := s.Tag(context.Background(), name, desc); err != nil {
			t.Fatal(err)
		}
	}
	return img, desc
}

func digestOf(t testing.TB, x interface{ Digest() (v1.Hash, error) }) v1.Hash {
	t.Helper()
	h, err := x.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestOpenStoreLayout(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s, err := layers.OpenStore(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"oci-layout", "index.json", "blobs/sha256", "snapshots", "tmp"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("missing %s: %v", p, err)
		}
	}
	if _, err := layers.OpenStore(ctx, root); err != nil {
		t.Fatalf("reopen: %v", err)
	}
	d, err := s.TempDir("build-")
	if err != nil || filepath.Dir(d) != filepath.Join(s.Root(), "tmp") {
		t.Fatalf("TempDir = %q, %v", d, err)
	}
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "oci-layout"), []byte(`{"imageLayoutVersion":"2.0.0"}`), 0o644)
	if _, err := layers.OpenStore(ctx, bad); err == nil {
		t.Error("OpenStore accepted a layout of another version")
	}
}

// TestOpenStoreRootMode checks that a new store root is 0700 and that an
// existing one others could enter is tightened, with a warning when it
// held a store (an empty directory exposed nothing).
func TestOpenStoreRootMode(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		existing os.FileMode // 0: the root does not exist yet
		warns    bool
	}{
		{"new", 0, false},
		{"existing 0700", 0o700, false},
		{"existing empty 0755", 0o755, false},
		{"existing store 0755", 0o755, true},
		{"existing store 0711", 0o711, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "store")
			if tc.existing != 0 {
				if err := os.Mkdir(root, 0o700); err != nil {
					t.Fatal(err)
				}
				if strings.Contains(tc.name, "store") {
					if _, err := layers.OpenStore(ctx, root); err != nil {
						t.Fatal(err)
					}
				}
				if err := os.Chmod(root, tc.existing); err != nil {
					t.Fatal(err)
				}
			}
			var warnings []string
			if _, err := layers.OpenStore(ctx, root, layers.WithWarnings(func(m string) { warnings = append(warnings, m) })); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(root)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != layers.StoreMode {
				t.Errorf("store root mode %04o, want %04o", fi.Mode().Perm(), layers.StoreMode)
			}
			if got := len(warnings) > 0; got != tc.warns || (got && !strings.Contains(warnings[0], "made it 0700")) {
				t.Errorf("warnings %q, want one saying the root was made 0700: %v", warnings, tc.warns)
			}
		})
	}
}

func TestStoreImageValidates(t *testing.T) {
	ctx := context.Background()
	s := fixtureStore(t)
	base := fixtureLayer(t, s, []fixtureFile{{Name: "bin/", Typ: tar.TypeDir}, {Name: "bin/sh", Body: "#!"}})
	img, desc := storedImage(t, s, "x:1", "one", base)
	if desc.Digest != digestOf(t, img) || desc.Platform == nil || desc.Platform.Architecture != "amd64" {
		t.Fatalf("WriteImage descriptor = %+v", desc)
	}
	got, err := s.Image(ctx, desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(got); err != nil {
		t.Fatalf("validate.Image: %v", err)
	}
	if digestOf(t, got) != desc.Digest {
		t.Error("digest changed on the way through the store")
	}
	if _, err := s.Image(ctx, v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%064d", 0)}); !errors.Is(err, layers.ErrNotFound) {
		t.Errorf("missing image: err = %v, want ErrNotFound", err)
	}
}

func TestStoreRemove(t *testing.T) {
	type fixture struct {
		s                               *layers.Store
		descA, descB                    v1.Descriptor
		cfgA, uniqueA, sharedD, uniqueB v1.Hash
	}
	setup := func(t *testing.T) fixture {
		ctx := context.Background()
		s := nativeStore(t)
		shared := fixtureLayer(t, s, []fixtureFile{{Name: "shared", Body: "base"}})
		imgA, descA := storedImage(t, s, "a", "only in a", shared)
		imgB, descB := storedImage(t, s, "b", "only in b", shared)
		if err := s.Tag(ctx, "b:other", descB); err != nil {
			t.Fatal(err)
		}
		for _, img := range []v1.Image{imgA, imgB} {
			if _, err := s.Snapshots(ctx, img, nil); err != nil {
				t.Fatal(err)
			}
		}
		lsA, _ := imgA.Layers()
		lsB, _ := imgB.Layers()
		cfgA, _ := imgA.ConfigName()
		return fixture{s, descA, descB, cfgA, digestOf(t, lsA[1]), digestOf(t, shared), digestOf(t, lsB[1])}
	}
	tests := []struct {
		name          string
		ref           func(f fixture) string
		wantErr       error
		wantUntagged  []string
		wantDeleted   func(f fixture) []v1.Hash
		wantKept      func(f fixture) []v1.Hash
		wantSnapshots int
	}{
		{
			name:          "by ID with two names is refused",
			ref:           func(f fixture) string { return "sha256:" + f.descB.Digest.Hex },
			wantErr:       errors.New("any"),
			wantKept:      func(f fixture) []v1.Hash { return []v1.Hash{f.descB.Digest, f.uniqueB} },
			wantSnapshots: 3,
		},
		{
			name:          "one of two names keeps the image",
			ref:           func(fixture) string { return "b:other" },
			wantUntagged:  []string{"localhost/b:other"},
			wantKept:      func(f fixture) []v1.Hash { return []v1.Hash{f.descB.Digest, f.uniqueB} },
			wantSnapshots: 3,
		},
		{
			name:          "last name deletes unshared blobs and snapshots",
			ref:           func(fixture) string { return "localhost/a:latest" },
			wantUntagged:  []string{"localhost/a:latest"},
			wantDeleted:   func(f fixture) []v1.Hash { return []v1.Hash{f.descA.Digest, f.cfgA, f.uniqueA} },
			wantKept:      func(f fixture) []v1.Hash { return []v1.Hash{f.sharedD, f.descB.Digest, f.uniqueB} },
			wantSnapshots: 2,
		},
		{
			name:          "by image ID prefix",
			ref:           func(f fixture) string { return f.cfgA.Hex[:12] },
			wantUntagged:  []string{"localhost/a:latest"},
			wantDeleted:   func(f fixture) []v1.Hash { return []v1.Hash{f.descA.Digest, f.cfgA, f.uniqueA} },
			wantKept:      func(f fixture) []v1.Hash { return []v1.Hash{f.sharedD} },
			wantSnapshots: 2,
		},
		{
			name:          "unknown",
			ref:           func(fixture) string { return "nope" },
			wantErr:       layers.ErrNotFound,
			wantSnapshots: 3,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := setup(t)
			rep, err := f.s.Remove(context.Background(), tc.ref(f))
			if (err != nil) != (tc.wantErr != nil) || tc.wantErr == layers.ErrNotFound && !errors.Is(err, layers.ErrNotFound) {
				t.Fatalf("Remove err = %v, want %v", err, tc.wantErr)
			}
			if !slices.Equal(rep.Untagged, tc.wantUntagged) {
				t.Errorf("untagged %q, want %q", rep.Untagged, tc.wantUntagged)
			}
			if tc.wantDeleted != nil {
				for _, h := range tc.wantDeleted(f) {
					if f.s.Blobs().Has(h) || !slices.Contains(rep.Deleted, h) {
						t.Errorf("blob %s not deleted (report %v)", h, rep.Deleted)
					}
				}
			}
			if tc.wantKept != nil {
				for _, h := range tc.wantKept(f) {
					if !f.s.Blobs().Has(h) {
						t.Errorf("blob %s deleted", h)
					}
				}
			}
			dirs, _ := filepath.Glob(filepath.Join(f.s.Root(), "snapshots", "*[0-9a-f]"))
			if len(dirs) != tc.wantSnapshots {
				t.Errorf("%d snapshots left, want %d", len(dirs), tc.wantSnapshots)
			}
		})
	}
}

func backdate(t testing.TB, paths ...string) {
	t.Helper()
	old := time.Now().Add(-2 * layers.PruneGrace)
	for _, p := range paths {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
}

func TestStorePrune(t *testing.T) {
	ctx := context.Background()
	s := nativeStore(t)
	_, tagged := storedImage(t, s, "kept", "tagged")
	pinnedImg, pinned := storedImage(t, s, "", "pinned")
	if err := s.SetRoot(ctx, "cache", []v1.Hash{pinned.Digest}); err != nil {
		t.Fatal(err)
	}
	orphanImg, orphan := storedImage(t, s, "", "orphan")
	if _, err := s.Snapshots(ctx, orphanImg, nil); err != nil {
		t.Fatal(err)
	}
	fresh, err := s.Blobs().PutBytes(ctx, []byte("fresh, untagged"))
	if err != nil {
		t.Fatal(err)
	}
	leftover, err := s.TempDir("killed-")
	if err != nil {
		t.Fatal(err)
	}
	var all []string
	hs, _ := s.Blobs().List()
	for _, h := range hs {
		if h != fresh {
			all = append(all, s.Blobs().Path(h))
		}
	}
	snaps, _ := filepath.Glob(filepath.Join(s.Root(), "snapshots", "*"))
	backdate(t, append(append(all, snaps...), leftover)...)

	// Writing an image again refreshes the blobs it reuses.
	reusedImg, reused := storedImage(t, s, "", "reused")
	reusedLayers, _ := reusedImg.Layers()
	backdate(t, s.Blobs().Path(reused.Digest), s.Blobs().Path(digestOf(t, reusedLayers[0])))
	if _, err := s.WriteImage(ctx, reusedImg); err != nil {
		t.Fatal(err)
	}

	rep, err := s.Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pinnedLayers, _ := pinnedImg.Layers()
	orphanLayers, _ := orphanImg.Layers()
	tests := []struct {
		name string
		h    v1.Hash
		want bool
	}{
		{"tagged manifest", tagged.Digest, true},
		{"pinned manifest", pinned.Digest, true},
		{"pinned manifest's layer", digestOf(t, pinnedLayers[0]), true},
		{"blob newer than the grace period", fresh, true},
		{"old layer reused by a new write", digestOf(t, reusedLayers[0]), true},
		{"orphan manifest", orphan.Digest, false},
		{"orphan layer", digestOf(t, orphanLayers[0]), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := s.Blobs().Has(tc.h); got != tc.want {
				t.Errorf("Has(%s) = %v after prune, want %v", tc.h, got, tc.want)
			}
		})
	}
	if rep.Blobs < 3 || rep.Snapshots != 1 || rep.Bytes <= 0 {
		t.Errorf("report = %+v, want >= 3 blobs and 1 snapshot", rep)
	}
	if _, err := os.Stat(leftover); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("tmp leftover survived prune: %v", err)
	}
	// Unpinning makes the pinned image prunable.
	if err := s.SetRoot(ctx, "cache", nil); err != nil {
		t.Fatal(err)
	}
	backdate(t, s.Blobs().Path(pinned.Digest))
	if _, err := s.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	if s.Blobs().Has(pinned.Digest) {
		t.Error("unpinned manifest survived prune")
	}
}

func TestStoreLockExcludes(t *testing.T) {
	ctx := context.Background()
	s := fixtureStore(t)
	unlock, err := s.Lock(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	shared2, err := s.Lock(ctx, false)
	if err != nil {
		t.Fatal("second shared lock:", err)
	}
	shared2()
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := s.Prune(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Prune under a shared lock: err = %v, want deadline exceeded", err)
	}
	unlock()
	unlock() // idempotent
	if _, err := s.Prune(ctx); err != nil {
		t.Fatal(err)
	}
}

const tagChildEnv = "IBUILD_TEST_TAG_CHILD"

// TestTagProcessHelper is the child of TestStoreTagConcurrent's process
// case: it tags names in the store named by the environment.
func TestTagProcessHelper(t *testing.T) {
	spec := os.Getenv(tagChildEnv)
	if spec == "" {
		t.Skip("helper process only")
	}
	var job struct {
		Root   string
		Prefix string
		N      int
		Desc   v1.Descriptor
	}
	if err := json.Unmarshal([]byte(spec), &job); err != nil {
		t.Fatal(err)
	}
	s, err := layers.OpenStore(context.Background(), job.Root)
	if err != nil {
		t.Fatal(err)
	}
	for i := range job.N {
		if err := s.Tag(context.Background(), job.Prefix+strconv.Itoa(i), job.Desc); err != nil {
			t.Fatal(err)
		}
	}
}

func TestStoreTagConcurrent(t *testing.T) {
	const workers, perWorker = 4, 15
	for _, mode := range []string{"goroutines", "processes"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			s := fixtureStore(t)
			_, desc := storedImage(t, s, "", "tagged concurrently")
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := range workers {
				prefix := fmt.Sprintf("w%d/img:", w)
				wg.Go(func() {
					if mode == "goroutines" {
						for i := range perWorker {
							if err := s.Tag(ctx, prefix+strconv.Itoa(i), desc); err != nil {
								errs <- err
								return
							}
						}
						return
					}
					job, _ := json.Marshal(map[string]any{"Root": s.Root(), "Prefix": prefix, "N": perWorker, "Desc": desc})
					cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestTagProcessHelper$", "-test.count=1")
					cmd.Env = append(os.Environ(), tagChildEnv+"="+string(job))
					if out, err := cmd.CombinedOutput(); err != nil {
						errs <- fmt.Errorf("child %s: %v\n%s", prefix, err, out)
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			recs, err := s.Images(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != 1 || len(recs[0].Names) != workers*perWorker {
				t.Fatalf("got %+v; want 1 record with %d names", recs, workers*perWorker)
			}
		})
	}
}

func TestStoreSkopeoReadsRoot(t *testing.T) {
	skopeo := layertest.RequireTool(t, "skopeo")
	s := fixtureStore(t)
	_, desc := storedImage(t, s, "x:1", "for skopeo")
	storedImage(t, s, "y", "another")
	out, err := exec.Command(skopeo, "inspect", "oci:"+s.Root()+":localhost/x:1").CombinedOutput()
	if err != nil {
		t.Fatalf("skopeo inspect: %v\n%s", err, out)
	}
	var info struct {
		Digest       string
		Architecture string
		Layers       []string
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if info.Digest != desc.Digest.String() || info.Architecture != "amd64" || len(info.Layers) != 1 {
		t.Errorf("skopeo saw %+v, want digest %s", info, desc.Digest)
	}
}

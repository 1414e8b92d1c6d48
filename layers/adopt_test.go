package layers_test

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/ibuild/ibuild/layers"
)

// snapshotListing describes a snapshot tree with what a later step can
// observe: type and mode, owner, mtime, content, link target, root's mode.
func snapshotListing(t *testing.T, root string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := e.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		d := fmt.Sprintf("%v %d:%d", fi.Mode(), st.Uid, st.Gid)
		if rel != "." {
			d += fmt.Sprintf(" t%d", fi.ModTime().Unix())
		}
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			d += fmt.Sprintf(" %q nlink=%d", b, st.Nlink)
		case fi.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			d += " -> " + l
		}
		m["/"+rel] = d
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// adoptFixture writes a layer directory as COPY would: files older and
// newer than the epoch, a hard link, a symlink, a socket, a 0700 root.
func adoptFixture(t *testing.T, dir string, epoch time.Time) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chmod(dir, 0o700))
	must(os.MkdirAll(filepath.Join(dir, "app/sub"), 0o750))
	must(os.WriteFile(filepath.Join(dir, "app/old"), []byte("old"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "app/sub/new"), []byte("new"), 0o755))
	must(os.Link(filepath.Join(dir, "app/sub/new"), filepath.Join(dir, "app/hard")))
	must(os.Symlink("sub/new", filepath.Join(dir, "app/link")))
	if l, err := net.Listen("unix", filepath.Join(dir, "app/sock")); err == nil {
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
	}
	old := epoch.Add(-24 * time.Hour)
	must(os.Chtimes(filepath.Join(dir, "app/old"), old, old))
	future := epoch.Add(24 * time.Hour)
	for _, p := range []string{"app/sub/new", "app/sub", "app"} {
		must(os.Chtimes(filepath.Join(dir, p), future, future))
	}
}

// TestAdoptSnapshotEqualsExtraction: a layer directory adopted as the
// snapshot must be exactly what extracting the committed layer gives in
// another store, with and without SOURCE_DATE_EPOCH.
func TestAdoptSnapshotEqualsExtraction(t *testing.T) {
	ctx := context.Background()
	epoch := time.Unix(1700000000, 0)
	for _, sn := range []string{layers.SnapshotterNative, layers.SnapshotterOverlay} {
		for _, withEpoch := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/epoch=%v", sn, withEpoch), func(t *testing.T) {
				needRootFor(t, sn)
				var ep *time.Time
				if withEpoch {
					ep = &epoch
				}
				a := fixtureStore(t, layers.WithSnapshotter(sn))
				b := fixtureStore(t, layers.WithSnapshotter(sn))
				dir, err := a.TempDir("layer-")
				if err != nil {
					t.Fatal(err)
				}
				adoptFixture(t, dir, epoch)
				opts := layers.CommitOptions{Compression: layers.Gzip, TarOptions: layers.TarOptions{SourceDateEpoch: ep}}
				desc, err := a.Blobs().CommitDir(ctx, dir, opts)
				if err != nil {
					t.Fatal(err)
				}
				adopted, err := a.AdoptSnapshot(ctx, dir, []v1.Hash{desc.DiffID}, desc.UncompressedSize, ep)
				if err != nil || !adopted {
					t.Fatalf("AdoptSnapshot = %v, %v; want adopted", adopted, err)
				}
				img, err := mutate.AppendLayers(empty.Image, a.Blobs().Layer(desc))
				if err != nil {
					t.Fatal(err)
				}
				dirsA, err := a.Snapshots(ctx, img, nil)
				if err != nil {
					t.Fatal(err)
				}
				// The same blob, extracted in a store that never saw the
				// directory.
				if _, err := b.Blobs().CommitDir(ctx, mustCopyTree(t, a, desc), opts); err != nil {
					t.Fatal(err)
				}
				dirsB, err := b.Snapshots(ctx, img, nil)
				if err != nil {
					t.Fatal(err)
				}
				if d := diffListings(snapshotListing(t, dirsB[0]), snapshotListing(t, dirsA[0])); d != "[]" {
					t.Errorf("adopted snapshot differs from the extracted one:\n%s", d)
				}
				// Adopting again is a no-op: the snapshot exists.
				again, err := a.AdoptSnapshot(ctx, t.TempDir(), []v1.Hash{desc.DiffID}, desc.UncompressedSize, ep)
				if err != nil || again {
					t.Errorf("second AdoptSnapshot = %v, %v; want false", again, err)
				}
			})
		}
	}
}

// mustCopyTree unpacks desc's blob from a into a fresh directory and
// returns it, so the other store can commit the identical layer.
func mustCopyTree(t *testing.T, a *layers.Store, desc layers.Descriptor) string {
	t.Helper()
	rc, err := a.Blobs().Layer(desc).Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	dir := t.TempDir()
	if err := layers.Extract(context.Background(), rc, dir, layers.ExtractOptions{Whiteouts: layers.KeepWhiteouts}); err != nil {
		t.Fatal(err)
	}
	return dir
}

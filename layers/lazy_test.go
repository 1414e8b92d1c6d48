package layers_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/ibuild/ibuild/layers"
)

// lazyFixture is adoptFixture plus what RUN layers hold: an overlay
// whiteout (a 0/0 character device) and an opaque directory (root only).
func lazyFixture(t *testing.T, dir string, epoch time.Time) {
	t.Helper()
	adoptFixture(t, dir, epoch)
	future := epoch.Add(24 * time.Hour)
	tv := []unix.Timeval{unix.NsecToTimeval(future.UnixNano()), unix.NsecToTimeval(future.UnixNano())}
	if os.Geteuid() != 0 {
		if err := unix.Lutimes(filepath.Join(dir, "app/link"), tv); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := unix.Mknod(filepath.Join(dir, "app/gone"), unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
	opq := filepath.Join(dir, "opq")
	if err := os.Mkdir(opq, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(opq, "trusted.overlay.opaque", []byte("y"), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(opq, "f"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Fixed times for what was just made or changed: two fixtures made
	// seconds apart must be the same layer.
	for _, p := range []string{"app/link", "app/gone", "opq/f", "opq", "app"} {
		if err := unix.Lutimes(filepath.Join(dir, p), tv); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCommitSnapshotMatchesCommitDir: a layer committed as a snapshot and
// compressed later gives the blob (digest, size, diffID) an eager commit
// of the same directory gives, for each snapshotter, with and without
// SOURCE_DATE_EPOCH, gzip and zstd; the compressor sees the layer only
// when the blob is asked for, and only once.
func TestCommitSnapshotMatchesCommitDir(t *testing.T) {
	ctx := context.Background()
	epoch := time.Unix(1700000000, 0)
	for _, sn := range []string{layers.SnapshotterNative, layers.SnapshotterOverlay} {
		for _, withEpoch := range []bool{false, true} {
			for _, comp := range []layers.Compression{layers.Gzip, layers.Zstd} {
				t.Run(fmt.Sprintf("%s/epoch=%v/%s", sn, withEpoch, comp), func(t *testing.T) {
					needRootFor(t, sn)
					var ep *time.Time
					if withEpoch {
						ep = &epoch
					}
					opts := layers.CommitOptions{Compression: comp, TarOptions: layers.TarOptions{SourceDateEpoch: ep}}
					eager := fixtureStore(t, layers.WithSnapshotter(sn))
					edir, err := eager.TempDir("layer-")
					if err != nil {
						t.Fatal(err)
					}
					lazyFixture(t, edir, epoch)
					want, err := eager.Blobs().CommitDir(ctx, edir, opts)
					if err != nil {
						t.Fatal(err)
					}

					st := fixtureStore(t, layers.WithSnapshotter(sn))
					dir, err := st.TempDir("layer-")
					if err != nil {
						t.Fatal(err)
					}
					lazyFixture(t, dir, epoch)
					l, d, err := st.CommitSnapshot(ctx, dir, nil, opts)
					if err != nil {
						t.Fatal(err)
					}
					if !d.Lazy() || d.DiffID != want.DiffID || d.UncompressedSize != want.UncompressedSize {
						t.Fatalf("committed %+v, want a lazy layer of diff ID %s, %d bytes", d, want.DiffID, want.UncompressedSize)
					}
					if n := st.Blobs().CompressedBytes(); n != 0 {
						t.Fatalf("committing compressed %d bytes", n)
					}
					// The tar read from the snapshot is the layer's.
					rc, err := l.Uncompressed()
					if err != nil {
						t.Fatal(err)
					}
					got, _, err := v1.SHA256(rc)
					rc.Close()
					if err != nil || got != want.DiffID {
						t.Fatalf("the snapshot's tar has diff ID %s (%v), want %s", got, err, want.DiffID)
					}
					if err := st.Materialize(ctx, []v1.Layer{l}, 2); err != nil {
						t.Fatal(err)
					}
					if n := st.Blobs().CompressedBytes(); n != want.UncompressedSize {
						t.Fatalf("compressed %d bytes, want the layer's %d once", n, want.UncompressedSize)
					}
					dg, _ := l.Digest()
					size, _ := l.Size()
					mt, _ := l.MediaType()
					if dg != want.Digest || size != want.Size || mt != want.MediaType {
						t.Fatalf("lazy blob %s %d %s, eager %s %d %s", dg, size, mt, want.Digest, want.Size, want.MediaType)
					}
					// Another layer value of the same snapshot (a later build)
					// finds the blob in the memo: nothing compressed again.
					again := st.LazyLayer([]v1.Hash{d.DiffID}, d, opts)
					if dg2, err := again.Digest(); err != nil || dg2 != want.Digest {
						t.Fatalf("again: %s, %v", dg2, err)
					}
					if n := st.Blobs().CompressedBytes(); n != want.UncompressedSize {
						t.Fatalf("the memo was not used: %d bytes compressed in all", n)
					}
					rc, err = again.Compressed()
					if err != nil {
						t.Fatal(err)
					}
					n, _ := io.Copy(io.Discard, rc)
					rc.Close()
					if n != want.Size {
						t.Fatalf("blob of %d bytes, want %d", n, want.Size)
					}
				})
			}
		}
	}
}

// TestLazyLayerKeptByCacheRecord: a cache record naming a lazy layer
// keeps its snapshot through Prune; without the record, Prune (past its
// grace period) collects it, and a lookup of the record then misses.
func TestLazyLayerKeptByCacheRecord(t *testing.T) {
	ctx := context.Background()
	for _, sn := range []string{layers.SnapshotterNative, layers.SnapshotterOverlay} {
		t.Run(sn, func(t *testing.T) {
			needRootFor(t, sn)
			st := fixtureStore(t, layers.WithSnapshotter(sn))
			dir, err := st.TempDir("layer-")
			if err != nil {
				t.Fatal(err)
			}
			adoptFixture(t, dir, time.Unix(1700000000, 0))
			_, d, err := st.CommitSnapshot(ctx, dir, nil, layers.CommitOptions{})
			if err != nil {
				t.Fatal(err)
			}
			chain := layers.ChainIDs([]v1.Hash{d.DiffID})[0]
			key := v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%064x", 7)}
			if err := st.CachePut(ctx, key, &layers.CacheRecord{Config: []byte(`{}`), Layer: &d, Chain: &chain}); err != nil {
				t.Fatal(err)
			}
			age(t, st, chain)
			if _, err := st.Prune(ctx); err != nil {
				t.Fatal(err)
			}
			rec, ok, err := st.CacheGet(key)
			if err != nil || !ok || rec.Layer == nil || !rec.Layer.Lazy() {
				t.Fatalf("after Prune: record %+v, %v, %v; want the lazy layer's record", rec, ok, err)
			}
			if _, err := st.PruneCache(ctx, 0); err != nil {
				t.Fatal(err)
			}
			age(t, st, chain)
			if _, err := st.Prune(ctx); err != nil {
				t.Fatal(err)
			}
			ids, err := st.SnapshotIDs(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range ids {
				if id == chain {
					t.Fatal("the snapshot of a layer no record or image names survived Prune")
				}
			}
		})
	}
}

// age makes the snapshot of chain look unused for twice Prune's grace
// period (its lock file's mtime is its last use).
func age(t *testing.T, st *layers.Store, chain v1.Hash) {
	t.Helper()
	old := time.Now().Add(-2 * layers.PruneGrace)
	for _, p := range []string{filepath.Join(st.Root(), "snapshots", chain.Hex+".lock"), filepath.Join(st.Root(), "snapshots", chain.Hex)} {
		if err := os.Chtimes(p, old, old); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
}

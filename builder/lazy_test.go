package builder

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// TestBuildCompressesOnlyWhatLeaves: the layers of a stage used only
// through COPY --from never go through the compressor; the result's
// layers go through it once, when the result is stored, and pushing it
// (twice) or writing it as an OCI layout compresses nothing more. The
// pushed image is the one a build of the same input in a store that
// commits every layer at once (vfs, which cannot keep snapshots) pushes.
func TestBuildCompressesOnlyWhatLeaves(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end builds")
	}
	st := newStore(t)
	busyboxBase(t, st)
	big := make([]byte, 2<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM busybox:1 AS build\n" +
			"COPY big /big\n" +
			"RUN head -c 1048576 /big > /gen && echo built > /marker\n" +
			"FROM scratch\n" +
			"COPY --from=build /marker /out\n",
		"big": string(big),
	})
	epoch := time.Unix(1700000000, 0)
	reg := registrytest.Start(t)
	ctx := context.Background()
	before := st.Blobs().CompressedBytes()
	res, err := Build(ctx, Options{Store: st, ContextDir: dir, Tags: []string{"lazy:1"}, StepOptions: StepOptions{SourceDateEpoch: &epoch}})
	if err != nil {
		t.Fatal(err)
	}
	ls, err := res.Image.Layers()
	if err != nil || len(ls) != 1 {
		t.Fatalf("%d layers, %v; want the final COPY's only", len(ls), err)
	}
	cf, _ := res.Image.ConfigFile()
	rc, err := ls[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	finalSize := int64(0)
	for buf := make([]byte, 32<<10); ; {
		n, err := rc.Read(buf)
		finalSize += int64(n)
		if err != nil {
			break
		}
	}
	rc.Close()
	if got := st.Blobs().CompressedBytes() - before; got != finalSize {
		t.Fatalf("the build compressed %d bytes; want only the result's layer, %d bytes (the build stage's 3 MiB stay snapshots)", got, finalSize)
	}
	stored := st.Blobs().CompressedBytes()
	var pushed []string
	for i := range 2 {
		d, err := registry.PushImage(ctx, res.Image, reg.Host+"/lazy/app:1", registry.PushOptions{})
		if err != nil {
			t.Fatalf("push %d: %v", i+1, err)
		}
		pushed = append(pushed, d.String())
	}
	if err := registry.WriteOCILayout(ctx, t.TempDir(), res.Image, nil, "lazy:1"); err != nil {
		t.Fatal(err)
	}
	if n := st.Blobs().CompressedBytes(); n != stored {
		t.Fatalf("pushing twice and writing a layout compressed %d more bytes, want none", n-stored)
	}

	// The same build where every layer is committed at once.
	vst := newVFSStore(t)
	busyboxBase(t, vst)
	vres, err := Build(ctx, Options{Store: vst, ContextDir: dir, Tags: []string{"lazy:1"}, StepOptions: StepOptions{SourceDateEpoch: &epoch}})
	if err != nil {
		t.Fatal(err)
	}
	vcf, _ := vres.Image.ConfigFile()
	if vcf.RootFS.DiffIDs[0] != cf.RootFS.DiffIDs[0] {
		t.Fatalf("diff IDs differ: %v vs %v", cf.RootFS.DiffIDs, vcf.RootFS.DiffIDs)
	}
	vd, err := registry.PushImage(ctx, vres.Image, reg.Host+"/lazy/eager:1", registry.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if vd.String() != pushed[0] || pushed[0] != pushed[1] {
		t.Fatalf("pushed %v lazily, %s eagerly: want one digest", pushed, vd)
	}
}

// newVFSStore is a store on containers/storage's vfs driver, which keeps
// no per-layer snapshot, so every layer is committed at once.
func newVFSStore(t *testing.T) *layers.Store {
	t.Helper()
	st, err := layers.OpenStore(context.Background(), t.TempDir(), layers.WithSnapshotter(layers.SnapshotterVFS))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	return st
}

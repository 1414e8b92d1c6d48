package builder

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"strings"
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

// TestBuildPushStreamsLayers: a build that pushes sends the result's
// layer to the registry while it compresses it (the first blob request
// sent is the stream's, before the push asks whether any blob is there),
// every blob's bytes cross once, and the image in the registry is
// the one stored; a registry that fails the stream changes nothing but
// who uploads.
func TestBuildPushStreamsLayers(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end builds")
	}
	big := make([]byte, 3<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM scratch AS build\nCOPY big /big\nFROM scratch\nCOPY --from=build /big /app/big\n",
		"big":        string(big),
	})
	reg := registrytest.Start(t)
	px := registrytest.NewProxy(t, reg.Host)
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		fail   bool
		stream bool
	}{{"streamed", false, true}, {"stream fails", true, false}} {
		t.Run(tc.name, func(t *testing.T) {
			st := newStore(t)
			px.Requests()
			px.Uploaded()
			if tc.fail {
				px.FailEvery(1, 1) // the first blob request: the stream's POST
				defer px.FailEvery(0, 0)
			}
			ref := px.Host + "/stream/" + strings.ReplaceAll(tc.name, " ", "-") + ":1"
			res, err := Build(ctx, Options{Store: st, ContextDir: dir, Push: []string{ref}})
			if err != nil {
				t.Fatal(err)
			}
			var blobReqs []string
			for _, r := range px.Requests() {
				if strings.Contains(r, "/blobs/") {
					blobReqs = append(blobReqs, r)
				}
			}
			if len(blobReqs) == 0 {
				t.Fatal("no blob requests")
			}
			first := func(method string) int {
				for i, r := range blobReqs {
					if strings.HasPrefix(r, method+" ") {
						return i
					}
				}
				return len(blobReqs)
			}
			// Streamed: bytes went up before the push asked for any blob.
			if streamed := first("PATCH") < first("HEAD"); streamed != tc.stream {
				t.Errorf("blob requests %q: streamed = %v, want %v", blobReqs, streamed, tc.stream)
			}
			ls, err := res.Image.Layers()
			if err != nil || len(ls) != 1 {
				t.Fatalf("%d layers, %v", len(ls), err)
			}
			size, _ := ls[0].Size()
			cfg, _ := res.Image.RawConfigFile()
			if n := px.Uploaded(); n != size+int64(len(cfg)) {
				t.Errorf("%d bytes uploaded, want the layer's %d and the config's %d once", n, size, len(cfg))
			}
			want, _ := res.Image.Digest()
			if len(res.Pushed) != 1 || res.Pushed[0].Digest != want {
				t.Fatalf("pushed %+v, want %s", res.Pushed, want)
			}
			ld, _ := ls[0].Digest()
			resp, err := http.Get("http://" + reg.Host + "/v2/stream/" + strings.ReplaceAll(tc.name, " ", "-") + "/blobs/" + ld.String())
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			rc, err := ls[0].Compressed()
			if err != nil {
				t.Fatal(err)
			}
			local, _ := io.ReadAll(rc)
			rc.Close()
			if resp.StatusCode != http.StatusOK || !bytes.Equal(got, local) {
				t.Fatalf("the registry's %s: %s, %d bytes; want the stored blob's %d", ld, resp.Status, len(got), len(local))
			}
		})
	}
}

package builder

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
)

// opaqueRootBase stores "opaque:1": busybox:1 with a layer on top whose
// root is opaque (.wh..wh..opq at the top of its tar) and which brings
// busybox back, so nothing of the layers below (/etc/passwd) exists in
// the image.
func opaqueRootBase(t *testing.T, st *layers.Store) {
	t.Helper()
	ctx := context.Background()
	base := busyboxBase(t, st)
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mod := time.Unix(1700000000, 0)
	for _, h := range []*tar.Header{
		{Typeflag: tar.TypeReg, Name: ".wh..wh..opq", ModTime: mod},
		{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755, ModTime: mod},
		{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb)), ModTime: mod},
		{Typeflag: tar.TypeSymlink, Name: "bin/sh", Linkname: "busybox", Mode: 0o777, ModTime: mod},
		{Typeflag: tar.TypeReg, Name: "only-new", Mode: 0o644, ModTime: mod},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Name == "bin/busybox" {
			tw.Write(bb)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	d, err := st.Blobs().CommitTar(ctx, &buf, layers.CommitOptions{Compression: layers.Gzip})
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.Append(base.Image, mutate.Addendum{Layer: st.Blobs().Layer(d), History: v1.History{CreatedBy: "opaque root"}})
	if err != nil {
		t.Fatal(err)
	}
	desc, err := st.WriteImage(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Tag(ctx, "opaque:1", desc); err != nil {
		t.Fatal(err)
	}
}

// TestRunOverOpaqueRootLayer checks that RUN, on each snapshotter RUN
// supports, sees the image the OCI image spec defines when a base layer
// has an opaque whiteout at its root: none of the files of the layers
// below it, as the flattened image (--output type=local) has none.
func TestRunOverOpaqueRootLayer(t *testing.T) {
	if testing.Short() {
		t.Skip("builds images with RUN")
	}
	for _, snap := range []string{layers.SnapshotterOverlay, layers.SnapshotterVFS} {
		t.Run(snap, func(t *testing.T) {
			ctx := context.Background()
			st, err := layers.OpenStore(ctx, filepath.Join(t.TempDir(), "root"), layers.WithSnapshotter(snap))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			opaqueRootBase(t, st)
			dir := writeContext(t, map[string]string{"Dockerfile": "FROM opaque:1\n" +
				`RUN ["/bin/busybox", "sh", "-c", "if [ -e /etc/passwd ]; then echo visible; else echo hidden; fi > /seen; /bin/busybox ls / > /listing"]` + "\n"})
			res, err := Build(ctx, Options{Store: st, ContextDir: dir, Tags: []string{"over-opaque:1"}})
			if err != nil {
				t.Fatal(err)
			}
			root := filepath.Join(t.TempDir(), "rootfs")
			if err := registry.WriteRootFS(ctx, root, res.Image, nil); err != nil {
				t.Fatal(err)
			}
			wantAbsent(t, root, "/etc/passwd")
			wantFile(t, root, "/only-new", "")
			if got := readFileIn(t, root, "/seen"); got != "hidden\n" {
				t.Errorf("RUN saw /etc/passwd of a layer below the opaque root (%q; listing of /: %q)", got, readFileIn(t, root, "/listing"))
			}
		})
	}
}

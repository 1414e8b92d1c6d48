package builder

import (
	"context"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry"
)

// vfsDockerfile covers what TestRun checks of the sandbox: files written,
// base files deleted, chown, USER, generated /etc files that must not
// leak, /proc and /dev, and cache and secret mounts whose targets must
// not land in a layer.
const vfsDockerfile = "FROM busybox:1\n" +
	"RUN mkdir -p /data && mkdir -m 1777 /tmp && echo x > /data/f && echo keep > /etc/keep && rm /etc/group && chown 1000:50 /data/f && ln -s /data/f /data/link\n" +
	"RUN cat /etc/hosts /etc/resolv.conf > /dev/null && test ! -e /etc/hostname && test \"$(hostname)\" = ibuild && test -d /proc/self && echo hi > /dev/null && head -c 4 /dev/zero | wc -c > /zero && ls /proc/1/cmdline > /dev/null\n" +
	"USER app\n" +
	"RUN id -u > /tmp/uid && id -G > /tmp/groups\n" +
	"USER root\n" +
	"RUN --mount=type=cache,target=/var/cache/new/c echo c > /var/cache/new/c/f && echo out > /out\n" +
	"RUN --mount=type=secret,id=tok,target=/run/secrets/deep/tok cat /run/secrets/deep/tok > /tokcopy\n" +
	"RUN --mount=type=cache,target=/data/cachedir echo in > /data/cachedir/f && echo beside > /data/beside\n" +
	"RUN --mount=type=secret,id=tok ls /run/secrets/tok > /dev/null\n" +
	"WORKDIR /work/dir\n" +
	"RUN echo here > f && rm -rf /data/link && touch /etc/keep\n" +
	// The unpacked root keeps no mount point a step made.
	"RUN test ! -e /var/cache/new && test ! -e /run && test ! -e /data/cachedir\n"

// TestRunVFS builds one Dockerfile on an overlay store and on a vfs store
// (where steps run over the unpacked root) and compares the flattened
// images and every added layer's entries.
func TestRunVFS(t *testing.T) {
	build := func(st *layers.Store, name string) ([]string, [][]string, v1.Image) {
		t.Helper()
		base := busyboxBase(t, st)
		baseCfg, err := base.Image.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		dir := writeContext(t, map[string]string{"Dockerfile": vfsDockerfile})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		res, err := Build(ctx, Options{
			Store: st, ContextDir: dir, NoCache: true, Tags: []string{"vfs-" + name + ":1"},
			StepOptions: StepOptions{Secrets: map[string]SecretSource{"tok": {Value: []byte("s3cret\n")}}},
		})
		if err != nil {
			t.Fatalf("%s store: %v", name, err)
		}
		root := filepath.Join(t.TempDir(), "rootfs")
		if err := registry.WriteRootFS(ctx, root, res.Image, nil); err != nil {
			t.Fatal(err)
		}
		ls, err := res.Image.Layers()
		if err != nil {
			t.Fatal(err)
		}
		var entries [][]string
		for _, l := range ls[len(baseCfg.RootFS.DiffIDs):] {
			entries = append(entries, layerEntries(t, l))
		}
		if ents, _ := filepath.Glob(filepath.Join(st.Root(), "tmp", "rootfs-*")); len(ents) > 0 {
			t.Errorf("%s store: unpacked roots left behind: %q", name, ents)
		}
		return treeListing(t, root), entries, res.Image
	}
	ovl := newStore(t)
	if got, err := ovl.ResolvedSnapshotter(); err != nil || got != layers.SnapshotterOverlay {
		layertest.SkipOrFail(t, "the default store uses %s snapshots (%v), not overlay: nothing to compare with", got, err)
	}
	vst, err := layers.OpenStore(context.Background(), filepath.Join(t.TempDir(), "vfs"), layers.WithSnapshotter(layers.SnapshotterVFS))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := vst.Close(); err != nil {
			t.Error(err)
		}
	})
	overlayTree, overlayLayers, _ := build(ovl, "overlay")
	vfsTree, vfsLayers, img := build(vst, "vfs")
	if d := listDiff(overlayTree, vfsTree); d != "" {
		t.Errorf("flattened trees differ (- overlay, + vfs):\n%s", d)
	}
	if len(overlayLayers) != len(vfsLayers) {
		t.Fatalf("overlay made %d layers, vfs %d", len(overlayLayers), len(vfsLayers))
	}
	for i := range overlayLayers {
		t.Logf("layer %d: %d entries on vfs:\n  %s", i+1, len(vfsLayers[i]), strings.Join(vfsLayers[i], "\n  "))
		if d := listDiff(overlayLayers[i], vfsLayers[i]); d != "" {
			t.Errorf("layer %d differs (- overlay, + vfs):\n%s", i+1, d)
		}
	}
	// Spot checks of what both must hold.
	root := filepath.Join(t.TempDir(), "rootfs")
	if err := registry.WriteRootFS(context.Background(), root, img, nil); err != nil {
		t.Fatal(err)
	}
	wantFile(t, root, "/tmp/uid", "1000\n")
	wantFile(t, root, "/zero", "4\n")
	wantFile(t, root, "/tokcopy", "s3cret\n")
	wantFile(t, root, "/data/beside", "beside\n")
	wantFile(t, root, "/work/dir/f", "here\n")
	for _, p := range []string{"/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/etc/group",
		"/var/cache/new", "/run", "/data/cachedir", "/data/link"} {
		wantAbsent(t, root, p)
	}
	// The base's RUN left the /proc, /dev, /sys mount points (as docker
	// build does) on both stores.
	for _, p := range []string{"/proc", "/dev", "/sys"} {
		if st := statOf(t, root, p); st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			t.Errorf("%s is not a directory", p)
		}
	}
}

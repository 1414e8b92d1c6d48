package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/layers/layertest"
)

// bigFileSizes are the sizes (MiB) of the big build-context file the crash
// tests try in turn: when a build finishes before the test could kill it,
// the next, bigger size is tried; after the last the test fails.
var bigFileSizes = []int{256, 512}

// killThreshold is how big the growing temporary file must be before the
// build is killed: far enough into the step to be in its middle.
const killThreshold = 8 << 20

// writeBigFile writes mib MiB of semi-random bytes (2 KiB random blocks
// each followed by its copy, so gzip halves them) to p and returns their
// sha256. The same seed gives the same bytes.
func writeBigFile(t *testing.T, p string, mib int, seed byte) string {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var key [32]byte
	key[0] = seed
	r := rand.NewChaCha8(key)
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for range mib {
		for off := 0; off < len(buf); off += 4 << 10 {
			r.Read(buf[off : off+2<<10])
			copy(buf[off+2<<10:off+4<<10], buf[off:off+2<<10])
		}
		h.Write(buf)
		if _, err := f.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// writeContext makes a build context holding files (name to content) and
// returns its directory.
func writeContext(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// runningBuild is an `ibuild build` the test started.
type runningBuild struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	err  error         // set before done is closed
	done chan struct{} // closed once the build has exited
}

// startBuild starts `ibuild --root root build -t tag ctxDir`.
func startBuild(t *testing.T, root, tag, ctxDir string) *runningBuild {
	t.Helper()
	b := &runningBuild{done: make(chan struct{})}
	b.cmd = exec.Command(ibuildBin, "--root", root, "build", "--progress", "plain", "-t", tag, ctxDir)
	b.cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=")
	b.cmd.Stdout, b.cmd.Stderr = &b.out, &b.out
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		b.err = b.cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(b.kill)
	return b
}

// waitUntil polls cond every 2 ms until it returns a non-empty description
// of what the build is doing, and returns it; it returns "" when the build
// finished first. It fails the test if the build failed, or if neither
// happened within a minute.
func (b *runningBuild) waitUntil(t *testing.T, cond func() string) string {
	t.Helper()
	deadline := time.After(time.Minute)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-b.done:
			if b.err != nil {
				t.Fatalf("build failed: %v\n%s", b.err, b.out.String())
			}
			return ""
		case <-deadline:
			b.kill()
			t.Fatalf("the build neither finished nor reached the awaited point within a minute\n%s", b.out.String())
		case <-tick.C:
		}
		if what := cond(); what != "" {
			return what
		}
	}
}

// wait waits, at most a minute, for the build to end and returns its error.
func (b *runningBuild) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-b.done:
		return b.err
	case <-time.After(time.Minute):
		b.kill()
		t.Fatalf("the build did not finish within a minute\n%s", b.out.String())
		return nil
	}
}

// kill ends the build, if it still runs, and waits for it; its output may
// be read afterwards.
func (b *runningBuild) kill() {
	b.cmd.Process.Kill()
	<-b.done
}

// buildKilledWhen starts `ibuild --root root build -t tag ctxDir` and sends
// it SIGKILL as soon as killNow returns a non-empty description of what the
// build is doing. It reports that description, or "" when the build
// finished first.
func buildKilledWhen(t *testing.T, root, tag, ctxDir string, killNow func() string) string {
	t.Helper()
	b := startBuild(t, root, tag, ctxDir)
	what := b.waitUntil(t, killNow)
	if what == "" {
		return ""
	}
	b.kill() // SIGKILL
	// Only a death by the signal counts: the build may have finished
	// between the poll and the kill.
	if ws, ok := b.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		if b.err != nil {
			t.Fatalf("build failed: %v\n%s", b.err, b.out.String())
		}
		return ""
	}
	t.Logf("killed the build while %s", what)
	return what
}

// growingTemp returns a killNow for buildKilledWhen: it fires once a file
// matching pattern (a glob relative to root/tmp) is at least killThreshold
// bytes long.
func growingTemp(root, pattern string) func() string {
	return func() string {
		ms, _ := filepath.Glob(filepath.Join(root, "tmp", pattern))
		for _, m := range ms {
			if fi, err := os.Lstat(m); err == nil && fi.Mode().IsRegular() && fi.Size() >= killThreshold {
				rel, _ := filepath.Rel(root, m)
				return fmt.Sprintf("%s held %d bytes", rel, fi.Size())
			}
		}
		return ""
	}
}

// tmpLeftovers lists root/tmp entries whose names match pattern.
func tmpLeftovers(t *testing.T, root, pattern string) []string {
	t.Helper()
	ms, err := filepath.Glob(filepath.Join(root, "tmp", pattern))
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// imageNames is what `ibuild images` lists.
func imageNames(t *testing.T, root string) []string {
	t.Helper()
	var rows []struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal([]byte(mustIbuild(t, root, "images", "--format", "json")), &rows); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range rows {
		names = append(names, r.Name)
	}
	return names
}

// diffIDs are the layer diff IDs (hex) of the stored image ref.
func diffIDs(t *testing.T, root, ref string) []string {
	t.Helper()
	var v struct {
		Config struct {
			RootFS struct {
				DiffIDs []string `json:"diff_ids"`
			} `json:"rootfs"`
		} `json:"config"`
	}
	if err := json.Unmarshal([]byte(mustIbuild(t, root, "inspect", ref)), &v); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range v.Config.RootFS.DiffIDs {
		out = append(out, strings.TrimPrefix(d, "sha256:"))
	}
	return out
}

// pruneKeepsFreshLeftovers checks the documented prune behaviour for the
// temporary files a killed build left: they are younger than PruneGrace,
// so prune keeps them; once older, prune removes them. keep must survive
// both prunes.
func pruneKeepsFreshLeftovers(t *testing.T, root string, leftovers []string, keep ...string) {
	t.Helper()
	mustIbuild(t, root, "prune")
	for _, p := range leftovers {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("prune removed %s, younger than PruneGrace (%v): %v", p, layers.PruneGrace, err)
		}
	}
	old := time.Now().Add(-layers.PruneGrace - time.Minute)
	for _, p := range leftovers {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	mustIbuild(t, root, "prune")
	for _, p := range leftovers {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("prune kept %s, older than PruneGrace", p)
		}
	}
	for _, ref := range keep {
		mustIbuild(t, root, "inspect", ref)
	}
	layertest.CheckBlobs(t, root)
}

// TestBuildKilledDuringLayerCommit kills a build with SIGKILL while it
// writes a layer blob, and expects a store that the next build uses
// without error: no partial blob under a digest, no tag for the killed
// build, and leftovers that prune removes once they are old.
func TestBuildKilledDuringLayerCommit(t *testing.T) {
	endToEnd(t)
	for attempt, mib := range bigFileSizes {
		root := filepath.Join(t.TempDir(), "root")
		// A small layer first, so the kill lands in a store that already
		// holds a blob of this build.
		ctxDir := writeContext(t, map[string]string{
			"Dockerfile": "FROM scratch\nCOPY small /small\nCOPY big /big\n",
			"small":      "small\n",
		})
		writeBigFile(t, filepath.Join(ctxDir, "big"), mib, 1)
		if buildKilledWhen(t, root, "x:1", ctxDir, growingTemp(root, "blob-*")) == "" {
			if attempt == len(bigFileSizes)-1 {
				t.Fatalf("a build of a %d MiB file finished before the test could kill it during the layer commit: the test proves nothing", mib)
			}
			t.Logf("the build of a %d MiB file finished before the kill; trying a bigger one", mib)
			continue
		}

		// The killed build left its partial blob in tmp/, never under a
		// digest, and tagged nothing.
		leftovers := tmpLeftovers(t, root, "*")
		if len(tmpLeftovers(t, root, "blob-*")) == 0 {
			t.Fatalf("no partial blob in tmp/ after the kill: %v", leftovers)
		}
		if n := len(layertest.CheckBlobs(t, root)); n == 0 {
			t.Error("the small layer committed before the kill is not stored")
		}
		if _, errOut, code := ibuild(t, root, "", "inspect", "x:1"); code == 0 {
			t.Fatal("the killed build tagged x:1")
		} else if !strings.Contains(errOut, "not known") {
			t.Errorf("inspect x:1 after the kill: %s", errOut)
		}

		// The next build uses the store as it is.
		mustIbuild(t, root, "build", "-q", "-t", "x:1", ctxDir)
		if names := imageNames(t, root); !slices.Equal(names, []string{"localhost/x:1"}) {
			t.Errorf("images lists %v, want [localhost/x:1]", names)
		}
		layertest.CheckBlobs(t, root)
		pruneKeepsFreshLeftovers(t, root, leftovers, "x:1")
		return
	}
}

// TestBuildKilledDuringSnapshot kills a build with SIGKILL while it
// extracts its base image's big layer into a snapshot, and expects the next
// build to succeed with a complete snapshot. It checks the native
// snapshotter's own crash safety (temporary directory, rename), so it runs
// every ibuild with --storage-driver native, root or not; containers/storage
// discards its incomplete layers itself.
func TestBuildKilledDuringSnapshot(t *testing.T) {
	endToEnd(t)
	t.Setenv("IBUILD_STORAGE_DRIVER", "native")
	for attempt, mib := range bigFileSizes {
		root := filepath.Join(t.TempDir(), "root")
		baseDir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY big /big\n"})
		bigSum := writeBigFile(t, filepath.Join(baseDir, "big"), mib, 2)
		buildWithoutSnapshot(t, root, "base:1", baseDir)
		// The big file is in the base image; the context copy is not needed.
		if err := os.Remove(filepath.Join(baseDir, "big")); err != nil {
			t.Fatal(err)
		}
		ids := diffIDs(t, root, "base:1")
		if len(ids) != 1 {
			t.Fatalf("base:1 has diff IDs %v, want one", ids)
		}
		// One layer: its chain ID is its diff ID.
		snap := filepath.Join(root, "snapshots", ids[0])
		if _, err := os.Lstat(snap); err == nil {
			t.Fatalf("building base:1 made its snapshot %s already: nothing to kill", snap)
		}

		childDir := writeContext(t, map[string]string{
			"Dockerfile": "FROM base:1\nCOPY small /small\n",
			"small":      "small\n",
		})
		if buildKilledWhen(t, root, "child:1", childDir, growingTemp(root, "snapshot-*/big")) == "" {
			if attempt == len(bigFileSizes)-1 {
				t.Fatalf("a build on a %d MiB layer finished before the test could kill it during snapshot extraction: the test proves nothing", mib)
			}
			t.Logf("the build on a %d MiB layer finished before the kill; trying a bigger one", mib)
			continue
		}

		leftovers := tmpLeftovers(t, root, "*")
		if len(tmpLeftovers(t, root, "snapshot-*")) == 0 {
			t.Fatalf("no partial snapshot in tmp/ after the kill: %v", leftovers)
		}
		if _, err := os.Lstat(snap); err == nil {
			t.Fatalf("the killed extraction left %s under its final name", snap)
		}
		layertest.CheckBlobs(t, root)
		if _, _, code := ibuild(t, root, "", "inspect", "child:1"); code == 0 {
			t.Fatal("the killed build tagged child:1")
		}

		mustIbuild(t, root, "build", "-q", "-t", "child:1", childDir)
		if names := imageNames(t, root); !slices.Contains(names, "localhost/child:1") {
			t.Errorf("images lists %v, want localhost/child:1 among them", names)
		}
		// The snapshot is complete: the layer's one file, whole.
		ents, err := os.ReadDir(snap)
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) != 1 || ents[0].Name() != "big" || !ents[0].Type().IsRegular() {
			t.Fatalf("snapshot %s holds %v, want just the file big", snap, ents)
		}
		if got := layertest.FileDigest(t, filepath.Join(snap, "big")).Hex; got != bigSum {
			t.Fatalf("snapshot's big has sha256 %s, the context's had %s", got, bigSum)
		}
		pruneKeepsFreshLeftovers(t, root, leftovers, "base:1", "child:1")
		if _, err := os.Lstat(snap); err != nil {
			t.Errorf("prune removed the snapshot of base:1, which child:1 uses: %v", err)
		}
		return
	}
}

// TestPruneDuringLongBuild runs `ibuild prune` while a build commits its
// second layer, after making the build's first layer look older than
// PruneGrace, as it is in a build that has run that long. The Store's
// locking rule says a build holds the shared store lock from its first
// write until it tags, so prune must leave that layer alone (by waiting);
// the build must succeed and its image must be whole.
//
// It fails while builder.Build takes no store lock of its own (only the
// short ones inside Snapshots, WriteImage and Tag) and so relies on
// PruneGrace alone: a build running longer than that loses its earlier
// layers to a concurrent prune.
func TestPruneDuringLongBuild(t *testing.T) {
	endToEnd(t)
	for attempt, mib := range bigFileSizes {
		root := filepath.Join(t.TempDir(), "root")
		ctxDir := writeContext(t, map[string]string{
			"Dockerfile": "FROM scratch\nCOPY small /small\nCOPY big /big\n",
			"small":      "small\n",
		})
		writeBigFile(t, filepath.Join(ctxDir, "big"), mib, 3)
		b := startBuild(t, root, "x:1", ctxDir)
		what := b.waitUntil(t, growingTemp(root, "blob-*"))
		if what == "" {
			if attempt == len(bigFileSizes)-1 {
				t.Fatalf("a build of a %d MiB file finished before the test could prune during its layer commit: the test proves nothing", mib)
			}
			t.Logf("the build of a %d MiB file finished before the prune; trying a bigger one", mib)
			continue
		}
		// Everything the build stored so far (the first layer's blob and
		// snapshot) was written "more than PruneGrace ago".
		old := time.Now().Add(-layers.PruneGrace - time.Minute)
		var aged []string
		for _, pattern := range []string{"blobs/sha256/*", "snapshots/*"} {
			ms, _ := filepath.Glob(filepath.Join(root, pattern))
			aged = append(aged, ms...)
		}
		if len(aged) == 0 {
			t.Fatal("the build stored nothing before its second layer")
		}
		for _, p := range aged {
			if err := os.Chtimes(p, old, old); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("pruning while %s", what)
		out := mustIbuild(t, root, "prune")
		buildErr := b.wait(t)
		for _, p := range aged {
			if _, err := os.Lstat(p); err != nil {
				rel, _ := filepath.Rel(root, p)
				t.Errorf("prune deleted %s, written by the running build (%s): the build does not hold the shared store lock (layers.Store.Lock) from its first write until it tags", rel, strings.TrimSpace(out))
			}
		}
		if buildErr != nil {
			t.Fatalf("the build failed after a concurrent prune: %v\n%s", buildErr, b.out.String())
		}
		mustIbuild(t, root, "inspect", "x:1")
		layertest.CheckBlobs(t, root)
		return
	}
}

// TestBuildKilledDuringStorageLayer kills a build while containers/storage
// (overlay, as root) is writing a base layer for the build's snapshots:
// the next build must succeed and find the layer whole.
func TestBuildKilledDuringStorageLayer(t *testing.T) {
	endToEnd(t)
	if os.Geteuid() != 0 {
		layertest.SkipOrFail(t, "containers/storage snapshots need root (unprivileged builds use native snapshots)")
	}
	t.Setenv("IBUILD_STORAGE_DRIVER", "overlay")
	for attempt, mib := range bigFileSizes {
		root := filepath.Join(t.TempDir(), "root")
		baseDir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY big /big\n"})
		bigSum := writeBigFile(t, filepath.Join(baseDir, "big"), mib, 3)
		buildWithoutSnapshot(t, root, "base:1", baseDir)
		ids := diffIDs(t, root, "base:1")
		if len(ids) != 1 {
			t.Fatalf("base:1 has diff IDs %v, want one", ids)
		}
		// One layer: its chain ID, the storage layer's ID, is its diff ID.
		diff := filepath.Join(root, "storage", "overlay", ids[0], "diff")
		if _, err := os.Lstat(diff); err == nil {
			t.Fatalf("building base:1 stored its layer already: nothing to kill")
		}
		childDir := writeContext(t, map[string]string{
			"Dockerfile": "FROM base:1\nCOPY small /small\n",
			"small":      "small\n",
		})
		growing := func() string {
			// The overlay driver stages a new layer under tempdirs/ and
			// moves it into place when it is complete.
			ms, _ := filepath.Glob(filepath.Join(root, "storage", "overlay", "tempdirs", "*", "*", "big"))
			ms2, _ := filepath.Glob(filepath.Join(root, "storage", "overlay", "*", "diff", "big"))
			for _, m := range append(ms, ms2...) {
				if fi, err := os.Lstat(m); err == nil && fi.Size() >= killThreshold && fi.Size() < int64(mib)<<20 {
					rel, _ := filepath.Rel(root, m)
					return fmt.Sprintf("%s held %d bytes", rel, fi.Size())
				}
			}
			return ""
		}
		if buildKilledWhen(t, root, "child:1", childDir, growing) == "" {
			if attempt == len(bigFileSizes)-1 {
				t.Fatalf("a build on a %d MiB layer finished before the test could kill it while storing the layer: the test proves nothing", mib)
			}
			continue
		}
		layertest.CheckBlobs(t, root)
		if _, _, code := ibuild(t, root, "", "inspect", "child:1"); code == 0 {
			t.Fatal("the killed build tagged child:1")
		}
		mustIbuild(t, root, "build", "-q", "-t", "child:1", childDir)
		if got := layertest.FileDigest(t, filepath.Join(diff, "big")).Hex; got != bigSum {
			t.Fatalf("the stored layer's big has sha256 %s, the context's had %s", got, bigSum)
		}
		out := mustIbuild(t, root, "build", "-q", "--output", "type=local,dest="+filepath.Join(t.TempDir(), "out"), childDir)
		if strings.TrimSpace(out) == "" {
			t.Fatal("no image ID")
		}
		mustIbuild(t, root, "prune")
		return
	}
}

// buildWithoutSnapshot builds dir as name and leaves no snapshot of its
// layers: a build keeps the directories it wrote its layers in as their
// snapshots (and its cache records keep them), so the image is built in
// another store, written as an OCI layout, and taken from there with a
// Dockerfile that is only FROM, which extracts nothing.
func buildWithoutSnapshot(t *testing.T, root, name, dir string) {
	t.Helper()
	layout := filepath.Join(t.TempDir(), "layout")
	mustIbuild(t, t.TempDir(), "build", "-q", "--output", "type=oci,tar=false,dest="+layout, dir)
	from := writeContext(t, map[string]string{"Dockerfile": "FROM oci-layout://" + layout + "\n"})
	mustIbuild(t, root, "build", "-q", "-t", name, from)
}

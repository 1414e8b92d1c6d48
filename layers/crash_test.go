package layers_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/layers/layertest"
)

// crashChildEnv carries a childSpec (JSON) to TestHelperProcessCommit and
// TestHelperProcessSnapshots when the tests below re-execute the test binary.
const crashChildEnv = "IBUILD_TEST_CRASH_CHILD"

// childSpec tells a helper process what to do.
type childSpec struct {
	Root  string // store root
	Dir   string // commit: the tree to commit
	Ref   string // snapshots: the image name
	Ready string // file the child creates once it is ready to start
	Start string // file the child waits for before it starts
	// Snapshotter is the store's snapshotter ("" for the default).
	Snapshotter string
}

// childResultPrefix starts the line on which a helper prints its result.
const childResultPrefix = "CHILD_RESULT="

// childSetup parses the spec of a helper process and opens its store; it
// skips when the test binary was not started as a helper.
func childSetup(t *testing.T) (childSpec, *layers.Store) {
	t.Helper()
	raw := os.Getenv(crashChildEnv)
	if raw == "" {
		t.Skip("helper process only")
	}
	var spec childSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		t.Fatal(err)
	}
	s, err := layers.OpenStore(context.Background(), spec.Root, layers.WithSnapshotter(spec.Snapshotter))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return spec, s
}

// childWaitStart announces that the helper is ready and waits, at most 20 s,
// for the parent's start signal, so that all helpers begin together.
func childWaitStart(t *testing.T, spec childSpec) {
	t.Helper()
	if err := os.WriteFile(spec.Ready, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !lexists(spec.Start) {
		if time.Now().After(deadline) {
			t.Fatal("no start signal within 20s")
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// childResult is what a helper prints: its value and when it started and
// finished its work, in Unix nanoseconds.
type childResult[T any] struct {
	Value      T
	Start, End int64
}

func childReport[T any](t *testing.T, v T, start time.Time) {
	t.Helper()
	b, err := json.Marshal(childResult[T]{Value: v, Start: start.UnixNano(), End: time.Now().UnixNano()})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("\n%s%s\n", childResultPrefix, b)
}

// TestHelperProcessCommit is a child of TestConcurrentCommitProcesses: it
// commits spec.Dir into the store at spec.Root and prints the descriptor.
func TestHelperProcessCommit(t *testing.T) {
	spec, s := childSetup(t)
	childWaitStart(t, spec)
	start := time.Now()
	d, err := s.Blobs().CommitDir(context.Background(), spec.Dir, layers.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	childReport(t, d, start)
}

// TestHelperProcessSnapshots is a child of TestConcurrentSnapshotsProcesses:
// it takes the snapshots of spec.Ref and prints their directories.
func TestHelperProcessSnapshots(t *testing.T) {
	spec, s := childSetup(t)
	ctx := context.Background()
	desc, err := s.Lookup(ctx, spec.Ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.Image(ctx, desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	childWaitStart(t, spec)
	start := time.Now()
	dirs, err := s.Snapshots(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	childReport(t, dirs, start)
}

// runChildren runs n helper processes (the test named helper) on specs made
// by spec, releases them together once all are ready, and returns each one's
// result. It fails unless all of them were at work at one instant, so that
// the callers' assertions are about truly concurrent calls. Every wait is
// bounded.
func runChildren[T any](t *testing.T, helper string, n int, spec func(i int) childSpec) []T {
	t.Helper()
	syncDir := t.TempDir()
	start := filepath.Join(syncDir, "start")
	type child struct {
		cmd  *exec.Cmd
		out  bytes.Buffer
		err  error         // set before done is closed
		done chan struct{} // closed once the child has exited
	}
	children := make([]*child, n)
	ready := make([]string, n)
	for i := range n {
		sp := spec(i)
		ready[i] = filepath.Join(syncDir, fmt.Sprintf("ready-%d", i))
		sp.Ready, sp.Start = ready[i], start
		raw, err := json.Marshal(sp)
		if err != nil {
			t.Fatal(err)
		}
		c := &child{done: make(chan struct{})}
		c.cmd = exec.Command(os.Args[0], "-test.run=^"+helper+"$", "-test.count=1", "-test.v")
		c.cmd.Env = append(os.Environ(), crashChildEnv+"="+string(raw))
		c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.out
		if err := c.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			c.err = c.cmd.Wait()
			close(c.done)
		}()
		children[i] = c
	}
	killAll := func() {
		for _, c := range children {
			c.cmd.Process.Kill()
		}
		for _, c := range children {
			<-c.done
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; i < n; {
		if lexists(ready[i]) {
			i++
			continue
		}
		select {
		case <-children[i].done:
			killAll()
			t.Fatalf("child %d exited before it was ready: %v\n%s", i, children[i].err, children[i].out.String())
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			killAll()
			t.Fatal("children not ready within 30s")
		}
	}
	if err := os.WriteFile(start, nil, 0o644); err != nil {
		killAll()
		t.Fatal(err)
	}
	results := make([]childResult[T], n)
	timeout := time.After(60 * time.Second)
	for i, c := range children {
		select {
		case <-c.done:
			if c.err != nil {
				killAll()
				t.Fatalf("child %d failed: %v\n%s", i, c.err, c.out.String())
			}
		case <-timeout:
			killAll()
			t.Fatalf("child %d did not finish within 60s\n%s", i, c.out.String())
		}
		var line string
		for l := range strings.Lines(c.out.String()) {
			if after, ok := strings.CutPrefix(strings.TrimSpace(l), childResultPrefix); ok {
				line = after
			}
		}
		if line == "" {
			t.Fatalf("child %d printed no result:\n%s", i, c.out.String())
		}
		if err := json.Unmarshal([]byte(line), &results[i]); err != nil {
			t.Fatalf("child %d result %q: %v", i, line, err)
		}
	}
	lastStart, firstEnd := results[0].Start, results[0].End
	values := make([]T, n)
	for i, r := range results {
		lastStart, firstEnd = max(lastStart, r.Start), min(firstEnd, r.End)
		values[i] = r.Value
	}
	if lastStart >= firstEnd {
		t.Fatalf("the %d children never all ran at once (the last started %v after the first finished): the test proves nothing", n, time.Duration(lastStart-firstEnd))
	}
	t.Logf("all %d children ran at once for %v", n, time.Duration(firstEnd-lastStart))
	return values
}

func lexists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// crashTreeTime is the mtime of every entry of crashTree.
var crashTreeTime = time.Unix(1700000000, 0)

// crashTree fills dir with a deterministic tree of about files MiB: nested
// directories of 1 MiB files, half random and half repeated (so they
// compress about 2:1), plus a few small text files, every mtime set to
// crashTreeTime. The same seed gives the same bytes.
func crashTree(t testing.TB, dir string, files int, seed uint64) {
	t.Helper()
	var key [32]byte
	key[0] = byte(seed)
	r := rand.NewChaCha8(key)
	buf := make([]byte, 1<<20)
	var paths []string
	for i := range files {
		p := filepath.Join(dir, fmt.Sprintf("d%d/big%02d", i%3, i))
		semiRandom(r, buf)
		mustWriteFile(t, p, buf)
		paths = append(paths, p)
		s := filepath.Join(dir, fmt.Sprintf("d%d/small%02d.txt", i%3, i))
		mustWriteFile(t, s, []byte(strings.Repeat(fmt.Sprintf("line %d\n", i), i+1)))
		paths = append(paths, s)
	}
	// Children before parents, so setting a child's time does not move
	// its directory's again.
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err == nil && p != dir {
			paths = append(paths, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(paths, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, p := range append(paths, dir) {
		if err := os.Chtimes(p, crashTreeTime, crashTreeTime); err != nil {
			t.Fatal(err)
		}
	}
}

// semiRandom fills buf with 2 KiB random blocks, each followed by its copy.
func semiRandom(r *rand.ChaCha8, buf []byte) {
	const half = 2 << 10
	for off := 0; off < len(buf); off += 2 * half {
		blk := buf[off:min(off+half, len(buf))]
		r.Read(blk)
		if off+half < len(buf) {
			copy(buf[off+half:min(off+2*half, len(buf))], blk)
		}
	}
}

func mustWriteFile(t testing.TB, p string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentCommitProcesses has N processes commit the same tree into
// one store at the same moment: all succeed with the same descriptor, the
// blob is stored once and whole, and no temporary file is left behind.
func TestConcurrentCommitProcesses(t *testing.T) {
	src := t.TempDir()
	crashTree(t, src, 6, 1)
	// The reference: the same tree committed alone, in this process.
	want, err := fixtureStore(t).Blobs().CommitDir(context.Background(), src, layers.CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{2, 3, 4} {
		t.Run(fmt.Sprintf("%d-processes", n), func(t *testing.T) {
			// The children also create the store at once (OpenStore).
			root := filepath.Join(t.TempDir(), "store")
			got := runChildren[layers.Descriptor](t, "TestHelperProcessCommit", n, func(int) childSpec {
				return childSpec{Root: root, Dir: src}
			})
			for i, d := range got {
				if d != want {
					t.Errorf("child %d committed %+v, want %+v", i, d, want)
				}
			}
			if names := layertest.CheckBlobs(t, root); !slices.Equal(names, []string{want.Digest.Hex}) {
				t.Errorf("blobs/sha256 holds %v, want just %s", names, want.Digest.Hex)
			}
			if left := dirNames(t, filepath.Join(root, "tmp")); len(left) != 0 {
				t.Errorf("temporary files left behind: %v", left)
			}
			s, err := layers.OpenStore(context.Background(), root)
			if err != nil {
				t.Fatal(err)
			}
			if size, err := s.Blobs().Size(want.Digest); err != nil || size != want.Size {
				t.Errorf("blob size = %d, %v; want %d", size, err, want.Size)
			}
			// The stored blob decompresses to the tar with the diffID.
			rc, err := s.Blobs().Open(want.Digest)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			zr, err := layers.Decompress(rc)
			if err != nil {
				t.Fatal(err)
			}
			defer zr.Close()
			h := sha256.New()
			size, err := io.Copy(h, zr)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(h.Sum(nil)); got != want.DiffID.Hex || size != want.UncompressedSize {
				t.Errorf("blob decompresses to %d bytes with digest %s, want %d bytes, %s", size, got, want.UncompressedSize, want.DiffID)
			}
			// The layout files the children raced to create are valid.
			if recs, err := s.Images(context.Background()); err != nil || len(recs) != 0 {
				t.Errorf("Images = %v, %v; want an empty store", recs, err)
			}
		})
	}
}

// TestConcurrentSnapshotsProcesses has N processes take the snapshots of
// the same image at the same moment: all get the same directories, each
// layer is extracted once and whole, and no temporary directory is left.
func TestConcurrentSnapshotsProcesses(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	crashTree(t, src, 8, 2)
	for _, n := range []int{2, 4} {
		t.Run(fmt.Sprintf("%d-processes", n), func(t *testing.T) {
			s := nativeStore(t)
			d, err := s.Blobs().CommitDir(ctx, src, layers.CommitOptions{})
			if err != nil {
				t.Fatal(err)
			}
			img := fixtureImage(t, "amd64", s.Blobs().Layer(d))
			desc, err := s.WriteImage(ctx, img)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Tag(ctx, "crash:snap", desc); err != nil {
				t.Fatal(err)
			}
			got := runChildren[[]string](t, "TestHelperProcessSnapshots", n, func(int) childSpec {
				return childSpec{Root: s.Root(), Ref: "crash:snap", Snapshotter: layers.SnapshotterNative}
			})
			want := filepath.Join(s.Root(), "snapshots", d.DiffID.Hex)
			for i, dirs := range got {
				if !slices.Equal(dirs, []string{want}) {
					t.Errorf("child %d got snapshots %v, want [%s]", i, dirs, want)
				}
			}
			names := dirNames(t, filepath.Join(s.Root(), "snapshots"))
			if wantNames := []string{d.DiffID.Hex, d.DiffID.Hex + ".lock"}; !slices.Equal(names, wantNames) {
				t.Errorf("snapshots/ holds %v, want %v", names, wantNames)
			}
			if left := dirNames(t, filepath.Join(s.Root(), "tmp")); len(left) != 0 {
				t.Errorf("temporary files left behind: %v", left)
			}
			if diff := compareTrees(t, src, want); diff != "" {
				t.Errorf("snapshot differs from the committed tree:\n%s", diff)
			}
		})
	}
}

// dirNames lists the names in dir, sorted.
func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// compareTrees describes how the regular files and directories under got
// differ from those under want (content, not metadata).
func compareTrees(t testing.TB, want, got string) string {
	t.Helper()
	list := func(root string) map[string]string {
		m := map[string]string{}
		err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if err != nil || p == root {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			switch {
			case e.IsDir():
				m[rel] = "dir"
			case e.Type().IsRegular():
				m[rel] = layertest.FileDigest(t, p).String()
			default:
				m[rel] = e.Type().String()
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	w, g := list(want), list(got)
	var diffs []string
	for p, v := range w {
		if g[p] != v {
			diffs = append(diffs, fmt.Sprintf("%s: got %q, want %q", p, g[p], v))
		}
	}
	for p, v := range g {
		if _, ok := w[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: unexpected %q", p, v))
		}
	}
	slices.Sort(diffs)
	return strings.Join(diffs, "\n")
}

package builder

import (
	"archive/tar"
	"bytes"
	"context"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
)

// squashTar is a layer tar of entries: a name ending in "/" is a
// directory, a name with "->" a symlink; the rest are files holding body.
func squashTar(t *testing.T, entries ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e, Mode: 0o644, ModTime: time.Unix(1600000000, 0), Typeflag: tar.TypeReg}
		body := ""
		switch {
		case strings.HasSuffix(e, "/"):
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		case strings.Contains(e, "->"):
			h.Name, h.Linkname, _ = strings.Cut(e, "->")
			h.Typeflag = tar.TypeSymlink
		case !strings.HasPrefix(path.Base(e), ".wh."):
			body = "content of " + e + "\n"
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// storeSquashBase stores and tags as name an image for the host platform
// made of hand-written layers, the upper ones with whiteouts.
func storeSquashBase(t *testing.T, st *layers.Store, name string) {
	t.Helper()
	ctx := context.Background()
	tars := [][]byte{
		squashTar(t, "etc/", "etc/a", "etc/b", "d/", "d/x", "d/sub/", "d/sub/y", "lib/", "lib/old"),
		squashTar(t, "etc/", "etc/.wh.a", "d/", "d/.wh..wh..opq", "d/z", "lib->usr/lib", "usr/", "usr/lib/", "usr/lib/libc"),
	}
	p := HostPlatform()
	cfg := &v1.ConfigFile{
		Architecture: p.Architecture, OS: p.OS, Variant: p.Variant,
		Created: v1.Time{Time: time.Unix(1600000000, 0).UTC()},
		Config:  v1.Config{Env: []string{"PATH=/bin"}},
	}
	var ls []v1.Layer
	for i, b := range tars {
		d, err := st.Blobs().CommitTar(ctx, bytes.NewReader(b), layers.CommitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, st.Blobs().Layer(d))
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, d.DiffID)
		cfg.History = append(cfg.History, v1.History{CreatedBy: "base layer " + string(rune('0'+i))})
	}
	cfg.History = append(cfg.History, v1.History{CreatedBy: "base ENV", EmptyLayer: true})
	img, err := assemble(cfg, ls, FormatOCI, nil)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := st.WriteImage(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	n, err := layers.NormalizeName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Tag(ctx, n, desc); err != nil {
		t.Fatal(err)
	}
}

// historyMarks renders a history as one letter per entry: L for an entry
// that made a layer, E for an empty one.
func historyMarks(t *testing.T, img v1.Image) string {
	t.Helper()
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, h := range cfg.History {
		if h.EmptyLayer {
			b.WriteByte('E')
		} else {
			b.WriteByte('L')
		}
	}
	return b.String()
}

// flatTree is the image's flattened file tree (see dumpTree).
func flatTree(t *testing.T, img v1.Image) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "rootfs")
	if err := registry.WriteRootFS(context.Background(), root, img, func(w string) { t.Logf("flatten: %s", w) }); err != nil {
		t.Fatalf("flatten: %v", err)
	}
	return dumpTree(t, root)
}

// whiteoutsIn lists the whiteout markers of every layer of img.
func whiteoutsIn(t *testing.T, img v1.Image) []string {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range ls {
		for _, n := range tarEntries(t, l) {
			if strings.HasPrefix(path.Base(n), ".wh.") {
				out = append(out, n)
			}
		}
	}
	return out
}

func TestSquashBuild(t *testing.T) {
	files := map[string]string{"f1": "one\n", "f2": "two\n", "f3": "three\n"}
	cases := []struct {
		name       string
		dockerfile string
		squashAll  bool
		// layers is the squashed image's layer count, history its
		// history (see historyMarks).
		layers  int
		history string
		// whiteouts are the markers left in the squashed image.
		whiteouts []string
		// same says the squash changes nothing.
		same bool
	}{
		{
			name:       "stage on an image",
			dockerfile: "FROM sqbase:1\nCOPY f1 /etc/a\nENV X=1\nCOPY f2 /d/x\nCOPY f3 /lib/f3\n",
			layers:     3, history: "LLE" + "EEEL",
			whiteouts: []string{"etc/.wh.a", "d/.wh..wh..opq"},
		},
		{
			name:       "all on an image",
			dockerfile: "FROM sqbase:1\nCOPY f1 /etc/a\nENV X=1\nCOPY f2 /d/x\nCOPY f3 /lib/f3\n",
			squashAll:  true,
			layers:     1, history: "EEE" + "EEEL",
		},
		{
			name: "stage on a stage",
			dockerfile: "FROM sqbase:1 AS mid\nCOPY f1 /mid1\nCOPY f2 /mid2\n" +
				"FROM mid\nCOPY f3 /etc/a\nCOPY f1 /usr/lib/f1\n",
			layers: 5, history: "LLE" + "LL" + "EL",
			whiteouts: []string{"etc/.wh.a", "d/.wh..wh..opq"},
		},
		{
			name:       "one layer of its own",
			dockerfile: "FROM sqbase:1\nENV X=1\nCOPY f1 /f1\nLABEL a=b\n",
			layers:     3, history: "LLE" + "ELE",
			whiteouts: []string{"etc/.wh.a", "d/.wh..wh..opq"},
			same:      true,
		},
		{
			name:       "stage from scratch",
			dockerfile: "FROM scratch\nCOPY f1 /f1\nCOPY f2 /f2\nCOPY f3 /f1\n",
			layers:     1, history: "EEL",
		},
	}
	ctx := context.Background()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := newStore(t)
			storeSquashBase(t, st, "sqbase:1")
			ctxFiles := map[string]string{"Dockerfile": tc.dockerfile}
			for k, v := range files {
				ctxFiles[k] = v
			}
			dir := writeContext(t, ctxFiles)
			plain, err := Build(ctx, Options{Store: st, ContextDir: dir, StepOptions: StepOptions{SourceDateEpoch: &epoch}})
			if err != nil {
				t.Fatal(err)
			}
			var steps stepLog
			sq, err := Build(ctx, Options{Store: st, ContextDir: dir, StepOptions: StepOptions{SourceDateEpoch: &epoch, Progress: &steps},
				Squash: !tc.squashAll, SquashAll: tc.squashAll, Tags: []string{"squashed:1"}})
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(steps.pattern("stage-0", "stage-1"), "M") {
				t.Errorf("squashed build after the plain one missed the cache: %s", steps.reasons())
			}
			if err := validate.Image(sq.Image); err != nil {
				t.Fatal(err)
			}
			ls, err := sq.Image.Layers()
			if err != nil {
				t.Fatal(err)
			}
			if len(ls) != tc.layers {
				t.Errorf("%d layers, want %d", len(ls), tc.layers)
			}
			if got := historyMarks(t, sq.Image); got != tc.history {
				t.Errorf("history %s, want %s", got, tc.history)
			}
			if got := whiteoutsIn(t, sq.Image); !slices.Equal(got, tc.whiteouts) {
				t.Errorf("whiteouts %q, want %q", got, tc.whiteouts)
			}
			if got, want := flatTree(t, sq.Image), flatTree(t, plain.Image); got != want {
				t.Errorf("squashed tree differs from the plain build's:\n%s", lineDiff(want, got))
			}
			if (sq.Digest == plain.Digest) != tc.same {
				t.Errorf("squashed digest %s, plain %s: want same=%v", sq.Digest, plain.Digest, tc.same)
			}
			stored, err := st.Lookup(ctx, "squashed:1")
			if err != nil || stored.Digest != sq.Digest {
				t.Errorf("stored as %v (%v), want %s", stored.Digest, err, sq.Digest)
			}
		})
	}
}

func TestSquashReproducible(t *testing.T) {
	ctx := context.Background()
	// No RUN: it needs root (TestSquashRun has one).
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM sqbase:1\nCOPY a /etc/a\nWORKDIR /w\nCOPY b /w/b\n",
		"a":          "a\n",
		"b":          "b\n",
	})
	for _, all := range []bool{false, true} {
		opts := func(st *layers.Store, sink *stepLog) Options {
			o := Options{Store: st, ContextDir: dir, StepOptions: StepOptions{SourceDateEpoch: &epoch}, Squash: !all, SquashAll: all}
			if sink != nil {
				o.Progress = sink
			}
			return o
		}
		var digests []v1.Hash
		for range 2 { // two fresh roots
			st := newStore(t)
			storeSquashBase(t, st, "sqbase:1")
			res, err := Build(ctx, opts(st, nil))
			if err != nil {
				t.Fatal(err)
			}
			digests = append(digests, res.Digest)
			var steps stepLog
			again, err := Build(ctx, opts(st, &steps))
			if err != nil {
				t.Fatal(err)
			}
			if p := steps.pattern("stage-0"); p != "HHH" {
				t.Errorf("all=%v: cached rebuild: steps %s, want HHH", all, p)
			}
			digests = append(digests, again.Digest)
		}
		for _, d := range digests[1:] {
			if d != digests[0] {
				t.Errorf("all=%v: digests differ: %v", all, digests)
				break
			}
		}
	}
}

func TestSquashMultiPlatform(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM scratch\nARG TARGETARCH\nCOPY app-${TARGETARCH} /app\nCOPY common /common\n",
		"app-amd64":  "amd64 binary\n",
		"app-arm64":  "arm64 binary\n",
		"common":     "c\n",
	})
	plats, err := ParsePlatforms("linux/amd64,linux/arm64")
	if err != nil {
		t.Fatal(err)
	}
	res, err := Build(ctx, Options{Store: st, ContextDir: dir, Platforms: plats, Squash: true})
	if err != nil {
		t.Fatal(err)
	}
	im, err := res.Index.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range im.Manifests {
		img, err := res.Index.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		ls, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		if len(ls) != 1 {
			t.Errorf("%s: %d layers, want 1", d.Platform, len(ls))
		}
		tree := flatTree(t, img)
		if !strings.Contains(tree, "app") || !strings.Contains(tree, "common") {
			t.Errorf("%s: tree lacks files:\n%s", d.Platform, tree)
		}
	}
}

func TestSquashExclusive(t *testing.T) {
	_, err := Build(context.Background(), Options{Store: newStore(t), ContextDir: t.TempDir(), Squash: true, SquashAll: true})
	if err == nil || !strings.Contains(err.Error(), "exclude each other") {
		t.Errorf("Squash with SquashAll: got %v", err)
	}
}

func TestSquashHistory(t *testing.T) {
	h := func(marks string) []v1.History {
		var out []v1.History
		for _, m := range marks {
			out = append(out, v1.History{EmptyLayer: m == 'E'})
		}
		return out
	}
	marks := func(hs []v1.History) string {
		var b strings.Builder
		for _, x := range hs {
			if x.EmptyLayer {
				b.WriteByte('E')
			} else {
				b.WriteByte('L')
			}
		}
		return b.String()
	}
	cases := []struct {
		name    string
		in      string
		n, keep int
		want    string
	}{
		{name: "top squashed", in: "LLELEL", n: 4, keep: 2, want: "LLEEEL"},
		{name: "all squashed", in: "LLELEL", n: 4, keep: 0, want: "EEEEEL"},
		{name: "trailing empty entries", in: "LLLEE", n: 3, keep: 1, want: "LELEE"},
		{name: "history not matching the layers", in: "LLE", n: 4, keep: 1, want: "LLE"},
		{name: "no history", in: "", n: 2, keep: 0, want: ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := h(tc.in)
			if got := marks(squashHistory(in, tc.n, tc.keep)); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
			if marks(in) != tc.in {
				t.Errorf("input changed to %s", marks(in))
			}
		})
	}
}

// TestSquashRun squashes RUN steps that delete files of the base and files
// of earlier steps.
func TestSquashRun(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	base := busyboxBase(t, st)
	baseLayers, err := base.Image.Layers()
	if err != nil {
		t.Fatal(err)
	}
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM busybox:1\n" +
			"RUN mkdir -p /work /tmp && echo a > /work/a && ln /work/a /work/a2 && echo junk > /tmp/junk\n" +
			"COPY f /work/f\n" +
			"RUN rm /tmp/junk /etc/group && echo b > /work/b && chown 1000:50 /work/b\n" +
			"RUN rm -r /work && mkdir /work && echo c > /work/c && ln /work/c /work/c2\n",
		"f": "f\n",
	})
	plain, err := Build(ctx, Options{Store: st, ContextDir: dir, StepOptions: StepOptions{SourceDateEpoch: &epoch}})
	if err != nil {
		t.Fatal(err)
	}
	sq, err := Build(ctx, Options{Store: st, ContextDir: dir, StepOptions: StepOptions{SourceDateEpoch: &epoch}, Squash: true})
	if err != nil {
		t.Fatal(err)
	}
	ls, err := sq.Image.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != len(baseLayers)+1 {
		t.Fatalf("%d layers, want the base's %d + 1", len(ls), len(baseLayers))
	}
	if got, want := flatTree(t, sq.Image), flatTree(t, plain.Image); got != want {
		t.Errorf("squashed tree differs from the plain build's:\n%s", lineDiff(want, got))
	}
	top := tarEntries(t, ls[len(ls)-1])
	t.Logf("squashed layer: %q", top)
	for _, want := range []string{"etc/.wh.group", "tmp/.wh.junk", "work/c", "work/c2"} {
		if !slices.Contains(top, want) {
			t.Errorf("squashed layer lacks %s: %q", want, top)
		}
	}
	for _, gone := range []string{"tmp/junk", "work/a", "work/b", "work/f"} {
		if slices.Contains(top, gone) {
			t.Errorf("squashed layer has %s: %q", gone, top)
		}
	}
	cfg, err := sq.Image.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	var made []string
	for _, h := range cfg.History {
		if !h.EmptyLayer {
			made = append(made, h.CreatedBy)
		}
	}
	if len(made) != len(ls) || !strings.HasPrefix(made[len(made)-1], "RUN rm -r /work") {
		t.Errorf("history's layer entries %q do not match the %d layers", made, len(ls))
	}
	all, err := Build(ctx, Options{Store: st, ContextDir: dir, StepOptions: StepOptions{SourceDateEpoch: &epoch}, SquashAll: true})
	if err != nil {
		t.Fatal(err)
	}
	if w := whiteoutsIn(t, all.Image); len(w) != 0 {
		t.Errorf("squash-all left whiteouts %q", w)
	}
	if got, want := flatTree(t, all.Image), flatTree(t, plain.Image); got != want {
		t.Errorf("squash-all tree differs from the plain build's:\n%s", lineDiff(want, got))
	}
}

package builder

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/layers/layertest"
)

// stepLog records the StepDone events of a build.
type stepLog struct {
	mu    sync.Mutex
	steps []progress.Event
}

func (l *stepLog) Emit(e progress.Event) {
	// ARG is no cacheable step (the steps that read it key its value).
	if e.Kind != progress.StepDone || e.Step < 2 || strings.HasPrefix(e.Instruction, "ARG ") {
		return
	}
	l.mu.Lock()
	l.steps = append(l.steps, e)
	l.mu.Unlock()
}

// pattern renders which steps were cached: per stage (in order of first
// appearance in the Dockerfile's stage list), H for a hit and M for a
// miss, stages separated by "|"; platforms are prefixed when set.
func (l *stepLog) pattern(stages ...string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var parts []string
	for _, st := range stages {
		var evs []progress.Event
		for _, e := range l.steps {
			if e.Stage == st {
				evs = append(evs, e)
			}
		}
		sort.SliceStable(evs, func(i, j int) bool {
			if evs[i].Platform != evs[j].Platform {
				return evs[i].Platform < evs[j].Platform
			}
			return evs[i].Step < evs[j].Step
		})
		var sb strings.Builder
		for _, e := range evs {
			if e.Cached {
				sb.WriteByte('H')
			} else {
				sb.WriteByte('M')
			}
		}
		parts = append(parts, sb.String())
	}
	return strings.Join(parts, "|")
}

// reasons lists "instruction: reason" for every miss.
func (l *stepLog) reasons() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, e := range l.steps {
		if !e.Cached {
			out = append(out, e.Instruction+": "+e.MissReason)
		}
	}
	return strings.Join(out, "\n")
}

// cacheCase builds a Dockerfile twice in one store, with change applied to
// the context and options in between, and checks which steps of the
// second build were cache hits.
type cacheCase struct {
	name       string
	files      map[string]string
	dockerfile string
	// stages are the stage names to report, in order (default "stage-0").
	stages []string
	opts   func(o *Options)
	change func(t *testing.T, st *layers.Store, dir string, o *Options)
	// want is the second build's hit/miss pattern (see stepLog.pattern).
	want string
	// reason must appear among the second build's miss reasons.
	reason string
	// sameID wants the second build to give the first one's image ID.
	sameID bool
}

var epoch = time.Unix(1700000000, 0)

func TestCacheKeys(t *testing.T) {
	files := map[string]string{
		"a/x":           "x1",
		"a/sub/y":       "y1",
		"b/z":           "z1",
		"b/ignored":     "i1",
		".dockerignore": "b/ignored\n",
	}
	copyAB := "FROM scratch\nCOPY a/ /a/\nENV X=1\nCOPY b/ /b/\nLABEL l=1\n"
	cases := []cacheCase{{
		name: "unchanged", dockerfile: copyAB, want: "HHHH", sameID: true,
	}, {
		name: "content-change-rebuilds-step-and-later", dockerfile: copyAB,
		change: func(t *testing.T, _ *layers.Store, dir string, _ *Options) {
			writeFile(t, filepath.Join(dir, "b/z"), "z2", 0o644)
		},
		want: "HHMM", reason: "COPY b/ /b/: source changed: b/z",
	}, {
		name: "same-size-change-with-mtime-restored", dockerfile: copyAB,
		change: func(t *testing.T, _ *layers.Store, dir string, _ *Options) {
			p := filepath.Join(dir, "a/x")
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			writeFile(t, p, "x2", 0o644)
			if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
				t.Fatal(err)
			}
		},
		want: "MMMM", reason: "source changed: a/x",
	}, {
		name: "touch-is-a-hit", dockerfile: copyAB,
		change: func(t *testing.T, _ *layers.Store, dir string, _ *Options) {
			later := time.Now().Add(time.Hour)
			for _, f := range []string{"a/x", "a/sub/y", "b/z", "a", "b"} {
				if err := os.Chtimes(filepath.Join(dir, f), later, later); err != nil {
					t.Fatal(err)
				}
			}
		},
		want: "HHHH", sameID: true,
	}, {
		name: "mode-change-misses", dockerfile: copyAB,
		change: func(t *testing.T, _ *layers.Store, dir string, _ *Options) {
			if err := os.Chmod(filepath.Join(dir, "a/x"), 0o755); err != nil {
				t.Fatal(err)
			}
		},
		want: "MMMM", reason: "COPY a/ /a/: source changed: a/x",
	}, {
		name: "new-file-misses", dockerfile: copyAB,
		change: func(t *testing.T, _ *layers.Store, dir string, _ *Options) {
			writeFile(t, filepath.Join(dir, "b/new"), "n", 0o644)
		},
		want: "HHMM", reason: "source added: b/new",
	}, {
		name: "dockerignored-change-hits", dockerfile: copyAB,
		change: func(t *testing.T, _ *layers.Store, dir string, _ *Options) {
			writeFile(t, filepath.Join(dir, "b/ignored"), "i2 changed", 0o644)
		},
		want: "HHHH", sameID: true,
	}, {
		name: "unrelated-file-hits", dockerfile: "FROM scratch\nCOPY a/x /x\nCOPY a/sub/ /sub/\n",
		change: func(t *testing.T, _ *layers.Store, dir string, _ *Options) {
			writeFile(t, filepath.Join(dir, "b/z"), "z2", 0o644)
		},
		want: "HH", sameID: true,
	}, {
		name: "used-arg-misses", dockerfile: "FROM scratch\nARG V=1\nCOPY a/x /x-$V\nLABEL l=1\n",
		change: func(_ *testing.T, _ *layers.Store, _ string, o *Options) {
			o.BuildArgs = map[string]string{"V": "2"}
		},
		want: "MM", reason: "COPY a/x /x-$V: the instruction changed",
	}, {
		name: "unused-arg-hits", dockerfile: "FROM scratch\nARG V=1\nCOPY a/x /x\nLABEL l=1\n",
		change: func(_ *testing.T, _ *layers.Store, _ string, o *Options) {
			o.BuildArgs = map[string]string{"V": "2", "NOT_DECLARED": "3"}
		},
		want: "HH", sameID: true,
	}, {
		name: "no-cache", dockerfile: copyAB,
		change: func(_ *testing.T, _ *layers.Store, _ string, o *Options) {
			o.NoCache = true
		},
		want: "MMMM", reason: "--no-cache",
	}, {
		name: "new-base-misses-everything", dockerfile: "FROM cachebase:1\nCOPY a/ /a/\nENV X=1\n",
		opts: func(o *Options) {},
		change: func(t *testing.T, st *layers.Store, _ string, _ *Options) {
			buildCacheBase(t, st, "v2")
		},
		want: "MM", reason: "the base image changed",
	}, {
		name:       "copy-from-misses-when-stage-output-changes",
		dockerfile: "FROM scratch AS gen\nCOPY a/ /a/\nFROM scratch\nCOPY --from=gen /a /a\nCOPY b/ /b/\n",
		stages:     []string{"gen", "stage-1"},
		change: func(t *testing.T, _ *layers.Store, dir string, _ *Options) {
			writeFile(t, filepath.Join(dir, "a/x"), "x2", 0o644)
		},
		want: "M|MM", reason: "COPY --from=gen /a /a: the --from source changed",
	}, {
		name:       "copy-from-hits-when-stage-reruns-to-same-output",
		dockerfile: "FROM scratch AS gen\nCOPY a/ /a/\nFROM scratch\nCOPY --from=gen /a /a\nCOPY b/ /b/\n",
		stages:     []string{"gen", "stage-1"},
		change: func(_ *testing.T, _ *layers.Store, _ string, o *Options) {
			o.NoCacheFilter = []string{"gen"}
		},
		want: "M|HH", reason: "--no-cache-filter gen",
	}, {
		name:       "copy-from-other-stage-change-hits",
		dockerfile: "FROM scratch AS gen\nCOPY a/ /a/\nFROM scratch\nCOPY --from=gen /a /a\nCOPY b/ /b/\n",
		stages:     []string{"gen", "stage-1"},
		change: func(t *testing.T, _ *layers.Store, dir string, _ *Options) {
			writeFile(t, filepath.Join(dir, "b/z"), "z2", 0o644)
		},
		want: "H|HM",
	}, {
		name: "epoch-change-misses", dockerfile: copyAB,
		change: func(_ *testing.T, _ *layers.Store, _ string, o *Options) {
			e := epoch.Add(time.Hour)
			o.SourceDateEpoch = &e
		},
		want: "MMMM", reason: "the build options changed",
	}, {
		name: "compression-change-misses", dockerfile: copyAB,
		change: func(_ *testing.T, _ *layers.Store, _ string, o *Options) {
			o.Compression = layers.Zstd
		},
		want: "MMMM",
	}, {
		name: "heredoc-change-misses", dockerfile: "FROM scratch\nCOPY <<EOF /f\nhello\nEOF\n",
		change: func(t *testing.T, _ *layers.Store, dir string, o *Options) {
			o.DockerfileContent = []byte("FROM scratch\nCOPY <<EOF /f\nhello again\nEOF\n")
		},
		want: "M", reason: "the instruction changed",
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := newStore(t)
			if strings.Contains(tc.dockerfile, "cachebase") {
				buildCacheBase(t, st, "v1")
			}
			dir := writeContext(t, files)
			opts := Options{Store: st, ContextDir: dir, DockerfileContent: []byte(tc.dockerfile), StepOptions: StepOptions{SourceDateEpoch: &epoch}}
			if tc.opts != nil {
				tc.opts(&opts)
			}
			first := &stepLog{}
			opts.Progress = first
			res1, err := Build(context.Background(), opts)
			if err != nil {
				t.Fatalf("first build: %v", err)
			}
			stages := tc.stages
			if len(stages) == 0 {
				stages = []string{"stage-0"}
			}
			if p := first.pattern(stages...); strings.Contains(p, "H") {
				t.Fatalf("first build into an empty store had hits: %s", p)
			}
			if tc.change != nil {
				tc.change(t, st, dir, &opts)
			}
			second := &stepLog{}
			opts.Progress = second
			res2, err := Build(context.Background(), opts)
			if err != nil {
				t.Fatalf("second build: %v", err)
			}
			if got := second.pattern(stages...); got != tc.want {
				t.Errorf("second build hits %s, want %s; misses:\n%s", got, tc.want, second.reasons())
			}
			if tc.reason != "" && !strings.Contains(second.reasons(), tc.reason) {
				t.Errorf("miss reasons:\n%s\nwant one containing %q", second.reasons(), tc.reason)
			}
			if tc.sameID && res1.ID != res2.ID {
				t.Errorf("fully cached rebuild gave image %s, first build %s", res2.ID, res1.ID)
			}
			// A cached result must be the image a build without cache makes.
			opts.NoCache = true
			opts.Progress = nil
			res3, err := Build(context.Background(), opts)
			if err != nil {
				t.Fatalf("uncached build: %v", err)
			}
			if res3.ID != res2.ID {
				t.Errorf("cached build gave %s, uncached build of the same inputs %s", res2.ID, res3.ID)
			}
		})
	}
}

// buildCacheBase builds cachebase:1 from scratch with one file whose
// content is version.
func buildCacheBase(t *testing.T, st *layers.Store, version string) {
	t.Helper()
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY v /v\n", "v": version})
	if _, err := Build(context.Background(), Options{Store: st, ContextDir: dir, Tags: []string{"cachebase:1"}, StepOptions: StepOptions{SourceDateEpoch: &epoch}}); err != nil {
		t.Fatal(err)
	}
}

// TestCacheRun covers RUN's key inputs: build args in scope, bound context
// files, and secrets (never an input).
func TestCacheRun(t *testing.T) {
	st := newStore(t)
	busyboxBase(t, st)
	dir := writeContext(t, map[string]string{
		"data/x":  "x1",
		"other/y": "y1",
		"secret":  "s3cret-cache-first-value",
	})
	df := "FROM busybox:1\nARG V=1\n" +
		"RUN echo v=$V > /v\n" +
		"RUN --mount=type=bind,source=data,target=/d cat /d/x > /x\n" +
		"RUN --mount=type=secret,id=s cat /run/secrets/s > /dev/null && cat /proc/sys/kernel/random/uuid > /ran\n"
	opts := Options{Store: st, ContextDir: dir, DockerfileContent: []byte(df), StepOptions: StepOptions{SourceDateEpoch: &epoch, Secrets: map[string]SecretSource{"s": {File: filepath.Join(dir, "secret")}}}}
	build := func(name string, change func()) (*stepLog, *Result) {
		t.Helper()
		if change != nil {
			change()
		}
		l := &stepLog{}
		opts.Progress = l
		res, err := Build(context.Background(), opts)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return l, res
	}
	first, res1 := build("first", nil)
	if p := first.pattern("stage-0"); p != "MMM" {
		t.Fatalf("first build: %s", p)
	}
	for _, step := range []struct {
		name, want, reason string
		change             func()
	}{
		{"unchanged", "HHH", "", nil},
		{"secret-changed", "HHH", "", func() { writeFile(t, filepath.Join(dir, "secret"), "s3cret-cache-second-value", 0o600) }},
		{"unused-arg", "HHH", "", func() { opts.BuildArgs = map[string]string{"OTHER": "1"} }},
		{"unbound-file-changed", "HHH", "", func() { writeFile(t, filepath.Join(dir, "other/y"), "y2", 0o644) }},
		{"bound-file-changed", "HMM", "source changed: data/x", func() { writeFile(t, filepath.Join(dir, "data/x"), "x2", 0o644) }},
		{"used-arg", "MMM", "build arg V changed", func() { opts.BuildArgs = map[string]string{"V": "2"} }},
		{"proxy-arg", "HHH", "", func() { opts.BuildArgs = map[string]string{"V": "2", "HTTP_PROXY": "http://127.0.0.1:9"} }},
	} {
		l, res := build(step.name, step.change)
		if got := l.pattern("stage-0"); got != step.want {
			t.Errorf("%s: hits %s, want %s; misses:\n%s", step.name, got, step.want, l.reasons())
		}
		if step.reason != "" && !strings.Contains(l.reasons(), step.reason) {
			t.Errorf("%s: miss reasons:\n%s\nwant %q", step.name, l.reasons(), step.reason)
		}
		if step.name == "unchanged" && res.ID != res1.ID {
			t.Errorf("fully cached rebuild changed the image ID")
		}
	}
	// Neither secret is anywhere in the store (records, histories, blobs).
	for _, s := range []string{"s3cret-cache-first-value", "s3cret-cache-second-value"} {
		wantNowhereInStore(t, st, []byte(s))
	}
}

// TestCacheSharedAcrossPlatforms: a stage on $BUILDPLATFORM is the same
// work for every target platform; with two platforms it runs once and the
// other platform takes its result from the cache.
func TestCacheSharedAcrossPlatforms(t *testing.T) {
	for _, jobs := range []int{1, 4} {
		t.Run(fmt.Sprintf("jobs=%d", jobs), func(t *testing.T) { testCacheSharedAcrossPlatforms(t, jobs) })
	}
}

func testCacheSharedAcrossPlatforms(t *testing.T, jobs int) {
	st := newStore(t)
	dir := writeContext(t, map[string]string{"a": "a"})
	df := "FROM --platform=$BUILDPLATFORM scratch AS gen\nCOPY a /a\nENV X=1\n" +
		"FROM scratch\nARG TARGETARCH\nCOPY --from=gen /a /a-$TARGETARCH\n"
	l := &stepLog{}
	amd, _ := ParsePlatform("linux/amd64")
	arm, _ := ParsePlatform("linux/arm64")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := Build(ctx, Options{Store: st, ContextDir: dir, DockerfileContent: []byte(df),
		Platforms: []v1.Platform{amd, arm}, StepOptions: StepOptions{Progress: l}, Jobs: jobs})
	if err != nil {
		t.Fatal(err)
	}
	// Each of gen's two steps runs for one platform and is a hit for the
	// other (which platform gets there first varies).
	got := l.pattern("gen")
	if len(got) != 4 || got[0] == got[2] || got[1] == got[3] {
		t.Errorf("gen stage over two platforms: %s, want each step to run once and hit once", got)
	}
	if got := l.pattern("stage-1"); got != "MM" {
		t.Errorf("per-platform stage: %s, want MM", got)
	}
}

// TestCacheConcurrentBuilds runs builds sharing a store at once; the
// cache stays consistent and a later build hits every step.
func TestCacheConcurrentBuilds(t *testing.T) {
	st := newStore(t)
	var dirs []string
	for i := range 3 {
		dirs = append(dirs, writeContext(t, map[string]string{
			"shared/f": "same in every context",
			"own/f":    fmt.Sprintf("context %d", i),
		}))
	}
	df := "FROM scratch\nCOPY shared/ /shared/\nENV A=1\nCOPY own/ /own/\nCMD [\"x\"]\n"
	var wg sync.WaitGroup
	ids := make([]v1.Hash, 6)
	errs := make([]error, 6)
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := Build(context.Background(), Options{Store: st, ContextDir: dirs[i%3], DockerfileContent: []byte(df), StepOptions: StepOptions{SourceDateEpoch: &epoch}})
			if err == nil {
				ids[i] = res.ID
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("build %d: %v", i, err)
		}
	}
	for i := range 3 {
		if ids[i] != ids[i+3] {
			t.Errorf("concurrent builds of context %d gave %s and %s", i, ids[i], ids[i+3])
		}
		l := &stepLog{}
		res, err := Build(context.Background(), Options{Store: st, ContextDir: dirs[i], DockerfileContent: []byte(df), StepOptions: StepOptions{SourceDateEpoch: &epoch, Progress: l}})
		if err != nil {
			t.Fatal(err)
		}
		if p := l.pattern("stage-0"); p != "HHHH" {
			t.Errorf("build after the concurrent ones: %s, want all hits; misses:\n%s", p, l.reasons())
		}
		if res.ID != ids[i] {
			t.Errorf("cached build of context %d gave %s, want %s", i, res.ID, ids[i])
		}
	}
	layertest.CheckBlobs(t, st.Root())
	// Records keep their layers through a prune.
	if _, err := st.Prune(context.Background()); err != nil {
		t.Fatal(err)
	}
	layertest.CheckBlobs(t, st.Root())
}

// TestCacheADDURL: an ADD URL is revalidated with the server's validators
// (a 304 is a hit), a changed download misses, and --checksum needs no
// request at all.
func TestCacheADDURL(t *testing.T) {
	var content atomic.Value
	content.Store("v1")
	var requests, conditional atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		body := content.Load().(string)
		etag := `"` + body + `"`
		w.Header().Set("ETag", etag)
		w.Header().Set("Last-Modified", "Mon, 02 Jan 2006 15:04:05 GMT")
		if r.Header.Get("If-None-Match") != "" {
			conditional.Add(1)
			if r.Header.Get("If-None-Match") == etag {
				w.WriteHeader(http.StatusNotModified)
				return
			}
		}
		fmt.Fprint(w, body)
	}))
	defer srv.Close()
	st := newStore(t)
	dir := writeContext(t, nil)
	df := "FROM scratch\nADD " + srv.URL + "/file.txt /f\nLABEL a=b\n"
	opts := Options{Store: st, ContextDir: dir, DockerfileContent: []byte(df), StepOptions: StepOptions{SourceDateEpoch: &epoch}}
	build := func(name, want string) {
		t.Helper()
		l := &stepLog{}
		opts.Progress = l
		if _, err := Build(context.Background(), opts); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := l.pattern("stage-0"); got != want {
			t.Errorf("%s: %s, want %s; misses:\n%s", name, got, want, l.reasons())
		}
	}
	build("first", "MM")
	build("revalidated", "HH")
	if conditional.Load() != 1 {
		t.Errorf("conditional requests: %d, want 1", conditional.Load())
	}
	content.Store("v2")
	build("changed", "MM")
	sum := "sha256:" + sha256Hex([]byte("v2"))
	opts.DockerfileContent = []byte("FROM scratch\nADD --checksum=" + sum + " " + srv.URL + "/file.txt /f\n")
	build("checksum-first", "M")
	before := requests.Load()
	build("checksum-cached", "H")
	if requests.Load() != before {
		t.Errorf("a cached ADD --checksum made %d requests, want none", requests.Load()-before)
	}
}

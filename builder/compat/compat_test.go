package compat

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.podman.io/storage/pkg/reexec"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/builder/internal/imagecmp"
	"github.com/ibuild/ibuild/builder/internal/oracle"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
	"github.com/ibuild/ibuild/registry/registrytest"
)

func TestMain(m *testing.M) {
	if reexec.Init() {
		return
	}
	os.Exit(m.Run())
}

// caseTimeout bounds each builder's run of one case.
const caseTimeout = 5 * time.Minute

// sample are the cases `go test ./...` runs (IBUILD_COMPAT unset): one or
// more of each corpus and of each kind of outcome.
var sample = []string{
	"buildah/copy-chown/Dockerfile",
	"buildah/multi-stage-builds/Dockerfile.arg",
	"buildah/symlink/Dockerfile.relative-symlink",
	"buildah/heredoc/Containerfile",
	"buildah/copy-from/Dockerfile.bad",
	"buildkit/testCopyChownExistingDir",
	"buildkit/testHeredocVarSubstitution",
	"buildkit/testUserAdditionalGids",
	"own/copy-basic",
	"own/bad-run",
	"own/whiteouts",
	"own/links-modes-devices",
}

// outcome is the verdict on one case.
type outcome struct {
	name    string
	skip    string // set: not run, and why
	match   bool
	details string // why it does not match
}

type results struct {
	mu  sync.Mutex
	all []outcome
}

func (r *results) add(o outcome) {
	r.mu.Lock()
	r.all = append(r.all, o)
	r.mu.Unlock()
}

// TestCompat builds every case with BuildKit and with ibuild and compares
// the results. IBUILD_COMPAT=all runs every case (make compat), otherwise
// the fixed sample; IBUILD_COMPAT_RUN=REGEXP narrows either to matching
// case names.
func TestCompat(t *testing.T) {
	if testing.Short() {
		t.Skip("the docker-exact suite builds images with BuildKit and ibuild; not in -short mode")
	}
	all := os.Getenv("IBUILD_COMPAT") == "all"
	var filter *regexp.Regexp
	if f := os.Getenv("IBUILD_COMPAT_RUN"); f != "" {
		filter = regexp.MustCompile(f)
	}
	start := time.Now()
	env := newEnv(t)
	cases := env.loadCases(t)
	if !all {
		byName := map[string]*compatCase{}
		for _, c := range cases {
			byName[c.Name] = c
		}
		var picked []*compatCase
		for _, n := range sample {
			c, ok := byName[n]
			if !ok {
				t.Fatalf("sample case %s is not in the corpora", n)
			}
			picked = append(picked, c)
		}
		cases = picked
	}
	if filter != nil {
		var picked []*compatCase
		for _, c := range cases {
			if filter.MatchString(c.Name) {
				picked = append(picked, c)
			}
		}
		cases = picked
	}
	env.serveBases(t, cases)
	documented := documentedCases(t)
	var res results
	t.Run("case", func(t *testing.T) {
		for i, c := range cases {
			i, c := i, c
			t.Run(c.Name, func(t *testing.T) {
				if c.Skip != "" {
					res.add(outcome{name: c.Name, skip: c.Skip})
					t.Skipf("skipped: %s", c.Skip)
				}
				t.Parallel()
				o := env.run(t, i, c)
				res.add(o)
				switch {
				case o.skip != "":
					t.Skipf("skipped: %s", o.skip)
				case o.match:
				case documented[c.Name] != "":
					t.Logf("documented deviation (%s):\n%s", documented[c.Name], o.details)
				default:
					t.Errorf("differs from docker build (BuildKit %s) (%s):\n%s", oracle.Version, c.Origin, o.details)
				}
			})
		}
	})
	report(t, &res, documented, all && filter == nil, time.Since(start))
}

// report prints every skipped case with its reason, the non-matching
// cases, and the summary line; in a full run a documented case that now
// matches is an error (the docs must stay true).
func report(t *testing.T, res *results, documented map[string]string, full bool, took time.Duration) {
	var run, match, dev int
	var skips, stale, undocumented []string
	for _, o := range res.all {
		switch {
		case o.skip != "":
			skips = append(skips, fmt.Sprintf("compat: skip %s: %s", o.name, o.skip))
		case o.match:
			run++
			match++
			if documented[o.name] != "" {
				stale = append(stale, o.name)
			}
		default:
			run++
			if documented[o.name] != "" {
				dev++
			} else {
				undocumented = append(undocumented, o.name)
			}
		}
	}
	sortStrings(skips)
	sortStrings(undocumented)
	for _, s := range skips {
		fmt.Println(s)
	}
	for _, n := range undocumented {
		fmt.Printf("compat: DIFFERS %s (not documented in docs/dockerfile.md)\n", n)
	}
	for _, n := range stale {
		msg := fmt.Sprintf("compat: %s matches docker now: remove it from docs/dockerfile.md", n)
		if full {
			t.Error(msg)
		} else {
			fmt.Println(msg)
		}
	}
	pct := 0.0
	if run > 0 {
		pct = 100 * float64(match) / float64(run)
	}
	fmt.Printf("compat: %d cases, %d skipped, %d run in %s (%.1f%% match)\n", len(res.all), len(skips), run, took.Round(time.Second), pct)
	fmt.Printf("compat: %d/%d cases match docker (BuildKit %s); %d documented deviations\n", match, run, oracle.Version, dev)
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// documentedCases reads the case names docs/dockerfile.md lists under
// "Deliberate differences" (and its "Known differences" part): every
// `buildah/…`, `buildkit/…` or `own/…` in backquotes, mapped to the
// heading of the item that names it.
func documentedCases(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile("../../docs/dockerfile.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	in := false
	nameRE := regexp.MustCompile("`((?:buildah|buildkit|own)/[^`]+)`")
	item := ""
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "## ") {
			in = strings.Contains(line, "Deliberate differences")
			continue
		}
		if !in {
			continue
		}
		if strings.HasPrefix(line, "- ") {
			item = strings.TrimPrefix(line, "- ")
			if len(item) > 60 {
				item = item[:60] + "…"
			}
		}
		for _, m := range nameRE.FindAllStringSubmatch(line, -1) {
			out[m[1]] = item
		}
	}
	return out
}

// env is what every case shares: the registry, the oracle, ibuild's store.
type env struct {
	reg    string
	oracle *oracle.Daemon
	store  *layers.Store
	url    string // base URL of a local HTTP server for ADD cases
}

func newEnv(t *testing.T) *env {
	t.Helper()
	reg := registrytest.Start(t)
	e := &env{reg: reg.Host}
	e.oracle = oracle.Start(t, reg.Host)
	root, err := os.MkdirTemp("", "ibuild-compat-store-")
	if err != nil {
		t.Fatal(err)
	}
	st, err := layers.OpenStore(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		st.Close()
		os.RemoveAll(root)
	})
	e.store = st
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Last-Modified", time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC).Format(http.TimeFormat))
		switch r.URL.Path {
		case "/download/file.txt":
			io.WriteString(w, "file content\n")
		case "/download/foo":
			io.WriteString(w, "foo\n")
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	e.url = srv.URL
	return e
}

func (e *env) loadCases(t *testing.T) []*compatCase {
	t.Helper()
	var cases []*compatCase
	cases = append(cases, buildahCases(t)...)
	cases = append(cases, buildkitCases(t)...)
	cases = append(cases, ownCases(t, e.url)...)
	seen := map[string]bool{}
	for _, c := range cases {
		if seen[c.Name] {
			t.Fatalf("two cases are named %s", c.Name)
		}
		seen[c.Name] = true
	}
	return cases
}

// serveBases makes the base images the cases need: the busybox stand-in
// under every Docker Hub name they use, and the local bases built from
// fixtures by BuildKit (so both builders start from the same image).
func (e *env) serveBases(t *testing.T, cases []*compatCase) {
	t.Helper()
	need := map[string]bool{"docker.io/library/busybox:latest": true}
	for _, c := range cases {
		for _, h := range c.hubImages {
			need[h] = true
		}
	}
	serveHubImages(t, e.reg, e.store, busyboxIndex(t), sortedKeys(need))
	for _, n := range sortedKeys(localBases) {
		df, err := filepath.Abs(filepath.Join("../..", localBases[n]))
		if err != nil {
			t.Fatal(err)
		}
		c := &compatCase{Name: "base " + n, ContextDir: filepath.Dir(df), Dockerfile: df}
		ref := e.reg + "/" + n
		out, err := buildWithOracle(context.Background(), e.oracle, c, ref)
		if err != nil {
			t.Fatalf("BuildKit build of base %s (%s): %v\n%s", n, df, err, out)
		}
		// FROM NAME resolves to docker.io/library/NAME for BuildKit.
		copyImage(t, ref, e.reg+"/library/"+n)
		storeFromRegistry(t, e.store, ref, "localhost/"+n)
	}
}

func copyImage(t *testing.T, from, to string) {
	t.Helper()
	src, err := name.ParseReference(from, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := name.ParseReference(to, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(dst, img); err != nil {
		t.Fatalf("copy %s to %s: %v", from, to, err)
	}
}

// infraRE finds BuildKit failures that come from this machine's lack of
// the internet rather than from the Dockerfile.
var infraRE = regexp.MustCompile(`failed to resolve source metadata|failed to do request|dial tcp|no such host|failed to fetch|i/o timeout`)

// run builds c with both builders and judges the results.
func (e *env) run(t *testing.T, i int, c *compatCase) outcome {
	o := outcome{name: c.Name}
	if c.prepare != nil {
		c.prepare(t, c)
		if c.Skip != "" {
			o.skip = c.Skip
			return o
		}
	}
	ctx := context.Background()
	slug := fmt.Sprintf("c%03d", i)
	bkRef := e.reg + "/compat/" + slug + "-docker:latest"
	ibRef := e.reg + "/compat/" + slug + "-ibuild:latest"
	bkOut, bkErr := buildWithOracle(ctx, e.oracle, c, bkRef)
	if bkErr != nil && infraRE.MatchString(bkOut) {
		o.skip = "BuildKit needed the internet: " + lastLines(bkOut, 3)
		return o
	}
	ibErr := e.ibuild(ctx, c, ibRef)
	switch {
	case bkErr != nil && ibErr != nil:
		if why := locatedLike(bkOut, ibErr, c.Dockerfile); why != "" {
			o.details = why
			return o
		}
		o.match = true
		return o
	case bkErr != nil:
		o.details = "BuildKit refused the Dockerfile, ibuild built it:\n" + lastLines(bkOut, 12)
		return o
	case ibErr != nil:
		o.details = fmt.Sprintf("BuildKit built it, ibuild failed: %v", ibErr)
		return o
	}
	diffs, err := compareRefs(bkRef, ibRef)
	if err != nil {
		o.details = "compare: " + err.Error()
		return o
	}
	if len(diffs) == 0 {
		o.match = true
		return o
	}
	var b strings.Builder
	b.WriteString("docker != ibuild:\n")
	for i, d := range diffs {
		if i == 40 {
			fmt.Fprintf(&b, "  ... %d more\n", len(diffs)-i)
			break
		}
		b.WriteString("  " + d.String() + "\n")
	}
	o.details = b.String()
	return o
}

func (e *env) ibuild(ctx context.Context, c *compatCase, ref string) error {
	ctx, cancel := context.WithTimeout(ctx, caseTimeout)
	defer cancel()
	opts := builder.Options{
		Store:       e.store,
		ContextDir:  c.ContextDir,
		Dockerfile:  c.Dockerfile,
		BuildArgs:   c.BuildArgs,
		Target:      c.Target,
		Push:        []string{ref},
		StepOptions: builder.StepOptions{Pull: registry.PullMissing},
	}
	if len(c.Platforms) > 0 {
		ps, err := builder.ParsePlatforms(strings.Join(c.Platforms, ","))
		if err != nil {
			return err
		}
		opts.Platforms = ps
	}
	if len(c.Secrets) > 0 {
		opts.Secrets = map[string]builder.SecretSource{}
		for id, f := range c.Secrets {
			opts.Secrets[id] = builder.SecretSource{File: f}
		}
	}
	_, err := builder.Build(ctx, opts)
	return err
}

// locatedLike checks that ibuild's refusal is located: it names the
// Dockerfile with a line ("Dockerfile:7"), or, when BuildKit itself gave
// no line, the Dockerfile or the ignore file at fault. (When several
// stages fail, the two builders may report different ones.)
func locatedLike(bkOut string, ibErr error, dockerfile string) string {
	base := filepath.Base(dockerfile)
	msg := ibErr.Error()
	if regexp.MustCompile(regexp.QuoteMeta(base) + `:\d+`).MatchString(msg) {
		return ""
	}
	if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(base) + `:\d+$`).MatchString(bkOut) {
		for _, f := range []string{base, ".dockerignore", ".containerignore"} {
			if strings.Contains(msg, f) {
				return ""
			}
		}
	}
	return fmt.Sprintf("both refuse it, but ibuild's error is not located (no %s:LINE):\nibuild: %v\nBuildKit:\n%s", base, msg, lastLines(bkOut, 12))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// compareRefs compares the images at two references of the test
// registry; indexes are compared platform by platform.
func compareRefs(a, b string) ([]imagecmp.Difference, error) {
	ia, err := images(a)
	if err != nil {
		return nil, fmt.Errorf("docker's image: %w", err)
	}
	ib, err := images(b)
	if err != nil {
		return nil, fmt.Errorf("ibuild's image: %w", err)
	}
	if len(ia) == 1 && len(ib) == 1 {
		for _, x := range ia {
			for _, y := range ib {
				return imagecmp.Compare(x, y)
			}
		}
	}
	var out []imagecmp.Difference
	for p := range ia {
		if _, ok := ib[p]; !ok {
			out = append(out, imagecmp.Difference{Field: "platforms", A: p, B: imagecmp.Absent})
		}
	}
	for _, p := range sortedKeys(ib) {
		imgA, ok := ia[p]
		if !ok {
			out = append(out, imagecmp.Difference{Field: "platforms", A: imagecmp.Absent, B: p})
			continue
		}
		diffs, err := imagecmp.Compare(imgA, ib[p])
		if err != nil {
			return nil, err
		}
		for _, d := range diffs {
			if len(ia) > 1 {
				d.Field = p + " " + d.Field
			}
			out = append(out, d)
		}
	}
	return out, nil
}

// images fetches ref: one image ("" key) or an index's images by
// platform (attestation manifests left out).
func images(ref string) (map[string]v1.Image, error) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return nil, err
	}
	desc, err := remote.Get(r)
	if err != nil {
		return nil, err
	}
	if !desc.MediaType.IsIndex() {
		img, err := desc.Image()
		if err != nil {
			return nil, err
		}
		return map[string]v1.Image{"": img}, nil
	}
	idx, err := desc.ImageIndex()
	if err != nil {
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	out := map[string]v1.Image{}
	for _, m := range im.Manifests {
		if m.Platform == nil || m.Platform.OS == "unknown" {
			continue
		}
		img, err := idx.Image(m.Digest)
		if err != nil {
			return nil, err
		}
		p := m.Platform.OS + "/" + m.Platform.Architecture
		if m.Platform.Variant != "" && !(m.Platform.Architecture == "arm64" && m.Platform.Variant == "v8") {
			p += "/" + m.Platform.Variant
		}
		out[p] = img
	}
	if len(out) == 0 {
		return nil, errors.New("index without images")
	}
	return out, nil
}

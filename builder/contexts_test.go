package builder

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/ibuild/ibuild/builder/ctxfetch/ctxfetchtest"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// imageFiles flattens img and returns its regular files and symlinks
// with their content (a symlink as "-> target").
func imageFiles(t *testing.T, img v1.Image) map[string]string {
	t.Helper()
	dir := t.TempDir()
	if err := registry.WriteRootFS(context.Background(), dir, img, nil); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel := "/" + filepath.ToSlash(strings.TrimPrefix(p, dir+"/"))
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			out[rel] = "-> " + l
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			out[rel] = string(b)
		case fi.IsDir():
			out[rel+"/"] = ""
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func wantImageFiles(t *testing.T, img v1.Image, want map[string]string) {
	t.Helper()
	got := imageFiles(t, img)
	for p, w := range want {
		g, ok := got[p]
		switch {
		case w == "<absent>":
			if ok {
				t.Errorf("%s is in the image, want it absent", p)
			}
		case !ok:
			t.Errorf("%s is not in the image (have %v)", p, keys(got))
		case g != w:
			t.Errorf("%s = %q, want %q", p, g, w)
		}
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestGitContext builds from a git repository served by git
// http-backend on 127.0.0.1: .git stays out of the context unless
// BUILDKIT_CONTEXT_KEEP_GIT_DIR is set, a rebuild of the same commit (a
// fresh checkout, with new mtimes) takes every step from the cache, a new
// commit misses only the steps whose files changed (and says which), and
// with SOURCE_DATE_EPOCH two fresh stores give the same digest.
func TestGitContext(t *testing.T) {
	srv := ctxfetchtest.Serve(t)
	repo := srv.NewRepo(t, "app.git")
	ctxfetchtest.Commit(t, repo, map[string]string{
		"Dockerfile":        "FROM scratch\nCOPY a.txt /a.txt\nCOPY . /src/\n",
		"a.txt":             "a1\n",
		"b.txt":             "b1\n",
		".dockerignore":     "ignored.txt\n",
		"ignored.txt":       "no\n",
		"sub/Dockerfile":    "FROM scratch\nCOPY . /sub/\n",
		"sub/s.txt":         "s\n",
		"sub/build/alt.dfl": "FROM scratch\nCOPY s.txt /alt\n",
	}, "one")
	url := srv.URL + "/app.git"
	ctx := context.Background()
	st := newStore(t)

	log := &stepLog{}
	res, err := Build(ctx, Options{Store: st, ContextDir: url, StepOptions: StepOptions{Progress: log}})
	if err != nil {
		t.Fatal(err)
	}
	wantImageFiles(t, res.Image, map[string]string{"/a.txt": "a1\n", "/src/b.txt": "b1\n", "/src/sub/s.txt": "s\n",
		"/src/.git/": "<absent>", "/src/ignored.txt": "<absent>"})
	if got := log.pattern("stage-0"); got != "MM" {
		t.Fatalf("first build: %s", got)
	}

	log = &stepLog{}
	again, err := Build(ctx, Options{Store: st, ContextDir: url, StepOptions: StepOptions{Progress: log}})
	if err != nil {
		t.Fatal(err)
	}
	if got := log.pattern("stage-0"); got != "HH" || again.ID != res.ID {
		t.Fatalf("rebuild of the same commit: %s, ID %s then %s; want every step cached and the same ID\n%s", got, res.ID, again.ID, log.reasons())
	}

	ctxfetchtest.Commit(t, repo, map[string]string{"b.txt": "b2\n"}, "two")
	log = &stepLog{}
	if _, err := Build(ctx, Options{Store: st, ContextDir: url, StepOptions: StepOptions{Progress: log}}); err != nil {
		t.Fatal(err)
	}
	if got := log.pattern("stage-0"); got != "HM" || !strings.Contains(log.reasons(), "source changed: b.txt") {
		t.Fatalf("new commit: %s\n%s", got, log.reasons())
	}

	// .git kept on request.
	res, err = Build(ctx, Options{Store: st, ContextDir: url, BuildArgs: map[string]string{keepGitDirArg: "1"}})
	if err != nil {
		t.Fatal(err)
	}
	if files := imageFiles(t, res.Image); files["/src/.git/HEAD"] == "" || !strings.Contains(files["/src/.git/config"], "origin") {
		t.Fatalf(".git not kept: %v", keys(files))
	}

	// A subdir, and -f naming a file inside the context.
	res, err = Build(ctx, Options{Store: st, ContextDir: url + "#main:sub"})
	if err != nil {
		t.Fatal(err)
	}
	wantImageFiles(t, res.Image, map[string]string{"/sub/s.txt": "s\n", "/sub/Dockerfile": "FROM scratch\nCOPY . /sub/\n", "/sub/a.txt": "<absent>"})
	res, err = Build(ctx, Options{Store: st, ContextDir: url + "#main:sub", Dockerfile: "build/alt.dfl"})
	if err != nil {
		t.Fatal(err)
	}
	wantImageFiles(t, res.Image, map[string]string{"/alt": "s\n"})

	// Reproducible: two fresh stores, SOURCE_DATE_EPOCH, same digest
	// (file mtimes are the commit's, not the checkout's).
	e := epoch
	d1, err := Build(ctx, Options{Store: newStore(t), ContextDir: url, StepOptions: StepOptions{SourceDateEpoch: &e}})
	if err != nil {
		t.Fatal(err)
	}
	d2, err := Build(ctx, Options{Store: newStore(t), ContextDir: url, StepOptions: StepOptions{SourceDateEpoch: &e}})
	if err != nil {
		t.Fatal(err)
	}
	if d1.Digest != d2.Digest {
		t.Fatalf("git context with SOURCE_DATE_EPOCH: digests %s and %s differ", d1.Digest, d2.Digest)
	}

	for _, tc := range []struct{ ctx, want string }{
		{url + "#nosuch", "app.git at nosuch"},
		{srv.URL + "/gone.git", "gone.git"},
	} {
		if _, err := Build(ctx, Options{Store: st, ContextDir: tc.ctx}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error naming %q", tc.ctx, err, tc.want)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(st.Root(), "tmp")); len(ents) != 0 {
		t.Errorf("builds left %d entries in the store's tmp", len(ents))
	}
}

// TestTarContext builds from a tar stream (docker build - < ctx.tar),
// gzip-compressed, with -f naming a Dockerfile inside it; and from a
// plain Dockerfile on the stream, with an empty context.
func TestTarContext(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	tarball := tarOf(t,
		&tar.Header{Name: "Dockerfile", Mode: 0o644, Typeflag: tar.TypeReg}, "FROM scratch\nCOPY f /f\n",
		&tar.Header{Name: "docker/alt", Mode: 0o644, Typeflag: tar.TypeReg}, "FROM scratch\nCOPY f /alt\n",
		&tar.Header{Name: "f", Mode: 0o644, Typeflag: tar.TypeReg}, "from the tar\n",
	)
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(tarball)
	zw.Close()
	res, err := Build(ctx, Options{Store: st, ContextTar: bytes.NewReader(tarball)})
	if err != nil {
		t.Fatal(err)
	}
	wantImageFiles(t, res.Image, map[string]string{"/f": "from the tar\n"})
	res, err = Build(ctx, Options{Store: st, ContextTar: bytes.NewReader(z.Bytes()), Dockerfile: "docker/alt"})
	if err != nil {
		t.Fatal(err)
	}
	wantImageFiles(t, res.Image, map[string]string{"/alt": "from the tar\n"})

	res, err = Build(ctx, Options{Store: st, ContextTar: strings.NewReader("FROM scratch\nLABEL plain=yes\n")})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := res.Image.ConfigFile()
	if cfg.Config.Labels["plain"] != "yes" {
		t.Fatalf("plain Dockerfile on the stream: labels %v", cfg.Config.Labels)
	}
	_, err = Build(ctx, Options{Store: st, ContextTar: strings.NewReader("FROM scratch\nCOPY f /f\n")})
	if err == nil || !strings.Contains(err.Error(), "f") {
		t.Fatalf("COPY from the empty context of a plain Dockerfile: %v", err)
	}
	_, err = Build(ctx, Options{Store: st, ContextTar: bytes.NewReader(tarball), Dockerfile: "nope"})
	if err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("-f naming no file in the tar: %v", err)
	}
}

// contextServer serves a gzip tarball of files at /ctx.tar.gz.
func contextServer(t *testing.T, files map[string]string) string {
	t.Helper()
	var entries []any
	for n, c := range files {
		entries = append(entries, &tar.Header{Name: n, Mode: 0o644, Typeflag: tar.TypeReg}, c)
	}
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(tarOf(t, entries...))
	zw.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ctx.tar.gz" {
			http.NotFound(w, r)
			return
		}
		w.Write(z.Bytes())
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestHTTPContext builds from a tarball URL.
func TestHTTPContext(t *testing.T) {
	u := contextServer(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY x /x\n", "x": "over http\n"})
	res, err := Build(context.Background(), Options{Store: newStore(t), ContextDir: u + "/ctx.tar.gz"})
	if err != nil {
		t.Fatal(err)
	}
	wantImageFiles(t, res.Image, map[string]string{"/x": "over http\n"})
	_, err = Build(context.Background(), Options{Store: newStore(t), ContextDir: u + "/missing.tar.gz"})
	if err == nil || !strings.Contains(err.Error(), "/missing.tar.gz") || !strings.Contains(err.Error(), "404") {
		t.Fatalf("missing URL: %v", err)
	}
}

// TestNamedContexts: --build-context of every kind (a directory with its
// own .dockerignore, docker-image:// from the Debian registry,
// oci-layout:// by digest and by tag, a git URL, an http(s) tarball)
// replaces the image or stage NAME in FROM and COPY --from, keyed by
// content for the cache.
func TestNamedContexts(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Start(t)
	st := newStore(t)

	// An image in the registry and in an OCI layout.
	baseDir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY x /x\nENV FROM_IMAGE=1\n", "x": "image x\n"})
	base, err := Build(ctx, Options{Store: st, ContextDir: baseDir})
	if err != nil {
		t.Fatal(err)
	}
	imgRef := reg.Host + "/named/base:1"
	if _, err := registry.PushImage(ctx, base.Image, imgRef, registry.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	lay := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(lay, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(base.Image, layout.WithAnnotations(map[string]string{layers.RefNameAnnotation: "v1"})); err != nil {
		t.Fatal(err)
	}

	// A directory with a .dockerignore of its own.
	dir := writeContext(t, map[string]string{"d.txt": "dir d\n", "secret.txt": "no\n", ".dockerignore": "secret.txt\n"})
	// A git repository and a tarball URL.
	srv := ctxfetchtest.Serve(t)
	repo := srv.NewRepo(t, "lib.git")
	ctxfetchtest.Commit(t, repo, map[string]string{"pkg/g.txt": "git g\n"}, "lib")
	tarURL := contextServer(t, map[string]string{"h.txt": "http h\n"})

	main := writeContext(t, map[string]string{
		"Dockerfile": `FROM scratch AS deps
COPY does-not-exist /x
FROM alpine:latest AS img
FROM docker.io/library/busybox AS lay
FROM scratch
COPY --from=deps d.txt /d.txt
COPY --from=src d.txt /src-d.txt
COPY --from=src . /src-all/
COPY --from=img /x /img-x
COPY --from=lay /x /lay-x
COPY --from=lib g.txt /g.txt
COPY --from=web h.txt /h.txt
COPY --from=tagged /x /tagged-x
`,
	})
	contexts := map[string]string{
		"deps":    dir,
		"src":     dir,
		"alpine":  "docker-image://" + imgRef,
		"busybox": "oci-layout://" + lay + "@" + base.Digest.String(),
		"tagged":  "oci-layout://" + lay + ":v1",
		"lib":     srv.URL + "/lib.git#main:pkg",
		"web":     tarURL + "/ctx.tar.gz",
	}
	log := &stepLog{}
	res, err := Build(ctx, Options{Store: st, ContextDir: main, BuildContexts: contexts, StepOptions: StepOptions{Progress: log}})
	if err != nil {
		t.Fatal(err)
	}
	wantImageFiles(t, res.Image, map[string]string{
		"/d.txt": "dir d\n", "/src-d.txt": "dir d\n", "/src-all/secret.txt": "<absent>", "/src-all/d.txt": "dir d\n", "/img-x": "image x\n", "/lay-x": "image x\n",
		"/g.txt": "git g\n", "/h.txt": "http h\n", "/tagged-x": "image x\n",
	})

	// FROM a named image and FROM a named directory.
	main2 := writeContext(t, map[string]string{"Dockerfile": "FROM alpine\nCOPY --from=src d.txt /d2\n", "x": ""})
	res2, err := Build(ctx, Options{Store: st, ContextDir: main2, BuildContexts: contexts})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := res2.Image.ConfigFile()
	if !strings.Contains(strings.Join(cfg.Config.Env, " "), "FROM_IMAGE=1") {
		t.Fatalf("FROM alpine replaced by docker-image://: env %v", cfg.Config.Env)
	}
	wantImageFiles(t, res2.Image, map[string]string{"/x": "image x\n", "/d2": "dir d\n"})
	main3 := writeContext(t, map[string]string{"Dockerfile": "FROM src\nCOPY --from=lib g.txt /g\n"})
	res3, err := Build(ctx, Options{Store: st, ContextDir: main3, BuildContexts: contexts})
	if err != nil {
		t.Fatal(err)
	}
	wantImageFiles(t, res3.Image, map[string]string{"/d.txt": "dir d\n", "/secret.txt": "<absent>", "/g": "git g\n"})

	// The cache keys named directories by content: a rebuild hits, a
	// changed file misses the steps that copy it.
	log = &stepLog{}
	if _, err := Build(ctx, Options{Store: st, ContextDir: main, BuildContexts: contexts, StepOptions: StepOptions{Progress: log}}); err != nil {
		t.Fatal(err)
	}
	if got := log.pattern("stage-3"); got != "HHHHHHHH" {
		t.Fatalf("rebuild with named contexts: %s\n%s", got, log.reasons())
	}
	writeFile(t, filepath.Join(dir, "d.txt"), "dir d changed\n", 0o644)
	log = &stepLog{}
	if _, err := Build(ctx, Options{Store: st, ContextDir: main, BuildContexts: contexts, StepOptions: StepOptions{Progress: log}}); err != nil {
		t.Fatal(err)
	}
	if got := log.pattern("stage-3"); got != "MMMMMMMM" || !strings.Contains(log.reasons(), "source changed: d.txt") {
		t.Fatalf("changed file of a named context: %s\n%s", got, log.reasons())
	}

	for _, tc := range []struct {
		contexts map[string]string
		want     string
	}{
		{map[string]string{"web": tarURL + "/gone.tar.gz"}, "build context web=" + tarURL + "/gone.tar.gz"},
		{map[string]string{"lib": srv.URL + "/nolib.git"}, "nolib.git"},
		{map[string]string{"img": "docker-image://" + reg.Host + "/named/none:1"}, "named/none"},
		{map[string]string{"lay": "oci-layout://" + filepath.Join(t.TempDir(), "none")}, "no such OCI layout"},
		{map[string]string{"d": filepath.Join(t.TempDir(), "nodir")}, "nodir"},
		{map[string]string{"context": dir}, "cannot be replaced"},
	} {
		df := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY --from=img /x /x\n"})
		_, err := Build(ctx, Options{Store: st, ContextDir: df, BuildContexts: tc.contexts})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error naming %q", tc.contexts, err, tc.want)
		}
	}
}

func TestContextKey(t *testing.T) {
	for in, want := range map[string]string{
		"alpine":                          "alpine",
		"alpine:latest":                   "alpine",
		"docker.io/library/alpine:latest": "alpine",
		"alpine:3":                        "alpine:3",
		"Src":                             "src",
		"reg.example.com:5000/a/b:1":      "reg.example.com:5000/a/b:1",
		"alpine::linux/arm64":             "alpine::linux/arm64",
	} {
		if got := contextKey(in); got != want {
			t.Errorf("contextKey(%q) = %q, want %q", in, got, want)
		}
	}
}

package ctxfetch

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
	"time"

	"github.com/ibuild/ibuild/builder/ctxfetch/ctxfetchtest"
)

func TestParse(t *testing.T) {
	local := t.TempDir()
	odd := filepath.Join(local, "a:b")
	if err := os.Mkdir(odd, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		in      string
		kind    Kind
		remote  string
		ref     string
		subdir  string
		keep    bool
		sub     bool
		wantErr string
	}{
		{in: ".", kind: KindDir},
		{in: local, kind: KindDir},
		{in: odd, kind: KindDir},
		{in: "-", kind: KindStdin},
		{in: "https://example.com/ctx.tar.gz", kind: KindHTTP},
		{in: "https://example.com/repo.git", kind: KindGit, remote: "https://example.com/repo.git"},
		{in: "https://example.com/repo.git#v1:sub/dir", kind: KindGit, remote: "https://example.com/repo.git", ref: "v1", subdir: "sub/dir"},
		{in: "https://example.com/repo.git?ref=main&subdir=app&keep-git-dir=true&submodules=true", kind: KindGit,
			remote: "https://example.com/repo.git", ref: "main", subdir: "app", keep: true, sub: true},
		{in: "https://example.com/repo.git?branch=dev", kind: KindGit, remote: "https://example.com/repo.git", ref: "refs/heads/dev"},
		{in: "git@example.com:team/repo.git#main", kind: KindGit, remote: "git@example.com:team/repo.git", ref: "main"},
		{in: "ssh://git@example.com/team/repo.git", kind: KindGit, remote: "ssh://git@example.com/team/repo.git"},
		{in: "git://example.com/repo.git#:sub", kind: KindGit, remote: "git://example.com/repo.git", subdir: "sub"},
		{in: "https://example.com/repo.git?bogus=1", wantErr: `unexpected query "bogus"`},
		{in: "ext::sh -c touch% /tmp/pwned", kind: KindDir},
		{in: "", wantErr: "empty build context"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			src, err := Parse(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse(%q) = %+v, %v; want error %q", tc.in, src, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if src.Kind != tc.kind {
				t.Fatalf("kind %v, want %v", src.Kind, tc.kind)
			}
			if tc.kind != KindGit {
				return
			}
			g := src.Git
			if g.Remote != tc.remote || g.Ref != tc.ref || g.SubDir != tc.subdir || g.KeepGitDir != tc.keep || g.Submodules != tc.sub {
				t.Fatalf("got %+v, want remote %s ref %s subdir %s keep %v submodules %v", g, tc.remote, tc.ref, tc.subdir, tc.keep, tc.sub)
			}
		})
	}
}

func TestRedact(t *testing.T) {
	if got := Redact("https://user:s3cret@example.com/x.tar"); strings.Contains(got, "s3cret") {
		t.Fatal(got)
	}
	if got := Redact("https://tok3n@example.com/x.tar"); strings.Contains(got, "tok3n") {
		t.Fatal(got)
	}
}

func gitSource(t *testing.T, s string) *GitRef {
	t.Helper()
	src, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	if src.Kind != KindGit {
		t.Fatalf("%s is not a git URL", s)
	}
	return src.Git
}

// TestGit fetches refs of a repository served by git http-backend: the
// default branch, a tag, a commit, a subdir; .git stays out unless asked;
// no hook runs, even one the user's git configuration names.
func TestGit(t *testing.T) {
	srv := ctxfetchtest.Serve(t)
	repo := srv.NewRepo(t, "app.git")
	c1 := ctxfetchtest.Commit(t, repo, map[string]string{"Dockerfile": "FROM scratch\n", "sub/a.txt": "one\n", "link": ctxfetchtest.SymlinkPrefix + "/etc"}, "one")
	ctxfetchtest.Git(t, repo, "tag", "v1")
	c2 := ctxfetchtest.Commit(t, repo, map[string]string{"sub/a.txt": "two\n"}, "two")

	// A hook the user's configuration points at must not run.
	home := t.TempDir()
	hooks := filepath.Join(home, "hooks")
	marker := filepath.Join(home, "hook-ran")
	if err := os.MkdirAll(hooks, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"post-checkout", "post-merge", "reference-transaction"} {
		if err := os.WriteFile(filepath.Join(hooks, h), []byte("#!/bin/sh\ntouch "+marker+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(home, ".gitconfig"), []byte("[core]\n\thooksPath = "+hooks+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HOME", home)

	ctx := context.Background()
	opts := Options{TempDir: t.TempDir()}
	for _, tc := range []struct {
		url, commit, a string
		gitDir         bool
	}{
		{url: srv.URL + "/app.git", commit: c2, a: "two\n"},
		{url: srv.URL + "/app.git#v1", commit: c1, a: "one\n"},
		{url: srv.URL + "/app.git#" + c1, commit: c1, a: "one\n"},
		{url: srv.URL + "/app.git#main:sub", commit: c2, a: "two\n"},
		{url: srv.URL + "/app.git?keep-git-dir=true", commit: c2, a: "two\n", gitDir: true},
	} {
		t.Run(tc.url, func(t *testing.T) {
			f, err := Git(ctx, gitSource(t, tc.url), opts)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if f.Commit != tc.commit {
				t.Errorf("commit %s, want %s", f.Commit, tc.commit)
			}
			a := filepath.Join(f.Dir, "sub", "a.txt")
			if strings.HasSuffix(tc.url, ":sub") {
				a = filepath.Join(f.Dir, "a.txt")
			}
			if b, err := os.ReadFile(a); err != nil || string(b) != tc.a {
				t.Errorf("a.txt = %q, %v; want %q", b, err, tc.a)
			}
			_, err = os.Stat(filepath.Join(f.Dir, ".git"))
			if tc.gitDir != (err == nil) {
				t.Errorf(".git in the context: %v, want %v", err == nil, tc.gitDir)
			}
			if tc.gitDir {
				cfg, _ := os.ReadFile(filepath.Join(f.Dir, ".git", "config"))
				if !strings.Contains(string(cfg), srv.URL+"/app.git") {
					t.Errorf(".git/config names no origin:\n%s", cfg)
				}
			}
			if _, err := os.Stat(marker); err == nil {
				t.Fatal("a git hook ran")
			}
		})
	}

	// mtime=commit sets every file's mtime to the commit's.
	f, err := Git(ctx, gitSource(t, srv.URL+"/app.git?mtime=commit"), opts)
	if err != nil {
		t.Fatal(err)
	}
	want := time.Date(2023, 11, 14, 22, 13, 20, 0, time.UTC)
	for _, p := range []string{"Dockerfile", "sub", "sub/a.txt", "."} {
		fi, err := os.Lstat(filepath.Join(f.Dir, p))
		if err != nil || !fi.ModTime().Equal(want) {
			t.Errorf("%s: mtime %v, %v; want %v", p, fi.ModTime(), err, want)
		}
	}
	f.Close()
	if _, err := os.Stat(f.Dir); err == nil {
		t.Error("Close left the checkout")
	}

	for _, tc := range []struct{ url, want string }{
		{srv.URL + "/app.git#nosuch", "app.git at nosuch"},
		{srv.URL + "/missing.git", "missing.git"},
		{srv.URL + "/app.git#main:link", `subdir "link": link is not a directory`},
		{srv.URL + "/app.git#main:nodir", `subdir "nodir" does not exist`},
		{srv.URL + "/app.git?checksum=" + c1 + "&branch=main", "not the expected " + c1},
	} {
		if _, err := Git(ctx, gitSource(t, tc.url), opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to name %q", tc.url, err, tc.want)
		}
	}
	if ents, _ := os.ReadDir(opts.TempDir); len(ents) != 0 {
		t.Errorf("failed fetches left %d directories", len(ents))
	}
}

type tarEntry struct {
	name, link, body string
	typ              byte
}

func makeTar(t *testing.T, ents []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body))}
		if e.typ == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if h.Typeflag == tar.TypeDir {
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// TestTarConfined: nothing in a context tar writes outside its root.
func TestTarConfined(t *testing.T) {
	outside := t.TempDir()
	ctx := context.Background()
	opts := Options{TempDir: t.TempDir()}
	ok := makeTar(t, []tarEntry{
		{name: "Dockerfile", body: "FROM scratch\n"},
		{name: "/abs.txt", body: "abs"},
		{name: "esc", typ: tar.TypeSymlink, link: outside},
		{name: "esc/through.txt", body: "x"},
		{name: "up", typ: tar.TypeSymlink, link: "../../../../../../" + outside},
		{name: "up/through2.txt", body: "x"},
	})
	f, err := Tar(ctx, bytes.NewReader(gz(ok)), "standard input", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("the tar wrote outside its root: %v", ents)
	}
	if b, err := os.ReadFile(filepath.Join(f.Dir, "abs.txt")); err != nil || string(b) != "abs" {
		t.Fatalf("absolute name not confined: %q %v", b, err)
	}
	if f.Dockerfile != nil {
		t.Fatal("a tar taken for a Dockerfile")
	}

	bad := makeTar(t, []tarEntry{{name: "../../escape.txt", body: "x"}})
	if _, err := Tar(ctx, bytes.NewReader(bad), "standard input", opts); err == nil || !strings.Contains(err.Error(), "escape.txt") {
		t.Fatalf("a name climbing out: %v", err)
	}
	hard := makeTar(t, []tarEntry{{name: "h", typ: tar.TypeLink, link: "../../../etc/passwd"}})
	if _, err := Tar(ctx, bytes.NewReader(hard), "standard input", opts); err == nil {
		t.Fatal("a hard link out of the root was accepted")
	}

	// A plain Dockerfile is taken as one, with an empty context.
	f2, err := Tar(ctx, strings.NewReader("FROM scratch\nCOPY . /\n"), "standard input", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	if string(f2.Dockerfile) != "FROM scratch\nCOPY . /\n" {
		t.Fatalf("Dockerfile %q", f2.Dockerfile)
	}
	if ents, _ := os.ReadDir(f2.Dir); len(ents) != 0 {
		t.Fatalf("context of a plain Dockerfile is not empty: %v", ents)
	}
}

// TestTarBomb: a small compressed stream that expands past MaxExtract is
// refused, having written no more than the limit.
func TestTarBomb(t *testing.T) {
	big := makeTar(t, []tarEntry{{name: "zeros", body: string(make([]byte, 4<<20))}})
	z := gz(big)
	opts := Options{TempDir: t.TempDir(), MaxExtract: 1 << 20}
	_, err := Tar(context.Background(), bytes.NewReader(z), "standard input", opts)
	if err == nil || !strings.Contains(err.Error(), "more than 1048576 bytes") {
		t.Fatalf("bomb of %d bytes: %v", len(z), err)
	}
	if ents, _ := os.ReadDir(opts.TempDir); len(ents) != 0 {
		t.Fatalf("left %v", ents)
	}
}

// TestHTTP downloads a tarball, a plain Dockerfile, and refuses
// oversize downloads and error statuses, naming the URL without its
// password.
func TestHTTP(t *testing.T) {
	tarball := gz(makeTar(t, []tarEntry{{name: "Dockerfile", body: "FROM scratch\n"}, {name: "dir/", typ: tar.TypeDir}, {name: "dir/f", body: "f"}}))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ctx.tar.gz":
			w.Write(tarball)
		case "/Dockerfile":
			w.Write([]byte("FROM scratch\n"))
		case "/big":
			w.Header().Set("Content-Length", "100000")
			w.Write(make([]byte, 100000))
		case "/chunked":
			for i := 0; i < 100; i++ {
				w.Write(make([]byte, 1000))
				w.(http.Flusher).Flush()
			}
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	ctx := context.Background()
	opts := Options{TempDir: t.TempDir(), MaxDownload: 50000}
	f, err := HTTP(ctx, nil, srv.URL+"/ctx.tar.gz", opts)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(f.Dir, "dir", "f")); err != nil || string(b) != "f" {
		t.Fatalf("dir/f: %q %v", b, err)
	}
	f.Close()
	f, err = HTTP(ctx, nil, srv.URL+"/Dockerfile", opts)
	if err != nil || string(f.Dockerfile) != "FROM scratch\n" {
		t.Fatalf("Dockerfile: %v %q", err, f.Dockerfile)
	}
	f.Close()
	withPass := strings.Replace(srv.URL, "http://", "http://u:s3cret@", 1)
	for path, want := range map[string]string{"/big": "over the limit", "/chunked": "over the limit", "/nope": "404"} {
		_, err := HTTP(ctx, nil, withPass+path, opts)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: error %v, want %q naming the URL without its password", path, err, want)
		}
	}
	if ents, _ := os.ReadDir(opts.TempDir); len(ents) != 0 {
		t.Fatalf("left %v", ents)
	}
}

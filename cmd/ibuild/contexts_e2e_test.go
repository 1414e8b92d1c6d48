package main

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ibuild/ibuild/builder/ctxfetch/ctxfetchtest"
	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// readOut reads a file of a type=local output.
func readOut(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatalf("output %s: %v", name, err)
	}
	return string(b)
}

// TestContextsCLI builds from a tar on standard input (the Dockerfile in
// it, or named with -f), from a git URL with a ref and a subdir, and with
// --build-context directories and git URLs.
func TestContextsCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end builds")
	}
	root := t.TempDir()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range map[string]string{
		"Dockerfile":     "FROM scratch\nCOPY f /f\n",
		"alt/Dockerfile": "FROM scratch\nCOPY f /alt\n",
		"f":              "from stdin\n",
	} {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(body))
	}
	tw.Close()
	out := filepath.Join(t.TempDir(), "out")
	if _, errOut, code := ibuild(t, root, buf.String(), "build", "-q", "-o", "type=local,dest="+out, "-"); code != 0 {
		t.Fatalf("build - < ctx.tar: exit %d\n%s", code, errOut)
	}
	if got := readOut(t, out, "f"); got != "from stdin\n" {
		t.Fatalf("/f = %q", got)
	}
	out2 := filepath.Join(t.TempDir(), "out")
	if _, errOut, code := ibuild(t, root, buf.String(), "build", "-q", "-f", "alt/Dockerfile", "-o", "type=local,dest="+out2, "-"); code != 0 {
		t.Fatalf("build -f alt/Dockerfile - < ctx.tar: exit %d\n%s", code, errOut)
	}
	if got := readOut(t, out2, "alt"); got != "from stdin\n" {
		t.Fatalf("/alt = %q", got)
	}
	if _, errOut, code := ibuild(t, root, "FROM scratch\n", "build", "-f", "-", "-"); code != 2 || !strings.Contains(errOut, "both read standard input") {
		t.Fatalf("-f - -: exit %d\n%s", code, errOut)
	}

	srv := ctxfetchtest.Serve(t)
	repo := srv.NewRepo(t, "site.git")
	ctxfetchtest.Commit(t, repo, map[string]string{"web/Dockerfile": "FROM scratch\nCOPY index.html /srv/\nCOPY --from=extra e.txt /srv/\nCOPY --from=lib l.txt /srv/\n", "web/index.html": "hi\n"}, "site")
	ctxfetchtest.Git(t, repo, "tag", "v1")
	lib := srv.NewRepo(t, "lib.git")
	ctxfetchtest.Commit(t, lib, map[string]string{"l.txt": "lib\n"}, "lib")
	extra := writeContext(t, map[string]string{"e.txt": "extra\n"})
	out3 := filepath.Join(t.TempDir(), "out")
	if _, errOut, code := ibuild(t, root, "", "build", "-q", "--build-context", "extra="+extra, "--build-context", "lib="+srv.URL+"/lib.git",
		"-o", "type=local,dest="+out3, srv.URL+"/site.git#v1:web"); code != 0 {
		t.Fatalf("build from git: exit %d\n%s", code, errOut)
	}
	for name, want := range map[string]string{"srv/index.html": "hi\n", "srv/e.txt": "extra\n", "srv/l.txt": "lib\n"} {
		if got := readOut(t, out3, name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	_, errOut, code := ibuild(t, root, "", "build", srv.URL+"/site.git#nosuch")
	if code == 0 || !strings.Contains(errOut, "site.git at nosuch") {
		t.Fatalf("missing ref: exit %d\n%s", code, errOut)
	}
	_, errOut, code = ibuild(t, root, "", "build", "--build-context", "x", ".")
	if code == 0 || !strings.Contains(errOut, "want NAME=VALUE") {
		t.Fatalf("bad --build-context: exit %d\n%s", code, errOut)
	}
}

// TestCacheMountsTravelCLI runs two CI runners with fresh roots: the
// first writes into a cache mount and exports it (mounts=true) to a
// local cache directory and to the registry; the second, with another
// build arg so the step runs, finds the first one's file in the mount.
func TestCacheMountsTravelCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end builds with a registry")
	}
	if os.Geteuid() != 0 {
		layertest.SkipOrFail(t, "cache mounts need RUN: run as root")
	}
	reg := registrytest.Start(t)
	ctxDir := busyboxContext(t, "ARG RUNNER\nRUN --mount=type=cache,id=c,target=/c echo $RUNNER >> /c/log && cp /c/log /seen\n")
	epoch := "--source-date-epoch=1700000000"
	for _, tc := range []struct{ name, to, from string }{
		{"local", "type=local,dest=" + filepath.Join(t.TempDir(), "cache") + ",mode=max,mounts=true", ""},
		{"registry", "type=registry,ref=" + reg.Host + "/travel/cli:cache,mode=max,mounts=true", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			from := strings.Replace(strings.Replace(tc.to, "dest=", "src=", 1), ",mode=max,mounts=true", "", 1)
			mustIbuild(t, t.TempDir(), "build", "-q", epoch, "--build-arg", "RUNNER=a", "--cache-to", tc.to, ctxDir)
			out := filepath.Join(t.TempDir(), "out")
			_, errOut, code := ibuild(t, t.TempDir(), "", "build", epoch, "--progress", "plain", "--build-arg", "RUNNER=b",
				"--cache-from", from, "-o", "type=local,dest="+out, ctxDir)
			if code != 0 {
				t.Fatalf("runner b: exit %d\n%s", code, errOut)
			}
			if got := readOut(t, out, "seen"); got != "a\nb\n" {
				t.Fatalf("runner b saw %q in the cache mount, want \"a\\nb\\n\"\n%s", got, errOut)
			}
			if !strings.Contains(errOut, "cache mount c: imported") {
				t.Errorf("no import reported:\n%s", errOut)
			}
		})
	}
	_, errOut, code := ibuild(t, t.TempDir(), "", "build", "--cache-to", "type=local,src=/tmp/x", ctxDir)
	if code == 0 || !strings.Contains(errOut, "dest=DIR") {
		t.Fatalf("--cache-to type=local,src=: exit %d\n%s", code, errOut)
	}
}

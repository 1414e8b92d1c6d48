package main

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/ibuild/ibuild/layers/layertest"
)

// usernsTestUser is the unprivileged user with a subordinate id range that
// the user-namespace tests create when missing.
const usernsTestUser = "ibuild-test"

// usernsSteps are RUN steps that need a user namespace with many ids:
// writes, a deletion (whiteout), an opaque directory, chown to another id
// and a step run as that user.
const usernsSteps = `RUN mkdir -p /etc /data /opq && echo hi > /data/a && echo gone > /data/b && echo old > /opq/old && echo 'app:x:1000:1000::/home/app:/bin/sh' > /etc/passwd && echo 'app:x:1000:' > /etc/group
RUN rm /data/b && rm -rf /opq && mkdir /opq && echo new > /opq/new && chown 1000:1000 /data/a && mkdir -p /home/app && chown app:app /home/app
USER app
RUN echo from-app > /home/app/f && id -u > /home/app/uid
`

// unprivilegedUser returns the uid and gid of name, creating the user
// (with a home) when missing; with subIDs it also makes sure
// /etc/subuid and /etc/subgid give the user a range.
func unprivilegedUser(t *testing.T, name string, subIDs bool) (int, int) {
	t.Helper()
	if _, err := user.Lookup(name); err != nil {
		if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", name).CombinedOutput(); err != nil {
			t.Fatalf("useradd %s: %v %s", name, err, out)
		}
	}
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if subIDs {
		addSubIDRange(t, name, 200000)
	}
	return uid, gid
}

// buildAsUser copies the ibuild binary and the context ctxDir into a fresh
// directory the user uid:gid owns and runs ibuild build there as that
// user, with the store in its default place under HOME. It returns the
// work directory (removed, as root, when the test ends), the combined
// output and the error.
func buildAsUser(t *testing.T, uid, gid int, ctxDir string, args ...string) (string, string, error) {
	t.Helper()
	return buildAsUserIn(t, uid, gid, "", ctxDir, nil, args...)
}

// buildAsUserIn is buildAsUser with HOME set to home (one the user owns;
// "" makes a fresh one in the work directory), global flags before the
// command name and args after it.
func buildAsUserIn(t *testing.T, uid, gid int, home, ctxDir string, global []string, args ...string) (string, string, error) {
	t.Helper()
	layertest.RequireTool(t, "setpriv")
	layertest.RequireTool(t, "newuidmap")
	work, err := os.MkdirTemp("", "ibuild-userns-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) }) // root removes the subordinate ids' files too
	if err := os.Chmod(work, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", ctxDir, filepath.Join(work, "ctx")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	if out, err := exec.Command("cp", ibuildBin, work).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	if home == "" {
		home = filepath.Join(work, "home")
		if err := os.Mkdir(home, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("chown", "-R", fmt.Sprintf("%d:%d", uid, gid), work).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	argv := append([]string{"--reuid=" + strconv.Itoa(uid), "--regid=" + strconv.Itoa(gid), "--clear-groups",
		filepath.Join(work, "ibuild")}, global...)
	argv = append(argv, "build", "--progress", "plain")
	argv = append(append(argv, args...), filepath.Join(work, "ctx"))
	cmd := exec.Command("setpriv", argv...)
	cmd.Dir = work
	cmd.Env = []string{"PATH=/usr/bin:/bin:/usr/sbin:/sbin", "HOME=" + home, "SOURCE_DATE_EPOCH=1700000000"}
	out, err := cmd.CombinedOutput()
	return work, string(out), err
}

// TestUnprivilegedRunInUserNamespace builds RUN steps as an ordinary user
// with a subordinate id range: ibuild re-executes itself into a user
// namespace, the layers record in-image owners (the chowned file 1000:1000,
// never the host user's id), deletions as whiteouts and a recreated
// directory as opaque.
func TestUnprivilegedRunInUserNamespace(t *testing.T) {
	requireRoot(t)
	uid, gid := unprivilegedUser(t, usernsTestUser, true)
	ctxDir := busyboxContext(t, usernsSteps)
	work, out, err := buildAsUser(t, uid, gid, ctxDir, "--output", "type=oci,tar=false,dest=oci")
	if err != nil {
		t.Fatalf("unprivileged build: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(work, "home", ".local", "share", "ibuild", "storage", "overlay")); err != nil {
		t.Fatalf("the store is not the user's overlay store under HOME: %v\n%s", err, out)
	}
	img := ociImage(t, filepath.Join(work, "oci"))
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var whiteout, opaque bool
	for i, l := range ls {
		forEachEntry(t, l, func(h *tar.Header, _ io.Reader) {
			if h.Uid == uid || h.Gid == gid {
				t.Errorf("layer %d: %s owned by the host user %d:%d", i+1, h.Name, h.Uid, h.Gid)
			}
			switch h.Name {
			case "data/.wh.b":
				whiteout = true
			case "opq/.wh..wh..opq":
				opaque = true
			}
		})
	}
	if !whiteout || !opaque {
		t.Errorf("whiteout of /data/b: %v, opaque /opq: %v; want both", whiteout, opaque)
	}
	files := map[string]*tar.Header{}
	contents := map[string]string{}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		h.Name = strings.TrimSuffix(h.Name, "/")
		files[h.Name] = h
		if h.Typeflag == tar.TypeReg {
			data, _ := io.ReadAll(tr)
			contents[h.Name] = string(data)
		}
	}
	for name, want := range map[string]string{"data/a": "hi\n", "opq/new": "new\n", "home/app/f": "from-app\n", "home/app/uid": "1000\n"} {
		if contents[name] != want {
			t.Errorf("%s = %q, want %q", name, contents[name], want)
		}
	}
	for _, gone := range []string{"data/b", "opq/old"} {
		if _, ok := files[gone]; ok {
			t.Errorf("%s is in the image; the build deleted it", gone)
		}
	}
	for _, name := range []string{"data/a", "home/app/f", "home/app"} {
		if h := files[name]; h == nil || h.Uid != 1000 || h.Gid != 1000 {
			t.Errorf("%s: want owner 1000:1000, got %+v", name, h)
		}
	}
}

// TestUnprivilegedRunSingleID builds as a user without a subordinate id
// range (nobody): auto keeps the native store and RUN says what it needs;
// --isolation userns maps the one id, warns, runs steps that chown
// nothing, and a chown to another id fails saying why.
func TestUnprivilegedRunSingleID(t *testing.T) {
	requireRoot(t)
	for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
		if data, _ := os.ReadFile(f); strings.Contains("\n"+string(data), "\nnobody:") || strings.Contains("\n"+string(data), "\n65534:") {
			layertest.SkipOrFail(t, "%s gives nobody a range: this test needs a user without one", f)
		}
	}
	plain := busyboxContext(t, "RUN echo hi > /hi\n")
	_, out, err := buildAsUser(t, 65534, 65534, plain)
	if err == nil || !strings.Contains(out, "needs a user namespace") || !strings.Contains(out, "/etc/subuid") {
		t.Fatalf("auto without a range: want RUN to say it needs a user namespace and a subuid range, got %v\n%s", err, out)
	}
	_, out, err = buildAsUser(t, 65534, 65534, plain, "--isolation", "userns")
	if err != nil {
		t.Fatalf("--isolation userns without a range: %v\n%s", err, out)
	}
	if !strings.Contains(out, "maps only your own uid and gid") {
		t.Errorf("no warning about the single id:\n%s", out)
	}
	chown := busyboxContext(t, "RUN touch /f && chown 1000:1000 /f\n")
	_, out, err = buildAsUser(t, 65534, 65534, chown, "--isolation", "userns")
	if err == nil || !strings.Contains(out, "maps a single uid and gid") {
		t.Fatalf("chown 1000 with a single id: want a failure naming the single mapping, got %v\n%s", err, out)
	}
}

// ociImage reads the one image of the OCI layout at dir.
func ociImage(t *testing.T, dir string) v1.Image {
	t.Helper()
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil || len(m.Manifests) != 1 {
		t.Fatalf("index: %v, %d manifests", err, len(m.Manifests))
	}
	img, err := idx.Image(m.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// forEachEntry calls f for each entry of the layer's tar.
func forEachEntry(t *testing.T, l v1.Layer, f func(*tar.Header, io.Reader)) {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		f(h, tr)
	}
}

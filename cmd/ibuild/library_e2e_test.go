package main

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ibuild/ibuild/layers/layertest"
)

// libExampleUser is the unprivileged user (with a subordinate id range of
// its own) that TestLibraryRunsAsUnprivilegedUser creates when missing.
const libExampleUser = "ibuild-libexample"

// TestLibraryRunsAsUnprivilegedUser builds testdata/libuserns, a program
// of another module importing ibuild (as a caller's would, through a
// replace directive to this tree), and runs it as an ordinary user with a
// subordinate id range: builder.MaybeReexecUsingUserNamespace takes it
// into a user namespace, so its RUN steps run and chown to other ids.
// It lives here, not in builder, for the helpers that make users and
// busybox contexts.
func TestLibraryRunsAsUnprivilegedUser(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a program of its own (-short)")
	}
	requireRoot(t)
	layertest.RequireTool(t, "setpriv")
	layertest.RequireTool(t, "newuidmap")
	addSubIDRange(t, libExampleUser, 500000)
	uid, gid := unprivilegedUser(t, libExampleUser, true)

	// The program, as a module of its own requiring this one.
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	mod := t.TempDir()
	src, err := os.ReadFile("testdata/libuserns/main.go")
	if err != nil {
		t.Fatal(err)
	}
	sum, err := os.ReadFile(filepath.Join(repo, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	gomod := "module example.com/libuserns\n\ngo 1.26.8\n\nrequire github.com/ibuild/ibuild v0.0.0\n\nreplace github.com/ibuild/ibuild => " + repo + "\n"
	for name, data := range map[string][]byte{"main.go": src, "go.mod": []byte(gomod), "go.sum": sum} {
		if err := os.WriteFile(filepath.Join(mod, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	work, err := os.MkdirTemp("", "ibuild-libexample-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) }) // root removes the subordinate ids' files too
	if err := os.Chmod(work, 0o755); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-tags", "exclude_graphdriver_btrfs", "-o", filepath.Join(work, "libuserns"), ".")
	build.Dir = mod
	build.Env = append(os.Environ(), "GOFLAGS=-mod=mod") // modules the tree does not build with come from GOPROXY
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build of the example module: %v\n%s", err, out)
	}

	ctxDir := busyboxContext(t, "RUN echo made-by-run > /made && chown 1000:1000 /made\n")
	if out, err := exec.Command("cp", "-a", ctxDir, filepath.Join(work, "ctx")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	for _, d := range []string{"home"} {
		if err := os.Mkdir(filepath.Join(work, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("chown", "-R", fmt.Sprintf("%d:%d", uid, gid), work).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	cmd := exec.Command("setpriv", "--reuid="+strconv.Itoa(uid), "--regid="+strconv.Itoa(gid), "--clear-groups",
		filepath.Join(work, "libuserns"), filepath.Join(work, "store"), filepath.Join(work, "ctx"), filepath.Join(work, "oci"))
	cmd.Dir = work
	cmd.Env = []string{"PATH=/usr/bin:/bin:/usr/sbin:/sbin", "HOME=" + filepath.Join(work, "home")}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the example program as %s: %v\n%s", libExampleUser, err, out)
	}
	if !strings.HasPrefix(string(out), "sha256:") {
		t.Fatalf("the example printed %q", out)
	}
	img := ociImage(t, filepath.Join(work, "oci"))
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var made *tar.Header
	forEachEntry(t, ls[len(ls)-1], func(h *tar.Header, r io.Reader) {
		if h.Name == "made" {
			made = h
		}
	})
	if made == nil || made.Uid != 1000 || made.Gid != 1000 {
		t.Fatalf("the RUN step's /made: %+v, want owner 1000:1000", made)
	}
}

// addSubIDRange gives name a range of 65536 ids from start in /etc/subuid
// and /etc/subgid, unless it has one.
func addSubIDRange(t *testing.T, name string, start int) {
	t.Helper()
	for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
		data, err := os.ReadFile(f)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if strings.Contains("\n"+string(data), "\n"+name+":") {
			continue
		}
		fh, err := os.OpenFile(f, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		_, err = fmt.Fprintf(fh, "%s:%d:65536\n", name, start)
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ibuild/ibuild/layers/layertest"
)

// storePermUser is the unprivileged user TestStoreClosedToOtherUsers
// creates when missing (a name no other test uses).
const storePermUser = "ibuild-storeperm"

// euidProgram prints the effective uid: made setuid root, it tells whether
// the kernel honoured the bit.
const euidProgram = `package main

import (
	"fmt"
	"os"
)

func main() { fmt.Println(os.Geteuid()) }
`

// asOtherUser runs the shell script as uid:gid with no supplementary
// groups and returns its combined output and error. The script's shell,
// not setpriv, resolves its paths: setpriv still holds root's
// capabilities until it executes the shell.
func asOtherUser(uid, gid int, script string) (string, error) {
	cmd := exec.Command("setpriv", "--reuid="+strconv.Itoa(uid), "--regid="+strconv.Itoa(gid), "--clear-groups", "/bin/sh", "-c", script)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestStoreClosedToOtherUsers checks, as another unprivileged user, that
// the store root keeps them out (a fresh store, and an old 0755 one once
// ibuild opened it), and that a mounted working container is nosuid and
// nodev: a setuid-root binary of the image does not run as root and a
// 0666 device node of the image cannot be opened, even with the store
// root opened up; `ibuild mount --suid --dev` gives both back.
func TestStoreClosedToOtherUsers(t *testing.T) {
	requireRoot(t)
	layertest.RequireTool(t, "setpriv")
	goBin := layertest.RequireTool(t, "go")
	uid, gid := unprivilegedUser(t, storePermUser, false)

	// The store's parent is open to everyone: only the store root itself
	// may stop the other user.
	parent, err := os.MkdirTemp("", "ibuild-storeperm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("umount", "-R", "-l", parent).Run()
		os.RemoveAll(parent)
	})
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(parent, "root")

	// An image with a setuid-root program and a 0666 character device.
	ctx := writeContext(t, map[string]string{
		"Dockerfile": "FROM scratch\nCOPY --chmod=4755 euid /euid\nCOPY null /null\n",
		"euid.go":    euidProgram,
	})
	build := exec.Command(goBin, "build", "-o", filepath.Join(ctx, "euid"), filepath.Join(ctx, "euid.go"))
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if err := unix.Mknod(filepath.Join(ctx, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(ctx, "null"), 0o666); err != nil {
		t.Fatal(err)
	}
	mustIbuild(t, root, "build", "-q", "-t", "suid:1", ctx)
	fi, err := os.Stat(root)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("new store root is mode %04o, want 0700", perm)
	}

	name := strings.TrimSpace(mustIbuild(t, root, "from", "suid:1"))
	mp := strings.TrimSpace(mustIbuild(t, root, "mount", name))
	if !strings.HasPrefix(mp, root+"/") {
		t.Fatalf("mount point %s is not under the store root %s", mp, root)
	}
	if out, err := asOtherUser(uid, gid, "ls '"+root+"'"); err == nil || !strings.Contains(out, "Permission denied") {
		t.Errorf("another user listed the store root %s: %v\n%s", root, err, out)
	}
	if out, err := asOtherUser(uid, gid, "'"+filepath.Join(mp, "euid")+"'"); err == nil || !strings.Contains(out, "Permission denied") {
		t.Errorf("another user ran %s/euid through the store: %v\n%s", mp, err, out)
	}
	if opts := mountOptions(t, mp); !strings.Contains(","+opts+",", ",nosuid,") || !strings.Contains(","+opts+",", ",nodev,") {
		t.Errorf("ibuild mount: mount options %q, want nosuid and nodev", opts)
	}

	// Even with the store root opened for traversal, the mount grants
	// neither root nor the device.
	if err := os.Chmod(root, 0o711); err != nil {
		t.Fatal(err)
	}
	if out, err := asOtherUser(uid, gid, "'"+filepath.Join(mp, "euid")+"'"); err != nil || strings.TrimSpace(out) != strconv.Itoa(uid) {
		t.Errorf("setuid-root program of a mounted container: %v, printed %q, want the caller's uid %d (nosuid)", err, out, uid)
	}
	if out, err := asOtherUser(uid, gid, "echo x > '"+filepath.Join(mp, "null")+"'"); err == nil || !strings.Contains(out, "Permission denied") {
		t.Errorf("another user wrote to a device node of a mounted container: %v\n%s", err, out)
	}

	// Opening the store again closes the root, and says so.
	_, errOut, code := ibuild(t, root, "", "umount", name)
	if code != 0 || !strings.Contains(errOut, "made it 0700") {
		t.Errorf("ibuild umount on a 0711 store: exit %d, stderr %q, want a warning that the root was made 0700", code, errOut)
	}
	if fi, err := os.Stat(root); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("store root after reopening: %v %v, want mode 0700", fi.Mode(), err)
	}

	// --suid --dev: the caller asked for the image's bits to count.
	mp = strings.TrimSpace(mustIbuild(t, root, "mount", "--suid", "--dev", name))
	if err := os.Chmod(root, 0o711); err != nil {
		t.Fatal(err)
	}
	if out, err := asOtherUser(uid, gid, "'"+filepath.Join(mp, "euid")+"'"); err != nil || strings.TrimSpace(out) != "0" {
		t.Errorf("ibuild mount --suid: setuid-root program printed %q (%v), want 0", out, err)
	}
	if out, err := asOtherUser(uid, gid, "echo x > '"+filepath.Join(mp, "null")+"'"); err != nil {
		t.Errorf("ibuild mount --dev: writing the image's 0666 null device: %v\n%s", err, out)
	}
	mustIbuild(t, root, "umount", name)
}

// mountOptions returns the per-mount options of the mount at mp, from
// /proc/self/mountinfo.
func mountOptions(t *testing.T, mp string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	opts := ""
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) > 5 && f[4] == mp {
			opts = f[5] // the last mount at mp wins
		}
	}
	if opts == "" {
		t.Fatalf("%s is not mounted", mp)
	}
	return opts
}

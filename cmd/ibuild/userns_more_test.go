package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ibuild/ibuild/layers"
)

// asUser runs the ibuild copy in work (made by buildAsUser) as uid:gid with
// the same HOME, so repeated builds share the user's store.
func asUser(t *testing.T, uid, gid int, work string, env []string, args ...string) (string, error) {
	t.Helper()
	argv := append([]string{"--reuid=" + strconv.Itoa(uid), "--regid=" + strconv.Itoa(gid), "--clear-groups",
		filepath.Join(work, "ibuild")}, args...)
	cmd := exec.Command("setpriv", argv...)
	cmd.Dir = work
	cmd.Env = append([]string{"PATH=/usr/bin:/bin:/usr/sbin:/sbin", "HOME=" + filepath.Join(work, "home")}, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestUnprivilegedRunBehaviours checks, as an ordinary user in a user
// namespace, what TestRun checks as root: links, a failing step's exit
// code, /etc/hosts edits not leaking, --network none, a cache mount that
// persists between builds and stays out of the image, and a secret whose
// bytes reach no blob.
func TestUnprivilegedRunBehaviours(t *testing.T) {
	requireRoot(t)
	uid, gid := unprivilegedUser(t, usernsTestUser, true)
	const secret = "s3cr3t-value-9f2c1d"
	steps := "RUN echo a > /h1 && ln /h1 /h2 && ln -s /h1 /sym\n" +
		"RUN echo '1.2.3.4 evil' >> /etc/hosts && test ! -e /etc/hostname && hostname > /hn\n" +
		"RUN --network=none cat /proc/net/dev > /netdev\n" +
		"RUN --mount=type=cache,target=/cache sh -c 'echo x >> /cache/count; wc -l < /cache/count > /count'\n" +
		"RUN --mount=type=secret,id=tok cat /run/secrets/tok | wc -c > /secret-len\n"
	ctxDir := busyboxContext(t, steps)
	if err := os.WriteFile(filepath.Join(ctxDir, "tok.txt"), []byte(secret), 0o644); err != nil {
		t.Fatal(err)
	}
	work, out, err := buildAsUser(t, uid, gid, ctxDir, "-t", "rootless:1", "--secret", "id=tok,src=ctx/tok.txt")
	if err != nil {
		t.Fatalf("unprivileged build: %v\n%s", err, out)
	}
	// A second build (the RUN lines are the same: this version has no
	// build cache yet, so they run again) sees the cache mount's content.
	ctx := filepath.Join(work, "ctx")
	out, err = asUser(t, uid, gid, work, nil, "build", "--progress", "plain", "-t", "rootless:2", "--secret", "id=tok,src=ctx/tok.txt",
		"--output", "type=oci,tar=false,dest=oci", ctx)
	if err != nil {
		t.Fatalf("second unprivileged build: %v\n%s", err, out)
	}
	img := ociImage(t, filepath.Join(work, "oci"))
	files := map[string]*tar.Header{}
	contents := map[string]string{}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		forEachEntry(t, l, func(h *tar.Header, r io.Reader) {
			name := strings.TrimSuffix(h.Name, "/")
			files[name] = h
			if h.Typeflag == tar.TypeReg {
				data, _ := io.ReadAll(r)
				contents[name] = string(data)
			}
		})
	}
	if h := files["h2"]; h == nil || h.Typeflag != tar.TypeLink || h.Linkname != "h1" {
		t.Errorf("h2: want a hardlink to h1, got %+v", h)
	}
	if h := files["sym"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "/h1" {
		t.Errorf("sym: want a symlink to /h1, got %+v", h)
	}
	for _, leak := range []string{"etc/hosts", "etc/hostname", "etc/resolv.conf", "cache", "run/secrets"} {
		if _, ok := files[leak]; ok {
			t.Errorf("%s landed in a layer", leak)
		}
	}
	// The /proc, /sys, /dev mount points the base lacked stay (as docker
	// build leaves them), empty.
	for name := range files {
		for _, d := range []string{"proc/", "sys/", "dev/"} {
			if strings.HasPrefix(name, d) {
				t.Errorf("%s landed in a layer", name)
			}
		}
	}
	if strings.TrimSpace(contents["hn"]) == "" {
		t.Error("the host name was empty in the step")
	}
	for _, line := range strings.Split(strings.TrimSpace(contents["netdev"]), "\n")[2:] {
		if !strings.HasPrefix(strings.TrimSpace(line), "lo:") {
			t.Errorf("--network none shows an interface besides lo: %q", line)
		}
	}
	if got := strings.TrimSpace(contents["count"]); got != "2" {
		t.Errorf("cache mount: the second build counted %q lines, want 2", got)
	}
	if got := strings.TrimSpace(contents["secret-len"]); got != strconv.Itoa(len(secret)) {
		t.Errorf("secret length in the step %q, want %d", got, len(secret))
	}
	// The secret's bytes are in no blob of the user's store nor the output.
	for _, dir := range []string{filepath.Join(work, "home", ".local", "share", "ibuild", "blobs"), filepath.Join(work, "oci", "blobs")} {
		err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err != nil || !fi.Mode().IsRegular() {
				return err
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			rc, err := layers.Decompress(f)
			if err != nil {
				return err
			}
			defer rc.Close()
			data, err := io.ReadAll(rc)
			if err != nil {
				return err
			}
			if bytes.Contains(data, []byte(secret)) {
				t.Errorf("the secret is in %s", p)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	// A failing step reports its exit code and tags nothing.
	failDir := filepath.Join(work, "fail")
	if err := os.MkdirAll(failDir, 0o755); err != nil {
		t.Fatal(err)
	}
	df := "FROM rootless:1\nRUN echo before-$((6*7)) && exit 7\n"
	if err := os.WriteFile(filepath.Join(failDir, "Dockerfile"), []byte(df), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("chown", "-R", fmt.Sprintf("%d:%d", uid, gid), failDir).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	out, err = asUser(t, uid, gid, work, nil, "build", "--progress", "plain", "-t", "broken:1", failDir)
	if err == nil || !strings.Contains(out, "Dockerfile:2") || !strings.Contains(out, "exit code 7") || !strings.Contains(out, "before-42") {
		t.Fatalf("failing unprivileged RUN: want Dockerfile:2, exit code 7 and its output, got %v\n%s", err, out)
	}
	if out, err := asUser(t, uid, gid, work, nil, "inspect", "broken:1"); err == nil {
		t.Fatalf("a failed build tagged broken:1:\n%s", out)
	}
}

// TestUnprivilegedKilledRunLeavesNothing kills an unprivileged build (the
// outer ibuild, whose re-executed copy runs in the user namespace) while a
// RUN step sleeps: no process of the build survives, nothing stays mounted,
// nothing is tagged, and the next build on the same store works.
func TestUnprivilegedKilledRunLeavesNothing(t *testing.T) {
	requireRoot(t)
	uid, gid := unprivilegedUser(t, usernsTestUser, true)
	nap := strconv.Itoa(1240000000 + os.Getpid()%100000*10)
	work, out, err := buildAsUser(t, uid, gid, busyboxContext(t, "RUN echo ready > /ready\n"), "-t", "base:1")
	if err != nil {
		t.Fatalf("unprivileged build: %v\n%s", err, out)
	}
	sleepy := filepath.Join(work, "sleepy")
	if err := os.MkdirAll(sleepy, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sleepy, "Dockerfile"), []byte("FROM base:1\nRUN sleep "+nap+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("setpriv", "--reuid="+strconv.Itoa(uid), "--regid="+strconv.Itoa(gid), "--clear-groups",
		filepath.Join(work, "ibuild"), "build", "--progress", "plain", "-t", "sleepy:1", sleepy)
	cmd.Dir = work
	cmd.Env = []string{"PATH=/usr/bin:/bin:/usr/sbin:/sbin", "HOME=" + filepath.Join(work, "home")}
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for len(procsWith(t, "sleep\x00"+nap+"\x00")) == 0 {
		select {
		case err := <-done:
			t.Fatalf("the build ended (%v) before its step slept\n%s", err, buf.String())
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("the step never started sleeping\n%s", buf.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Kill() // setpriv exec'd ibuild: this is the outer ibuild
	<-done
	deadline = time.Now().Add(10 * time.Second)
	for {
		pids := procsWith(t, nap)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			for _, pid := range pids {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			t.Fatalf("10s after SIGKILL, processes of the build still run: %v", pids)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mi), work) {
		t.Errorf("a mount under %s is left behind", work)
	}
	if out, err := asUser(t, uid, gid, work, nil, "inspect", "sleepy:1"); err == nil {
		t.Fatalf("the killed build tagged sleepy:1:\n%s", out)
	}
	if err := os.WriteFile(filepath.Join(sleepy, "Dockerfile"), []byte("FROM base:1\nRUN echo again > /again\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := asUser(t, uid, gid, work, nil, "build", "-q", "-t", "sleepy:1", sleepy); err != nil {
		t.Fatalf("the next build: %v\n%s", err, out)
	}
}

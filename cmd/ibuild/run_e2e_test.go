package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// requireRoot skips the test (fails it under CI, which runs as root) when
// it does not run as root: RUN needs namespaces, overlay and chroot. Such
// tests are end-to-end: -short skips them.
func requireRoot(t *testing.T) {
	t.Helper()
	endToEnd(t)
	if os.Geteuid() != 0 {
		layertest.SkipOrFail(t, "RUN needs root (namespaces, overlay, chroot)")
	}
}

// busyboxContext makes a build context holding a copy of the host's static
// /bin/busybox and a Dockerfile that installs its applets as /bin symlinks
// and then runs steps (one instruction a line).
func busyboxContext(t *testing.T, steps string) string {
	t.Helper()
	bb := layertest.RequireTool(t, "/bin/busybox")
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM scratch\n" +
			"COPY busybox /bin/busybox\n" +
			`RUN ["/bin/busybox", "--install", "-s", "/bin"]` + "\n" +
			steps,
	})
	if err := os.WriteFile(filepath.Join(dir, "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestPodmanRunsBuiltImage builds an image whose RUN steps write its
// content, writes it as an OCI and as a docker archive, and runs each with
// podman (crun runtime): the image is one a container engine runs as is.
//
// Podman gets a private store (--root, --runroot, vfs) in a temporary
// directory of the test's own, no network and no cgroups, so the machine's
// podman state is not touched. On hosts with hybrid cgroups (v1
// controllers plus a cgroup2 hierarchy holding some controller, as in some
// CI containers) crun refuses to start any container; there podman runs in
// a private mount namespace in which /sys/fs/cgroup/unified is covered by
// an empty tmpfs, so crun sees plain cgroup v1.
func TestPodmanRunsBuiltImage(t *testing.T) {
	requireRoot(t)
	layertest.RequireTool(t, "podman")
	layertest.RequireTool(t, "crun")
	ctxDir := busyboxContext(t, "RUN echo built-by-ibuild > /msg\n"+`CMD ["cat", "/msg"]`+"\n")
	out := t.TempDir()
	archives := map[string]string{
		"oci-archive":    filepath.Join(out, "image.oci.tar"),
		"docker-archive": filepath.Join(out, "image.docker.tar"),
	}
	mustIbuild(t, t.TempDir(), "build", "-q", "-t", "podman-run:1",
		"--output", "type=oci,dest="+archives["oci-archive"],
		"--output", "type=docker,dest="+archives["docker-archive"],
		ctxDir)

	for _, transport := range []string{"oci-archive", "docker-archive"} {
		t.Run(transport, func(t *testing.T) {
			podman := registrytest.Podman(t)
			got := strings.TrimSpace(podman(registrytest.PodmanRun(transport + ":" + archives[transport])...))
			if got != "built-by-ibuild" {
				t.Fatalf("podman run printed %q, want %q", got, "built-by-ibuild")
			}
		})
	}
}

// TestKilledRunLeavesNoMountsOrProcesses stops builds in the middle of a
// RUN step that would sleep for decades, with SIGKILL and, separately, with
// SIGTERM and SIGINT, and expects promptly: no process of the step left, no
// mount under the store, no tag, a tmp/ that is empty or holds only what
// prune handles, and a store the next build uses.
func TestKilledRunLeavesNoMountsOrProcesses(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name string
		sig  syscall.Signal
		// graceful: ibuild handles the signal, cleans up and exits 1;
		// otherwise the kernel kills it and cleans up for it.
		graceful bool
	}{
		{"SIGKILL", syscall.SIGKILL, false},
		{"SIGTERM", syscall.SIGTERM, true},
		{"SIGINT", syscall.SIGINT, true},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// A number no other test or process sleeps for: under
			// 2^31, so any sleep parses it.
			nap := strconv.Itoa(1230000000 + os.Getpid()%100000*10 + i)
			root := filepath.Join(t.TempDir(), "root")
			ctxDir := busyboxContext(t, "RUN echo started && sleep "+nap+"\n")
			b := startBuild(t, root, "sleepy:1", ctxDir)
			if b.waitUntil(t, func() string {
				if pids := procsWith(t, "sleep\x00"+nap+"\x00"); len(pids) > 0 {
					return fmt.Sprintf("sleep %s runs as pid %v", nap, pids)
				}
				return ""
			}) == "" {
				t.Fatalf("the build finished instead of sleeping\n%s", b.out.String())
			}
			if err := b.cmd.Process.Signal(tc.sig); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			select {
			case <-b.done:
			case <-time.After(10 * time.Second):
				t.Fatalf("ibuild still runs 10s after %v\n%s", tc.sig, b.out.String())
			}
			t.Logf("ibuild exited %v after %v", b.cmd.ProcessState, time.Since(start).Round(time.Millisecond))
			ws := b.cmd.ProcessState.Sys().(syscall.WaitStatus)
			if tc.graceful {
				if ws.Signaled() || ws.ExitStatus() == 0 {
					t.Errorf("after %v ibuild ended with %v, want a non-zero exit of its own", tc.sig, b.cmd.ProcessState)
				}
			} else if !ws.Signaled() || ws.Signal() != tc.sig {
				t.Errorf("ibuild ended with %v, want death by %v", b.cmd.ProcessState, tc.sig)
			}

			// Every process of the step goes, even the ones the kernel
			// reaps a moment after ibuild.
			deadline := time.Now().Add(10 * time.Second)
			for {
				pids := procsWith(t, nap)
				if len(pids) == 0 {
					break
				}
				if time.Now().After(deadline) {
					for _, pid := range pids {
						syscall.Kill(pid, syscall.SIGKILL)
					}
					t.Fatalf("10s after %v, processes of the step still run: %v", tc.sig, pids)
				}
				time.Sleep(10 * time.Millisecond)
			}
			mi, err := os.ReadFile("/proc/self/mountinfo")
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(string(mi), "\n") {
				if strings.Contains(line, root) {
					t.Errorf("mount left behind after %v: %s", tc.sig, line)
				}
			}
			if _, _, code := ibuild(t, root, "", "inspect", "sleepy:1"); code == 0 {
				t.Errorf("the build stopped by %v tagged sleepy:1", tc.sig)
			}
			leftovers := tmpLeftovers(t, root, "*")
			if tc.graceful && len(leftovers) > 0 {
				t.Errorf("ibuild handled %v but left tmp/ entries: %v", tc.sig, leftovers)
			}
			if len(leftovers) > 0 {
				t.Logf("%v left tmp/ entries: %v", tc.sig, leftovers)
			}

			// The next build on the same root runs its RUN steps.
			next := busyboxContext(t, "RUN echo done > /done\n")
			mustIbuild(t, root, "build", "-q", "-t", "sleepy:1", next)
			layertest.CheckBlobs(t, root)
			pruneKeepsFreshLeftovers(t, root, leftovers, "sleepy:1")
		})
	}
}

// procsWith lists the pids of processes whose command line (arguments
// joined by NULs) contains s.
func procsWith(t *testing.T, s string) []int {
	t.Helper()
	files, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	self := os.Getpid()
	var pids []int
	for _, f := range files {
		cmd, err := os.ReadFile(f)
		if err != nil {
			continue // it exited
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
		if pid != self && bytes.Contains(append(cmd, 0), []byte(s)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestIsolationAutoWithoutSysAdmin runs ibuild as root with CAP_SYS_ADMIN
// dropped from its bounding and inheritable sets (setpriv), as in a CI
// pod that allows no mount: --isolation auto must choose none, say so,
// and build the image a normal build makes (the same flattened tree).
//
// What it covers: no mount and no namespace needing CAP_SYS_ADMIN. It
// does not deny user namespaces (that is a sysctl the test must not
// change); auto chooses none from the missing capability alone.
func TestIsolationAutoWithoutSysAdmin(t *testing.T) {
	requireRoot(t)
	layertest.RequireTool(t, "setpriv")
	ctxDir := busyboxContext(t, "RUN echo hi > /f && mkdir -p /d/e && ln -s /f /d/l && chmod 700 /d/e && chown 1000:1000 /f\n"+
		"RUN rm /d/l && echo more >> /f && ln /f /g\n")
	normal := filepath.Join(t.TempDir(), "normal")
	mustIbuild(t, t.TempDir(), "build", "-q", "-t", "caps:1", "--output", "type=local,dest="+normal, ctxDir)

	dropped := filepath.Join(t.TempDir(), "dropped")
	cmd := exec.Command("setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin",
		ibuildBin, "--root", t.TempDir(), "build", "-t", "caps:1", "--output", "type=local,dest="+dropped, ctxDir)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build without CAP_SYS_ADMIN: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "isolation none") {
		t.Errorf("the build did not say it chose isolation none:\n%s", out)
	}
	a, b := listTree(t, normal), listTree(t, dropped)
	if strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Errorf("trees differ\nnormal:\n%s\nwithout CAP_SYS_ADMIN:\n%s", strings.Join(a, "\n"), strings.Join(b, "\n"))
	}
}

// listTree describes every path under root: mode, owner, link count and
// symlink target or content.
func listTree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		rel, _ := filepath.Rel(root, p)
		line := fmt.Sprintf("%s %v %d:%d %d", rel, fi.Mode(), st.Uid, st.Gid, st.Nlink)
		if fi.Mode()&fs.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			line += " -> " + target
		} else if fi.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %x", sha256.Sum256(data))
		}
		out = append(out, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

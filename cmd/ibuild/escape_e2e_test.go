package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// escapeProbes are the programs under testdata/escape, each run in its
// own RUN step. Each prints CONTAINED when every attempt failed, and
// ESCAPED (exit 1, failing the build) when one worked.
var escapeProbes = []string{"doublechroot", "openbyhandle", "hoststate", "mount", "mknod", "nsenter", "kernelinfo", "procpid1"}

// escapeRun is the RUN line of a probe: openbyhandle also gets a file of
// the context bound in (a file on the host's file system), nsenter runs
// without a network. A probe that escaped does not stop the build, so
// every probe runs: the test reads their reports (and the host).
func escapeRun(probe string) string {
	switch probe {
	case "openbyhandle":
		return "RUN --mount=type=bind,target=/ctx /probes/openbyhandle /ctx/Dockerfile /ctx || true"
	case "nsenter":
		return "RUN --network=none /probes/nsenter || true"
	}
	return "RUN /probes/" + probe + " || true"
}

// buildProbes compiles the probes as static programs into dir/probes.
func buildProbes(t *testing.T, dir string) {
	t.Helper()
	out := filepath.Join(dir, "probes")
	cmd := exec.Command("go", "build", "-o", out+"/", "./testdata/escape/...")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the escape probes: %v\n%s", err, b)
	}
	for _, p := range escapeProbes {
		if _, err := os.Stat(filepath.Join(out, p)); err != nil {
			t.Fatal(err)
		}
	}
}

// hostWatch is the host state the probes try to change, read before a
// build and compared after it.
type hostWatch struct {
	dir      string // holds "secret" and nothing else
	secret   string
	tag      string // a cgroup of this name must not appear
	burst    string // kernel.printk_ratelimit_burst
	agents   map[string]string
	conns    atomic.Int32
	listener net.Listener
}

func watchHost(t *testing.T, dir string, owner [2]int) *hostWatch {
	t.Helper()
	h := &hostWatch{dir: dir, secret: fmt.Sprintf("secret-%d", os.Getpid()), tag: fmt.Sprintf("ibuild-escape-%d", os.Getpid()), agents: map[string]string{}}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte(h.secret), 0o600); err != nil {
		t.Fatal(err)
	}
	if owner[0] >= 0 {
		for _, p := range []string{dir, filepath.Join(dir, "secret")} {
			if err := os.Chown(p, owner[0], owner[1]); err != nil {
				t.Fatal(err)
			}
		}
	}
	b, err := os.ReadFile("/proc/sys/kernel/printk_ratelimit_burst")
	if err != nil {
		t.Fatal(err)
	}
	h.burst = string(b)
	agents, _ := filepath.Glob("/sys/fs/cgroup/*/release_agent")
	for _, a := range agents {
		b, _ := os.ReadFile(a)
		h.agents[a] = string(b)
	}
	h.listener, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.listener.Close() })
	go func() {
		for {
			c, err := h.listener.Accept()
			if err != nil {
				return
			}
			h.conns.Add(1)
			c.Close()
		}
	}()
	return h
}

// buildArgs pass the probes what they aim at.
func (h *hostWatch) buildArgs(t *testing.T) []string {
	var st unix.Stat_t
	if err := unix.Stat("/", &st); err != nil {
		t.Fatal(err)
	}
	return []string{
		"--build-arg", "HOSTDIR=" + h.dir,
		"--build-arg", fmt.Sprintf("HOSTDEV=%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev)),
		"--build-arg", "HOSTPORT=" + strings.TrimPrefix(h.listener.Addr().String(), "127.0.0.1:"),
		"--build-arg", "PROBETAG=" + h.tag,
	}
}

// check fails the test if the host changed or a probe did not report.
func (h *hostWatch) check(t *testing.T, out string, probes int) {
	t.Helper()
	if strings.Contains(out, "ESCAPED") {
		t.Errorf("a probe escaped:\n%s", out)
	}
	if n := strings.Count(out, "| CONTAINED"); n != probes {
		t.Errorf("%d probes reported CONTAINED, want %d:\n%s", n, probes, out)
	}
	ents, err := os.ReadDir(h.dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "secret" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("the host directory %s holds %v, want only secret", h.dir, names)
	}
	if b, _ := os.ReadFile(filepath.Join(h.dir, "secret")); string(b) != h.secret {
		t.Errorf("the host's secret changed: %q", b)
	}
	if strings.Contains(out, h.secret) {
		t.Errorf("the host's secret reached the build output")
	}
	if b, _ := os.ReadFile("/proc/sys/kernel/printk_ratelimit_burst"); string(b) != h.burst {
		t.Errorf("kernel.printk_ratelimit_burst changed from %q to %q", h.burst, b)
		os.WriteFile("/proc/sys/kernel/printk_ratelimit_burst", []byte(h.burst), 0)
	}
	for a, v := range h.agents {
		if b, _ := os.ReadFile(a); string(b) != v {
			t.Errorf("%s changed from %q to %q", a, v, b)
			os.WriteFile(a, []byte(v), 0)
		}
	}
	if found, _ := exec.Command("find", "/sys/fs/cgroup", "-maxdepth", "4", "-depth", "-name", h.tag).Output(); len(found) > 0 {
		t.Errorf("a probe made cgroups on the host: %s", found)
		for _, d := range strings.Fields(string(found)) { // deepest first
			os.Remove(d)
		}
	}
	if n := h.conns.Load(); n != 0 {
		t.Errorf("a probe under --network=none reached the host's 127.0.0.1 %d times", n)
	}
}

// escapeContext is a busybox context with the probes and a Dockerfile
// running each (or, with onbuild, a base image's ONBUILD triggers
// running them and a Dockerfile that is only FROM that base).
func escapeContext(t *testing.T, onbuild bool) string {
	t.Helper()
	var steps strings.Builder
	steps.WriteString("COPY probes/ /probes/\nARG HOSTDIR HOSTDEV HOSTPORT PROBETAG\n")
	steps.WriteString("ENV HOSTDIR=$HOSTDIR HOSTDEV=$HOSTDEV HOSTPORT=$HOSTPORT PROBETAG=$PROBETAG\n")
	for _, p := range escapeProbes {
		if onbuild {
			steps.WriteString("ONBUILD ")
		}
		steps.WriteString(escapeRun(p) + "\n")
	}
	dir := busyboxContext(t, steps.String())
	buildProbes(t, dir)
	return dir
}

// TestEscapeSuite runs every probe in RUN steps, as root and as an
// unprivileged user with a subordinate id range, under the default
// isolation, --isolation chroot and the vfs storage driver, and through a
// base image's ONBUILD triggers; nothing on the host may change.
func TestEscapeSuite(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end builds")
	}
	requireRoot(t)
	modes := []struct {
		name   string
		global []string // flags before the command name
		flags  []string
	}{
		{"auto", nil, nil},
		{"chroot", nil, []string{"--isolation", "chroot"}},
		{"vfs", []string{"--storage-driver", "vfs"}, nil},
		{"onbuild", nil, nil},
	}
	t.Run("root", func(t *testing.T) {
		for _, tc := range modes {
			t.Run(tc.name, func(t *testing.T) {
				onbuild := tc.name == "onbuild"
				ctxDir := escapeContext(t, onbuild)
				root := t.TempDir()
				h := watchHost(t, filepath.Join(t.TempDir(), "host"), [2]int{-1, -1})
				args := tc.global
				build := append(append([]string{"build", "--no-cache", "--progress", "plain"}, tc.flags...), h.buildArgs(t)...)
				if onbuild {
					if _, stderr, code := ibuild(t, root, "", append(args, append(build, "-t", "escape-base", ctxDir)...)...); code != 0 {
						t.Fatalf("base image: exit %d\n%s", code, stderr)
					}
					ctxDir = writeContext(t, map[string]string{"Dockerfile": "FROM escape-base\n"})
				}
				_, stderr, code := ibuild(t, root, "", append(args, append(build, ctxDir)...)...)
				if code != 0 {
					t.Errorf("build: exit %d", code)
				}
				h.check(t, stderr, len(escapeProbes))
			})
		}
	})
	t.Run("unprivileged", func(t *testing.T) {
		uid, gid := unprivilegedUser(t, usernsTestUser, true)
		for _, tc := range modes {
			t.Run(tc.name, func(t *testing.T) {
				onbuild := tc.name == "onbuild"
				ctxDir := escapeContext(t, onbuild)
				// The user's own files are what a rootless escape would
				// reach: the watched directory is in its home.
				base, err := os.MkdirTemp("", "ibuild-escape-")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { os.RemoveAll(base) })
				home := filepath.Join(base, "home")
				if err := os.Chmod(base, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Mkdir(home, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Chown(home, uid, gid); err != nil {
					t.Fatal(err)
				}
				h := watchHost(t, filepath.Join(home, ".ssh"), [2]int{uid, gid})
				flags := append(append([]string{"--no-cache"}, tc.flags...), h.buildArgs(t)...)
				if onbuild {
					_, out, err := buildAsUserIn(t, uid, gid, home, ctxDir, tc.global, append(flags, "-t", "escape-base")...)
					if err != nil {
						t.Fatalf("base image: %v\n%s", err, out)
					}
					ctxDir = writeContext(t, map[string]string{"Dockerfile": "FROM escape-base\n"})
				}
				_, out, err := buildAsUserIn(t, uid, gid, home, ctxDir, tc.global, flags...)
				if err != nil {
					t.Errorf("build: %v", err)
				}
				h.check(t, out, len(escapeProbes))
			})
		}
	})
}

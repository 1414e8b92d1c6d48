package registry_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// TestPodmanPullsPushedImage pushes a busybox image built here to a local
// docker-registry, and podman (crun runtime) pulls it from there and runs
// it. Podman gets a private store in a temporary directory, no network and
// no cgroups, as in cmd/ibuild's TestPodmanRunsBuiltImage.
func TestPodmanPullsPushedImage(t *testing.T) {
	if os.Geteuid() != 0 {
		layertest.SkipOrFail(t, "RUN and podman need root")
	}
	layertest.RequireTool(t, "podman")
	layertest.RequireTool(t, "crun")
	bb := layertest.RequireTool(t, "/bin/busybox")
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	reg := registrytest.Start(t)
	ctx := context.Background()
	st := newStore(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	df := "FROM scratch\nCOPY busybox /bin/busybox\n" +
		`RUN ["/bin/busybox", "--install", "-s", "/bin"]` + "\n" +
		`CMD ["echo", "pulled-by-podman"]` + "\n"
	if _, err := builder.Build(ctx, builder.Options{Store: st, ContextDir: dir, Tags: []string{"podman:1"}, DockerfileContent: []byte(df)}); err != nil {
		t.Fatal(err)
	}
	ref := reg.Host + "/ibuild/podman:1"
	if _, err := registry.Push(ctx, st, "podman:1", ref, registry.PushOptions{}); err != nil {
		t.Fatal(err)
	}

	// Podman refuses a --runroot longer than 50 characters, which
	// t.TempDir() names can exceed.
	state, err := os.MkdirTemp("", "ibuild-podman-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	global := []string{
		"--root", filepath.Join(state, "root"), "--runroot", filepath.Join(state, "runroot"),
		"--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
	}
	podman := func(args ...string) string {
		t.Helper()
		args = append(append([]string{}, global...), args...)
		cmd := podmanCmd(t, args)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
			}
		case <-time.After(2 * time.Minute):
			cmd.Process.Kill()
			<-done
			t.Fatalf("podman %s did not finish within 2 minutes\n%s", strings.Join(args, " "), stderr.String())
		}
		return stdout.String()
	}
	podman("pull", "--tls-verify=false", ref)
	got := podman("run", "--rm", "--runtime", "crun", "--network", "none", "--cgroups", "disabled",
		// Podman raises these limits to values the test environment may
		// not allow (EPERM from setrlimit).
		"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
		ref)
	if strings.TrimSpace(got) != "pulled-by-podman" {
		t.Fatalf("podman run printed %q, want %q", got, "pulled-by-podman")
	}
}

// podmanCmd is `podman args...`, run in a private mount namespace that
// hides /sys/fs/cgroup/unified when crun would refuse the host's hybrid
// cgroups (a copy of cmd/ibuild's podmanCommand).
func podmanCmd(t *testing.T, args []string) *exec.Cmd {
	t.Helper()
	ctrls, err := os.ReadFile("/sys/fs/cgroup/unified/cgroup.controllers")
	if err != nil || len(bytes.TrimSpace(ctrls)) == 0 {
		return exec.Command("podman", args...)
	}
	layertest.RequireTool(t, "unshare")
	script := `mount --make-rprivate / && mount -t tmpfs -o ro,size=4k ibuild-test /sys/fs/cgroup/unified && exec podman "$@"`
	return exec.Command("unshare", append([]string{"--mount", "sh", "-c", script, "podman"}, args...)...)
}

package registrytest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibuild/ibuild/layers/layertest"
)

// Podman returns a runner of podman commands sharing one private store (so
// the machine's podman state is never touched), with the settings this
// kind of host needs; each call returns podman's standard output and fails
// the test when podman fails or runs for more than two minutes. Under CI a
// missing podman or crun fails the test.
//
// Podman refuses a --runroot longer than 50 characters, hence a short temp
// directory. On hosts with hybrid cgroups whose cgroup2 tree holds
// controllers, crun refuses every container; podman then runs in a private
// mount namespace where /sys/fs/cgroup/unified is covered by an empty
// tmpfs, so crun sees plain cgroup v1.
func Podman(t *testing.T) func(args ...string) string {
	t.Helper()
	layertest.RequireTool(t, "podman")
	layertest.RequireTool(t, "crun")
	state, err := os.MkdirTemp("", "ibuild-podman-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	return func(args ...string) string {
		t.Helper()
		return runPodman(t, state, args)
	}
}

func runPodman(t *testing.T, state string, args []string) string {
	t.Helper()
	all := append([]string{
		"--root", filepath.Join(state, "root"), "--runroot", filepath.Join(state, "runroot"),
		"--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
	}, args...)
	cmd := exec.Command("podman", all...)
	if ctrls, err := os.ReadFile("/sys/fs/cgroup/unified/cgroup.controllers"); err == nil && len(bytes.TrimSpace(ctrls)) > 0 {
		layertest.RequireTool(t, "unshare")
		script := `mount --make-rprivate / && mount -t tmpfs -o ro,size=4k ibuild-test /sys/fs/cgroup/unified && exec podman "$@"`
		cmd = exec.Command("unshare", append([]string{"--mount", "sh", "-c", script, "podman"}, all...)...)
	}
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

// PodmanRun is `podman run` of image with the flags a container needs on
// this kind of host: no network, no cgroups, and limits setrlimit accepts
// here (podman's defaults fail with EPERM).
func PodmanRun(image string) []string {
	return []string{"run", "--rm", "--runtime", "crun", "--network", "none", "--cgroups", "disabled",
		"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", image}
}

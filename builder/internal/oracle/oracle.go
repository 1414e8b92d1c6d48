// Package oracle runs Docker's build engine, BuildKit (buildkitd with the
// OCI worker and runc, built from its Go module at a pinned version), as a
// test oracle: the docker-exact suite compares ibuild's images with its,
// and the benchmarks time it. It is used by tests only; nothing in ibuild's
// command or library imports it.
package oracle

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/layers/layertest"
)

// The oracle: BuildKit at this version, built from its module.
const (
	Module  = "github.com/moby/buildkit"
	Version = "v0.34.2"
)

// CacheDir is where the oracle's binaries and downloaded bases are kept
// between runs: $IBUILD_COMPAT_CACHE, else /var/cache/ibuild-compat for
// root, else $XDG_CACHE_HOME (or ~/.cache)/ibuild-compat.
func CacheDir(t testing.TB) string {
	t.Helper()
	d := os.Getenv("IBUILD_COMPAT_CACHE")
	if d == "" && os.Geteuid() == 0 {
		d = "/var/cache/ibuild-compat"
	}
	if d == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			t.Fatalf("no cache directory for the BuildKit oracle (set IBUILD_COMPAT_CACHE): %v", err)
		}
		d = filepath.Join(base, "ibuild-compat")
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// GoTool is the go command of the toolchain running the tests.
func GoTool(t testing.TB) string {
	t.Helper()
	g := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(g); err != nil {
		return layertest.RequireTool(t, "go")
	}
	return g
}

// ModuleDir downloads mod@version through the module proxy (the module
// cache makes a second call free) and returns its read-only directory.
func ModuleDir(t testing.TB, mod, version string) string {
	t.Helper()
	cmd := exec.Command(GoTool(t), "mod", "download", "-json", mod+"@"+version)
	cmd.Dir = os.TempDir() // outside the ibuild module, so its go.mod is not consulted
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		layertest.SkipOrFail(t, "go mod download %s@%s: %v\n%s%s", mod, version, err, out, stderr.Bytes())
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(out, &info); err != nil || info.Dir == "" {
		t.Fatalf("go mod download %s@%s: %v %s\n%s", mod, version, err, info.Error, out)
	}
	return info.Dir
}

// lockFile takes an exclusive lock on path, so that concurrent test
// processes build the oracle once.
func lockFile(t testing.TB, path string) func() {
	t.Helper()
	unlock, err := layers.LockFile(context.Background(), path, true)
	if err != nil {
		t.Fatal(err)
	}
	return unlock
}

// Binaries returns buildkitd and buildctl at Version,
// building them into the cache on first use: `go install …@version` is
// refused (BuildKit's go.mod has exclude directives), so the module
// directory is copied to a writable place and built there with
// -mod=mod. Several minutes cold on 2 cores; the time is logged.
func Binaries(t testing.TB) (buildkitd, buildctl string) {
	t.Helper()
	cache := CacheDir(t)
	bin := filepath.Join(cache, "buildkit-"+Version, "bin")
	buildkitd, buildctl = filepath.Join(bin, "buildkitd"), filepath.Join(bin, "buildctl")
	unlock := lockFile(t, filepath.Join(cache, "buildkit.lock"))
	defer unlock()
	if versionOK(buildkitd) && versionOK(buildctl) {
		return buildkitd, buildctl
	}
	start := time.Now()
	src := ModuleDir(t, Module, Version)
	work := filepath.Join(cache, "buildkit-"+Version, "src")
	os.RemoveAll(work)
	if err := os.MkdirAll(filepath.Dir(work), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", src, work).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v\n%s", src, err, out)
	}
	if out, err := exec.Command("chmod", "-R", "u+w", work).CombinedOutput(); err != nil {
		t.Fatalf("chmod %s: %v\n%s", work, err, out)
	}
	tmpBin := bin + ".tmp"
	os.RemoveAll(tmpBin)
	cmd := exec.Command(GoTool(t), "build", "-o", tmpBin+"/",
		"-ldflags", "-X "+Module+"/version.Version="+Version,
		"./cmd/buildkitd", "./cmd/buildctl")
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod -buildvcs=false", "CGO_ENABLED=0", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build BuildKit %s in %s: %v\n%s", Version, work, err, out)
	}
	os.RemoveAll(bin)
	if err := os.Rename(tmpBin, bin); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(work)
	t.Logf("compat: built BuildKit %s (buildkitd, buildctl) in %s into %s", Version, time.Since(start).Round(time.Second), bin)
	return buildkitd, buildctl
}

func versionOK(bin string) bool {
	out, err := exec.Command(bin, "--version").Output()
	return err == nil && strings.Contains(string(out), " "+Version)
}

// Daemon is a running buildkitd.
type Daemon struct {
	// Buildctl is the buildctl binary; Addr the daemon's address for
	// its --addr; Log buildkitd's log file.
	Buildctl string
	Addr     string
	Log      string
}

// Start runs buildkitd as root with the OCI worker (runc), the
// overlayfs snapshotter and host networking, its state in a temporary
// directory, the test registry reg reachable over plain HTTP, and Docker
// Hub and "localhost" names served from reg (registry mirrors): base
// images of the corpora resolve to the images the suite pushed there.
func Start(t testing.TB, reg string) *Daemon {
	t.Helper()
	if os.Geteuid() != 0 {
		layertest.SkipOrFail(t, "the BuildKit oracle runs as root (OCI worker with runc)")
	}
	layertest.RequireTool(t, "runc")
	buildkitd, buildctl := Binaries(t)
	dir, err := os.MkdirTemp("", "ibuild-bk-")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "buildkitd.sock")
	cfg := fmt.Sprintf(`root = %q
[grpc]
  address = ["unix://%s"]
[worker.oci]
  enabled = true
  binary = "runc"
  snapshotter = "overlayfs"
  networkMode = "host"
  gc = false
[worker.containerd]
  enabled = false
[registry.%q]
  http = true
  insecure = true
[registry."docker.io"]
  mirrors = [%q]
[registry."localhost"]
  mirrors = [%q]
`, filepath.Join(dir, "root"), sock, reg, reg, reg)
	cfgPath := filepath.Join(dir, "buildkitd.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "buildkitd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(buildkitd, "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		exec.Command("umount", "-R", filepath.Join(dir, "root")).Run()
		os.RemoveAll(dir)
	})
	o := &Daemon{Buildctl: buildctl, Addr: "unix://" + sock, Log: logPath}
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := exec.Command(buildctl, "--addr", o.Addr, "debug", "workers").Run()
		if err == nil {
			return o
		}
		select {
		case <-done:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("buildkitd exited:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("buildkitd did not answer within 60s: %v\n%s", err, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

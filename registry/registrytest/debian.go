package registrytest

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/layers/layertest"
)

// DebianCacheDir is where DebianRootTarball keeps its tarball between
// runs; IBUILD_TEST_CACHE overrides it.
const DebianCacheDir = "/var/cache/ibuild-test"

// DebianRootTarball returns a gzipped tar of a minimal Debian 12 root file
// system for the host's architecture (debootstrap --variant=minbase
// bookworm, from the mirror apt uses). It is made once per machine (about
// four minutes) and cached in DebianCacheDir; concurrent callers wait for
// the one making it. Needs root and debootstrap; without them it skips
// the test (fails it under CI).
func DebianRootTarball(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("IBUILD_TEST_CACHE")
	if dir == "" {
		dir = DebianCacheDir
	}
	out := filepath.Join(dir, "debian-bookworm-minbase-"+runtime.GOARCH+".tar.gz")
	if _, err := os.Stat(out); err == nil {
		return out
	}
	if os.Geteuid() != 0 {
		layertest.SkipOrFail(t, "making the Debian test image needs root (debootstrap); or put %s in place", out)
	}
	debootstrap := layertest.RequireTool(t, "debootstrap")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	unlock, err := layers.LockFile(context.Background(), out+".lock", true)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if _, err := os.Stat(out); err == nil {
		return out // made by another test process while this one waited
	}
	work, err := os.MkdirTemp(dir, "debootstrap-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")
	mirror := DebianMirror()
	t.Logf("debootstrap --variant=minbase bookworm from %s (once per machine, cached in %s)", mirror, dir)
	start := time.Now()
	cmd := exec.Command(debootstrap, "--variant=minbase", "bookworm", root, mirror)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("debootstrap: %v\n%s", err, tail(b, 4000))
	}
	// apt in a RUN step must reach the same mirror.
	if err := os.WriteFile(filepath.Join(root, "etc/apt/sources.list"), []byte("deb "+mirror+" bookworm main\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"var/cache/apt/archives", "var/lib/apt/lists"} {
		ents, _ := os.ReadDir(filepath.Join(root, p))
		for _, e := range ents {
			if e.Type().IsRegular() {
				os.Remove(filepath.Join(root, p, e.Name()))
			}
		}
	}
	tmp := out + ".tmp"
	if b, err := exec.Command("tar", "-C", root, "--numeric-owner", "--xattrs", "-czf", tmp, ".").CombinedOutput(); err != nil {
		os.Remove(tmp)
		t.Fatalf("tar the Debian root: %v\n%s", err, b)
	}
	if err := os.Rename(tmp, out); err != nil {
		t.Fatal(err)
	}
	t.Logf("Debian root tarball made in %s", time.Since(start).Round(time.Second))
	return out
}

// DebianMirror is the Debian mirror apt on this machine uses (the first
// URIs: or deb line of its sources), http://deb.debian.org/debian when
// none is found.
func DebianMirror() string {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	files = append([]string{"/etc/apt/sources.list"}, files...)
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			switch {
			case len(fields) >= 2 && fields[0] == "URIs:" && !strings.Contains(fields[1], "security"):
				fh.Close()
				return fields[1]
			case len(fields) >= 3 && fields[0] == "deb" && !strings.HasPrefix(fields[1], "[") && !strings.Contains(fields[1], "security"):
				fh.Close()
				return fields[1]
			}
		}
		fh.Close()
	}
	return "http://deb.debian.org/debian"
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// DebianImage is a one-layer OCI image of DebianRootTarball for the host's
// platform, with PATH set and CMD ["bash"].
func DebianImage(t testing.TB) v1.Image {
	t.Helper()
	layer, err := tarball.LayerFromFile(DebianRootTarball(t), tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	mod := time.Unix(0, 0)
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		OS: "linux", Architecture: runtime.GOARCH, Created: v1.Time{Time: mod},
		Config: v1.Config{Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, Cmd: []string{"bash"}},
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{Created: v1.Time{Time: mod}, CreatedBy: "debootstrap --variant=minbase bookworm"}})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// PushDebian pushes DebianImage to ref (on a plain-HTTP registry) and
// returns its manifest digest.
func PushDebian(t testing.TB, ref string) v1.Hash {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img := DebianImage(t)
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("push the Debian image to %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ibuild/ibuild/layers/layertest"
	"go.podman.io/storage/pkg/reexec"
)

// ibuildBin is the binary the end-to-end tests run, built once in TestMain.
var ibuildBin string

func TestMain(m *testing.M) {
	if reexec.Init() {
		return
	}
	dir, err := os.MkdirTemp("", "ibuild-e2e-")
	if err != nil {
		panic(err)
	}
	ibuildBin = filepath.Join(dir, "ibuild")
	cmd := exec.Command("go", "build", "-tags", "exclude_graphdriver_btrfs", "-o", ibuildBin, ".")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		panic("build ibuild: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// endToEnd skips a slow end-to-end test (RUN steps in namespaces, killed
// builds, other container tools) under go test -short, which keeps the
// quick command-line tests.
func endToEnd(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("slow end-to-end test: skipped with -short")
	}
}

// ibuild runs the binary with a store root and returns stdout, stderr and
// the exit code.
func ibuild(t *testing.T, root, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(ibuildBin, append([]string{"--root", root}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=")
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func mustIbuild(t *testing.T, root string, args ...string) string {
	t.Helper()
	out, errOut, code := ibuild(t, root, "", args...)
	if code != 0 {
		t.Fatalf("ibuild %s: exit %d\n%s", strings.Join(args, " "), code, errOut)
	}
	return out
}

func TestDemoBuildAndLocalCommands(t *testing.T) {
	root := t.TempDir()
	iid := filepath.Join(t.TempDir(), "iid")
	out := mustIbuild(t, root, "build", "--progress", "plain", "-t", "demo:1", "-t", "reg.example:5000/team/demo:latest", "--iidfile", iid, "../../testdata/demo")
	id, err := os.ReadFile(iid)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(id), "sha256:") || strings.TrimSpace(out) != string(id) {
		t.Fatalf("iidfile %q, stdout %q", id, out)
	}

	var images []struct {
		Name string `json:"name"`
		ID   string `json:"id"`
	}
	if err := json.Unmarshal([]byte(mustIbuild(t, root, "images", "--format", "json")), &images); err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, im := range images {
		names[im.Name] = true
		if "sha256:"+im.ID != string(id) {
			t.Errorf("image %s has ID %s, want %s", im.Name, im.ID, id)
		}
	}
	if !names["localhost/demo:1"] || !names["reg.example:5000/team/demo:latest"] {
		t.Fatalf("images lists %v", names)
	}

	var insp struct {
		Config struct {
			Config struct {
				Env        []string
				Entrypoint []string
				Cmd        []string
				User       string
				WorkingDir string
				Labels     map[string]string
			} `json:"config"`
		} `json:"config"`
	}
	if err := json.Unmarshal([]byte(mustIbuild(t, root, "inspect", "demo:1")), &insp); err != nil {
		t.Fatal(err)
	}
	c := insp.Config.Config
	if c.WorkingDir != "/srv/www" || c.User != "1000:1000" || c.Labels["org.opencontainers.image.version"] != "1.0" {
		t.Fatalf("inspect config: %+v", c)
	}
	for _, e := range c.Env {
		if strings.HasPrefix(e, "VERSION=") {
			t.Fatalf("ARG value persisted in the config: %v", c.Env)
		}
	}

	mustIbuild(t, root, "tag", "demo:1", "demo:copy")
	mustIbuild(t, root, "rmi", "demo:1")
	if _, _, code := ibuild(t, root, "", "inspect", "demo:1"); code == 0 {
		t.Fatal("demo:1 still there after rmi")
	}
	mustIbuild(t, root, "inspect", "demo:copy")
}

func TestBuildErrorsNameFileAndLine(t *testing.T) {
	root := t.TempDir()
	dir := t.TempDir()
	df := "FROM scratch\nLABEL a=b\nCOPY missing.txt /x\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := ibuild(t, root, "", "build", "--progress", "plain", "-t", "broken:1", dir)
	if code == 0 {
		t.Fatal("build of a missing file succeeded")
	}
	want := filepath.Join(dir, "Dockerfile") + ":3: COPY missing.txt /x: file not found in build context"
	if !strings.Contains(errOut, want) {
		t.Fatalf("stderr lacks %q:\n%s", want, errOut)
	}
	if strings.Count(errOut, "ibuild: ") != 1 {
		t.Errorf("the error should be printed once:\n%s", errOut)
	}
	if _, _, code := ibuild(t, root, "", "inspect", "broken:1"); code == 0 {
		t.Fatal("failed build left broken:1 tagged")
	}
	// -f - reads the Dockerfile from stdin.
	_, errOut, code = ibuild(t, root, "FROM scratch\nNOPE\n", "build", "-f", "-", dir)
	if code == 0 || !strings.Contains(errOut, "Dockerfile:2: NOPE: unknown instruction: NOPE") {
		t.Fatalf("stdin Dockerfile error: exit %d\n%s", code, errOut)
	}
}

func TestOutputs(t *testing.T) {
	root := t.TempDir()
	outDir := t.TempDir()
	ociTar := filepath.Join(outDir, "image.oci.tar")
	ociDir := filepath.Join(outDir, "layout")
	dockerTar := filepath.Join(outDir, "image.docker.tar")
	rootfs := filepath.Join(outDir, "rootfs")
	mustIbuild(t, root, "build", "-q", "-t", "demo:out",
		"--output", "type=oci,dest="+ociTar,
		"--output", "type=oci,dest="+ociDir+",tar=false",
		"--output", "type=docker,dest="+dockerTar,
		"--output", "type=local,dest="+rootfs,
		"../../testdata/demo")
	for _, f := range []string{ociTar, dockerTar} {
		if fi, err := os.Stat(f); err != nil || fi.Size() == 0 {
			t.Fatalf("%s: %v", f, err)
		}
	}
	data, err := os.ReadFile(filepath.Join(rootfs, "srv/www/version.txt"))
	if err != nil || string(data) != "demo 1.0\n" {
		t.Fatalf("local output version.txt = %q, %v", data, err)
	}

	t.Run("skopeo", func(t *testing.T) {
		layertest.RequireTool(t, "skopeo")
		for _, ref := range []string{"oci:" + ociDir + ":localhost/demo:out", "oci-archive:" + ociTar + ":localhost/demo:out", "docker-archive:" + dockerTar, "oci:" + root + ":localhost/demo:out"} {
			out, err := exec.Command("skopeo", "inspect", "--config", ref).CombinedOutput()
			if err != nil {
				t.Fatalf("skopeo inspect %s: %v\n%s", ref, err, out)
			}
			if !bytes.Contains(out, []byte(`"WorkingDir": "/srv/www"`)) {
				t.Fatalf("skopeo inspect %s: unexpected config\n%s", ref, out)
			}
		}
	})
	t.Run("umoci", func(t *testing.T) {
		layertest.RequireTool(t, "umoci")
		bundle := filepath.Join(t.TempDir(), "bundle")
		out, err := exec.Command("umoci", "unpack", "--image", ociDir+":localhost/demo:out", bundle).CombinedOutput()
		if err != nil {
			t.Fatalf("umoci unpack: %v\n%s", err, out)
		}
		data, err := os.ReadFile(filepath.Join(bundle, "rootfs/etc/demo/app.conf"))
		if err != nil || !strings.Contains(string(data), "listen = 8080") {
			t.Fatalf("umoci rootfs app.conf = %q, %v", data, err)
		}
		fi, err := os.Stat(filepath.Join(bundle, "rootfs/etc/demo/app.conf"))
		if err != nil || fi.Mode().Perm() != 0o644 {
			t.Fatalf("app.conf mode %v, %v", fi.Mode(), err)
		}
	})
}

func TestReproducibleWithSourceDateEpoch(t *testing.T) {
	build := func(root string) string {
		cmd := exec.Command(ibuildBin, "--root", root, "build", "-q", "-t", "demo:r", "../../testdata/demo")
		cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("build: %v\n%s", err, out)
		}
		insp := mustIbuild(t, root, "inspect", "demo:r")
		var v struct {
			Digest string `json:"digest"`
			ID     string `json:"id"`
		}
		if err := json.Unmarshal([]byte(insp), &v); err != nil {
			t.Fatal(err)
		}
		return v.ID + " " + v.Digest
	}
	a := build(t.TempDir())
	// Touch every context file: with SOURCE_DATE_EPOCH the digests hold.
	ctx := t.TempDir()
	if out, err := exec.Command("cp", "-a", "../../testdata/demo/.", ctx).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	if out, err := exec.Command("sh", "-c", "find "+ctx+" -exec touch {} +").CombinedOutput(); err != nil {
		t.Fatalf("touch: %v %s", err, out)
	}
	cmd := exec.Command(ibuildBin, "--root", t.TempDir(), "build", "-q", "-t", "demo:r", ctx)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	b := build(t.TempDir())
	if a != b {
		t.Fatalf("two fresh roots gave different images: %s vs %s", a, b)
	}
	if id := strings.TrimSpace(string(out)); !strings.HasPrefix(a, id+" ") {
		t.Fatalf("touched context gave image %s, want %s", id, a)
	}
}

// TestUnprivilegedBuildMatchesRoot builds the demo as an unprivileged user
// (nobody) and as root, reproducibly, plainly and squashed, and expects
// the same image: files in layers are owned by their in-image ids, never
// by the host user.
func TestUnprivilegedBuildMatchesRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		layertest.SkipOrFail(t, "needs root to switch to an unprivileged user (CI runs the tests as root)")
	}
	layertest.RequireTool(t, "setpriv")
	for _, tc := range []struct {
		name  string
		flags []string
	}{{"plain", nil}, {"squash-all", []string{"--squash-all"}}} {
		t.Run(tc.name, func(t *testing.T) { buildAsNobodyAndRoot(t, tc.flags...) })
	}
}

// buildAsNobodyAndRoot builds the demo with flags as nobody and as root
// and fails unless the image IDs are equal.
func buildAsNobodyAndRoot(t *testing.T, flags ...string) {
	t.Helper()
	work, err := os.MkdirTemp("", "ibuild-rootless-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work)
	if out, err := exec.Command("cp", "-a", "../../testdata/demo", ibuildBin, work).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	if out, err := exec.Command("chown", "-R", "65534:65534", work).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	args := append([]string{"--reuid=65534", "--regid=65534", "--clear-groups",
		filepath.Join(work, "ibuild"), "--root", filepath.Join(work, "root"), "build", "-q", "-t", "demo:rootless",
		"--output", "type=oci,dest=" + filepath.Join(work, "rootless.tar")}, flags...)
	cmd := exec.Command("setpriv", append(args, filepath.Join(work, "demo"))...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + work, "SOURCE_DATE_EPOCH=1700000000"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("unprivileged build: %v\n%s", err, out)
	}
	rootless := strings.TrimSpace(string(out))
	cmd = exec.Command(ibuildBin, append(append([]string{"--root", t.TempDir(), "build", "-q"}, flags...), filepath.Join(work, "demo"))...)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")
	out, err = cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("root build: %v\n%s", err, out)
	}
	if root := strings.TrimSpace(string(out)); root != rootless {
		t.Fatalf("unprivileged build %v gave %s, root build %s", flags, rootless, root)
	}
}

func TestCompressionAndFormatFlags(t *testing.T) {
	tests := []struct {
		args          []string
		manifestType  string
		layerType     string
		layerMagicHex string
	}{
		{[]string{"--compression", "zstd"}, "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.layer.v1.tar+zstd", "28b52ffd"},
		{[]string{"--compression", "none"}, "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.layer.v1.tar", ""},
		{[]string{"--compression", "gzip", "--compression-level", "9"}, "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.layer.v1.tar+gzip", "1f8b"},
		{[]string{"--format", "docker"}, "application/vnd.docker.distribution.manifest.v2+json", "application/vnd.docker.image.rootfs.diff.tar.gzip", "1f8b"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			root := t.TempDir()
			mustIbuild(t, root, append(append([]string{"build", "-q", "-t", "c:1"}, tc.args...), "../../testdata/demo")...)
			var insp struct {
				Manifest struct {
					MediaType string `json:"mediaType"`
					Layers    []struct {
						MediaType string `json:"mediaType"`
						Digest    string `json:"digest"`
					} `json:"layers"`
				} `json:"manifest"`
			}
			if err := json.Unmarshal([]byte(mustIbuild(t, root, "inspect", "c:1")), &insp); err != nil {
				t.Fatal(err)
			}
			if insp.Manifest.MediaType != tc.manifestType {
				t.Fatalf("manifest type %s", insp.Manifest.MediaType)
			}
			for _, l := range insp.Manifest.Layers {
				if l.MediaType != tc.layerType {
					t.Fatalf("layer type %s, want %s", l.MediaType, tc.layerType)
				}
				blob, err := os.ReadFile(filepath.Join(root, "blobs", "sha256", strings.TrimPrefix(l.Digest, "sha256:")))
				if err != nil {
					t.Fatal(err)
				}
				if tc.layerMagicHex != "" && fmt.Sprintf("%x", blob[:len(tc.layerMagicHex)/2]) != tc.layerMagicHex {
					t.Fatalf("layer %s starts with %x", l.Digest, blob[:4])
				}
			}
		})
	}
	_, errOut, code := ibuild(t, t.TempDir(), "", "build", "--compression", "lzma", "../../testdata/demo")
	if code == 0 || !strings.Contains(errOut, `unknown compression "lzma"`) {
		t.Fatalf("bad --compression: exit %d, %s", code, errOut)
	}
}

package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// requireArm64Emulator skips the test (fails it under CI) unless an
// enabled binfmt_misc handler with the F flag runs arm64 binaries (.ci/run
// registers Debian's qemu-aarch64).
func requireArm64Emulator(t *testing.T) {
	t.Helper()
	ems, err := builder.Emulators()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ems {
		if e.Arch == "arm64" && e.Enabled && e.FixBinary {
			return
		}
	}
	layertest.SkipOrFail(t, "no enabled binfmt_misc handler with the F flag for arm64 (%+v): as root, apt-get install qemu-user-static binfmt-support && update-binfmts --enable qemu-aarch64", ems)
}

// TestMultiArchBuildPushAndRun builds `RUN uname -m` for linux/amd64 and
// linux/arm64 from a busybox-static index in a local registry, pushes the
// result under one tag, checks the pushed index with skopeo, and runs both
// images with podman, the arm64 one under qemu-user.
func TestMultiArchBuildPushAndRun(t *testing.T) {
	requireRoot(t)
	requireArm64Emulator(t)
	skopeo := layertest.RequireTool(t, "skopeo")
	reg := registrytest.Start(t)
	base := reg.Host + "/busybox:multi"
	registrytest.PushBusyboxIndex(t, base,
		v1.Platform{OS: "linux", Architecture: "amd64"},
		v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"})

	out := mustIbuild(t, t.TempDir(), "emulators", "--format", "json")
	var ems []builder.Emulator
	if err := json.Unmarshal([]byte(out), &ems); err != nil {
		t.Fatalf("emulators --format json: %v\n%s", err, out)
	}
	found := false
	for _, e := range ems {
		found = found || (e.Arch == "arm64" && e.Enabled && e.FixBinary && e.Interpreter != "")
	}
	if !found {
		t.Fatalf("emulators lists no arm64 handler:\n%s", out)
	}
	if out := mustIbuild(t, t.TempDir(), "emulators"); !strings.Contains(out, "arm64") || !strings.HasPrefix(out, "NAME") {
		t.Fatalf("emulators table:\n%s", out)
	}

	ctxDir := t.TempDir()
	df := "FROM " + base + "\nRUN uname -m > /arch\n" + `CMD ["cat", "/arch"]` + "\n"
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(df), 0o644); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	ref := reg.Host + "/multi/app:1"
	digestFile := filepath.Join(t.TempDir(), "digest")
	mustIbuild(t, root, "build", "-q", "--platform", "linux/amd64,linux/arm64", "--push", "--digestfile", digestFile, "-t", ref, ctxDir)
	digest, err := os.ReadFile(digestFile)
	if err != nil {
		t.Fatal(err)
	}

	type manifestList struct {
		MediaType string `json:"mediaType"`
		Manifests []struct {
			MediaType    string                     `json:"mediaType"`
			ArtifactType string                     `json:"artifactType"`
			Digest       string                     `json:"digest"`
			Platform     map[string]json.RawMessage `json:"platform"`
		} `json:"manifests"`
	}
	inspect := func(ref string) (manifestList, string) {
		t.Helper()
		raw, err := exec.Command(skopeo, "inspect", "--raw", "--tls-verify=false", "docker://"+ref).Output()
		if err != nil {
			t.Fatalf("skopeo inspect --raw %s: %v", ref, err)
		}
		var ml manifestList
		if err := json.Unmarshal(raw, &ml); err != nil {
			t.Fatalf("%v\n%s", err, raw)
		}
		return ml, string(raw)
	}
	wantPlatforms := func(ml manifestList, raw, manifestType string) {
		t.Helper()
		want := []string{`{"architecture":"amd64","os":"linux"}`, `{"architecture":"arm64","os":"linux"}`}
		if len(ml.Manifests) != len(want) {
			t.Fatalf("%d manifests:\n%s", len(ml.Manifests), raw)
		}
		for i, m := range ml.Manifests {
			p, _ := json.Marshal(m.Platform) // keys sorted: exactly these fields
			if string(p) != want[i] || m.MediaType != manifestType || m.ArtifactType != "" {
				t.Errorf("manifest %d: %s %s (artifactType %q), want %s %s and no artifactType", i, m.MediaType, p, m.ArtifactType, manifestType, want[i])
			}
		}
	}
	ml, raw := inspect(ref)
	if ml.MediaType != "application/vnd.oci.image.index.v1+json" {
		t.Fatalf("pushed media type %q:\n%s", ml.MediaType, raw)
	}
	wantPlatforms(ml, raw, "application/vnd.oci.image.manifest.v1+json")
	digestOut, err := exec.Command(skopeo, "inspect", "--format", "{{.Digest}}", "--tls-verify=false", "docker://"+ref).Output()
	if err != nil || strings.TrimSpace(string(digestOut)) != string(digest) {
		t.Fatalf("registry digest %q (%v), --digestfile %q", digestOut, err, digest)
	}

	// --format docker: a docker manifest list.
	dref := reg.Host + "/multi/app:docker"
	mustIbuild(t, root, "build", "-q", "--format", "docker", "--platform", "linux/amd64,linux/arm64", "--push", "-t", dref, ctxDir)
	ml, raw = inspect(dref)
	if ml.MediaType != "application/vnd.docker.distribution.manifest.list.v2+json" {
		t.Fatalf("--format docker pushed %q:\n%s", ml.MediaType, raw)
	}
	wantPlatforms(ml, raw, "application/vnd.docker.distribution.manifest.v2+json")

	podman := registrytest.Podman(t)
	for _, tc := range []struct{ arch, want string }{{"amd64", "x86_64"}, {"arm64", "aarch64"}} {
		podman("pull", "--tls-verify=false", "--arch", tc.arch, ref)
		args := registrytest.PodmanRun(ref)
		args = append([]string{args[0], "--arch", tc.arch, "--pull", "never"}, args[1:]...)
		if got := strings.TrimSpace(podman(args...)); got != tc.want {
			t.Errorf("podman run --arch %s printed %q, want %q", tc.arch, got, tc.want)
		}
	}
}

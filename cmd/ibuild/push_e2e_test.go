package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ibuild/ibuild/registry/registrytest"
)

func TestBuildPushAndPull(t *testing.T) {
	reg := registrytest.Start(t)
	ctxDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("FROM scratch\nCOPY hello /hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ctxDir, "hello"), []byte("pushed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	df := filepath.Join(t.TempDir(), "digest")
	ref := reg.Host + "/cli/app:1"

	_, errOut, code := ibuild(t, root, "", "build", "--push", "-t", "local:1", ctxDir)
	if code == 0 || !strings.Contains(errOut, "--push") {
		t.Fatalf("build --push without a registry name: exit %d\n%s", code, errOut)
	}

	mustIbuild(t, root, "build", "-q", "--push", "--digestfile", df, "-t", "local:1", "-t", ref, ctxDir)
	digest, err := os.ReadFile(df)
	if err != nil || !strings.HasPrefix(string(digest), "sha256:") {
		t.Fatalf("--digestfile: %q %v", digest, err)
	}

	fresh := t.TempDir()
	out := mustIbuild(t, fresh, "pull", "-q", ref)
	if strings.TrimSpace(out) != string(digest) {
		t.Fatalf("pull gave %q, push wrote %s", out, digest)
	}

	// push of the pulled image to another name, as docker.
	out = mustIbuild(t, fresh, "push", "-q", "--format", "docker", ref, reg.Host+"/cli/docker:1")
	d := strings.TrimSpace(out)
	if !strings.HasPrefix(d, "sha256:") || d == string(digest) {
		t.Fatalf("push --format docker printed %q (oci digest %s)", out, digest)
	}
	out = mustIbuild(t, t.TempDir(), "inspect", "docker://"+reg.Host+"/cli/docker:1")
	var v any
	if err := json.Unmarshal([]byte(out), &v); err != nil || !strings.Contains(out, "application/vnd.docker.distribution.manifest.v2+json") {
		t.Fatalf("inspect of the docker push (%v):\n%s", err, out)
	}

	_, errOut, code = ibuild(t, root, "", "push", "local:1")
	if code == 0 || !strings.Contains(errOut, "localhost/local:1") {
		t.Fatalf("push of a local name without DEST: exit %d\n%s", code, errOut)
	}
}

// TestRegistryTimeoutFlag pushes and pulls through a proxy that stops
// responding: --registry-timeout bounds how long each request may move no
// data, and after a few tries the command fails with a message naming the
// registry and the blob or manifest.
func TestRegistryTimeoutFlag(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out several timeouts")
	}
	reg := registrytest.Start(t)
	px := registrytest.NewProxy(t, reg.Host)
	ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY hello /hello\n", "hello": "stalled\n"})
	root := t.TempDir()
	mustIbuild(t, root, "build", "-q", "-t", "stall:1", ctxDir)

	px.StallEvery("PATCH /v2/cli/stall/blobs/uploads/", 1, 100)
	_, errOut, code := ibuild(t, root, "", "push", "--registry-timeout", "500ms", "stall:1", px.Host+"/cli/stall:1")
	if code == 0 || !strings.Contains(errOut, "registry "+px.Host+" stopped responding") || !strings.Contains(errOut, "blob sha256:") || !strings.Contains(errOut, "500ms") {
		t.Errorf("push to a stalled registry: exit %d, want an error naming the registry and the blob:\n%s", code, errOut)
	}
	if n := px.StallEvery("", 0, 0); n < 2 {
		t.Errorf("%d uploads stalled: the push was not retried", n)
	}

	mustIbuild(t, root, "push", "-q", "stall:1", reg.Host+"/cli/stall:1")
	px.StallEvery("GET /v2/cli/stall/manifests/", 1, 100)
	_, errOut, code = ibuild(t, t.TempDir(), "", "pull", "--registry-timeout", "500ms", px.Host+"/cli/stall:1")
	if code == 0 || !strings.Contains(errOut, "registry "+px.Host+" stopped responding") || !strings.Contains(errOut, "manifest cli/stall:1") {
		t.Errorf("pull from a stalled registry: exit %d, want an error naming the registry and the manifest:\n%s", code, errOut)
	}
	px.StallEvery("", 0, 0)
}

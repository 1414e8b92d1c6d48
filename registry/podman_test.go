package registry_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

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

	podman := registrytest.Podman(t)
	podman("pull", "--tls-verify=false", ref)
	got := podman(registrytest.PodmanRun(ref)...)
	if strings.TrimSpace(got) != "pulled-by-podman" {
		t.Fatalf("podman run printed %q, want %q", got, "pulled-by-podman")
	}
}

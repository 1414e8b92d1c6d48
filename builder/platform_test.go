package builder

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/registry"
)

func TestParsePlatform(t *testing.T) {
	tests := []struct{ in, want string }{
		{"linux/amd64", "linux/amd64"},
		{"linux/arm64", "linux/arm64"},
		{"linux/arm64/v8", "linux/arm64"},
		{"linux/aarch64", "linux/arm64"},
		{"linux/arm", "linux/arm/v7"},
		{"linux/x86_64", "linux/amd64"},
	}
	for _, tc := range tests {
		p, err := ParsePlatform(tc.in)
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if got := PlatformString(p); got != tc.want {
			t.Errorf("ParsePlatform(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if _, err := ParsePlatform("linux/not-an-arch/x/y"); err == nil {
		t.Error("want an error for a malformed platform")
	}
}

// writeContext writes a build context from name -> content.
func writeContext(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		mustMkdir(t, filepath.Dir(p))
		writeFile(t, p, content, 0o644)
	}
	return dir
}

func TestMultiPlatformIndex(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM scratch\nARG TARGETARCH\nCOPY app-${TARGETARCH} /app\nENV ARCH=$TARGETARCH\n",
		"app-amd64":  "amd64 binary\n",
		"app-arm64":  "arm64 binary\n",
	})
	plats, err := ParsePlatforms("linux/amd64,linux/arm64")
	if err != nil {
		t.Fatal(err)
	}
	res, err := Build(ctx, Options{Store: st, ContextDir: dir, Platforms: plats, Tags: []string{"multi:1"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Index == nil || res.Image != nil {
		t.Fatal("want an index result")
	}
	if err := validate.Index(res.Index); err != nil {
		t.Fatal(err)
	}
	desc, err := st.Lookup(ctx, "multi:1")
	if err != nil {
		t.Fatal(err)
	}
	if desc.MediaType != types.OCIImageIndex {
		t.Fatalf("stored media type %s", desc.MediaType)
	}
	im, err := res.Index.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 2 {
		t.Fatalf("%d manifests", len(im.Manifests))
	}
	for i, want := range []string{"amd64", "arm64"} {
		d := im.Manifests[i]
		if d.Platform == nil || d.Platform.Architecture != want || d.Platform.OS != "linux" {
			t.Fatalf("manifest %d platform %+v", i, d.Platform)
		}
		img, err := res.Index.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Architecture != want || !slices.Contains(cfg.Config.Env, "ARCH="+want) {
			t.Fatalf("image %d: arch %s env %v", i, cfg.Architecture, cfg.Config.Env)
		}
	}
}

func TestFromOCILayoutAndPlatformMismatch(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	base := writeContext(t, map[string]string{
		"Dockerfile": "FROM scratch\nCOPY hello /hello\nENV FROM_LAYOUT=1\n",
		"hello":      "hi\n",
	})
	res, err := Build(ctx, Options{Store: st, ContextDir: base})
	if err != nil {
		t.Fatal(err)
	}
	layoutDir := filepath.Join(t.TempDir(), "layout")
	if err := registry.WriteOCILayout(ctx, layoutDir, res.Image, nil, "base:1"); err != nil {
		t.Fatal(err)
	}
	// A fresh store: the base comes only from the layout.
	st2 := newStore(t)
	child := writeContext(t, map[string]string{
		"Dockerfile": "ARG LAYOUT\nFROM oci-layout://${LAYOUT}:base:1\nCOPY more /more\n",
		"more":       "more\n",
	})
	res2, err := Build(ctx, Options{Store: st2, ContextDir: child, BuildArgs: map[string]string{"LAYOUT": layoutDir}})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := res2.Image.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.RootFS.DiffIDs) != 2 || !slices.Contains(cfg.Config.Env, "FROM_LAYOUT=1") {
		t.Fatalf("child of layout image: %d layers, env %v", len(cfg.RootFS.DiffIDs), cfg.Config.Env)
	}
	stored, err := st2.Image(ctx, res2.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(stored); err != nil {
		t.Fatalf("the layout's layers were not copied into the store: %v", err)
	}

	// The same base for another platform is refused, naming both.
	arm, _ := ParsePlatform("linux/arm64")
	_, err = Build(ctx, Options{Store: st2, ContextDir: child, BuildArgs: map[string]string{"LAYOUT": layoutDir}, Platforms: []v1.Platform{arm}})
	if err == nil || !strings.Contains(err.Error(), "linux/amd64") || !strings.Contains(err.Error(), "linux/arm64") || !strings.Contains(err.Error(), "Dockerfile:2") {
		t.Fatalf("platform mismatch error: %v", err)
	}
}

func TestProgressEvents(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM scratch AS a\nCOPY f /f\nFROM scratch AS b\nCOPY f /g\nFROM scratch\nCOPY --from=a /f /f\nCOPY --from=b /g /g\n",
		"f":          "f\n",
	})
	var mu sync.Mutex
	var events []progress.Event
	sink := progress.Func(func(e progress.Event) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	})
	if _, err := Build(ctx, Options{Store: st, ContextDir: dir, StepOptions: StepOptions{Progress: sink}, Jobs: 2}); err != nil {
		t.Fatal(err)
	}
	done := map[string]int{}
	for _, e := range events {
		if e.Kind == progress.StepDone {
			done[e.Stage]++
			if e.Steps == 0 || e.Step < 1 || e.Step > e.Steps || e.Location == "" {
				t.Errorf("bad step event %+v", e)
			}
			if strings.HasPrefix(e.Instruction, "COPY") && e.LayerSize <= 0 {
				t.Errorf("COPY step without layer size: %+v", e)
			}
		}
		if _, err := json.Marshal(e); err != nil {
			t.Fatal(err)
		}
	}
	if done["a"] != 2 || done["b"] != 2 || done["stage-2"] != 3 {
		t.Fatalf("step-done events per stage: %v", done)
	}
}

func TestDockerfileFromStdinAndContainerfile(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	dir := writeContext(t, map[string]string{"Containerfile": "FROM scratch\nLABEL from=containerfile\n"})
	res, err := Build(ctx, Options{Store: st, ContextDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := res.Image.ConfigFile()
	if cfg.Config.Labels["from"] != "containerfile" {
		t.Fatalf("labels %v", cfg.Config.Labels)
	}
	res, err = Build(ctx, Options{Store: st, ContextDir: dir, Dockerfile: "-", DockerfileContent: []byte("FROM scratch\nLABEL from=stdin\n")})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ = res.Image.ConfigFile()
	if cfg.Config.Labels["from"] != "stdin" {
		t.Fatalf("labels %v", cfg.Config.Labels)
	}
	empty := t.TempDir()
	if _, err := Build(ctx, Options{Store: st, ContextDir: empty}); err == nil || !strings.Contains(err.Error(), "no Dockerfile or Containerfile") {
		t.Fatalf("missing Dockerfile: %v", err)
	}
	_ = os.Remove
}

func TestUnusedBuildArgsWarnedProxyArgsNot(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nARG USED\nLABEL used=$USED\n"})
	res, err := Build(ctx, Options{Store: st, ContextDir: dir, BuildArgs: map[string]string{
		"USED": "1", "UNUSED": "2", "HTTP_PROXY": "http://proxy:3128", "no_proxy": "localhost",
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Warnings) != 1 || res.Warnings[0] != "one or more build args were not consumed: UNUSED" {
		t.Fatalf("warnings %q", res.Warnings)
	}
	cfg, _ := res.Image.ConfigFile()
	raw, _ := json.Marshal(cfg)
	if strings.Contains(string(raw), "proxy:3128") || strings.Contains(string(raw), "UNUSED") {
		t.Fatalf("build args leaked into the config: %s", raw)
	}
}

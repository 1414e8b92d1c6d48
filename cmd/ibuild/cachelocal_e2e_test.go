package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// buildEvents runs `ibuild build --progress json` and returns its
// step-done events.
func buildEvents(t *testing.T, root string, args ...string) []map[string]any {
	t.Helper()
	_, errOut, code := ibuild(t, root, "", append([]string{"build", "--progress", "json"}, args...)...)
	if code != 0 {
		t.Fatalf("ibuild build %s: exit %d\n%s", strings.Join(args, " "), code, errOut)
	}
	var out []map[string]any
	for _, line := range strings.Split(errOut, "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) == nil && e["kind"] == "step-done" {
			out = append(out, e)
		}
	}
	return out
}

// TestBuildCacheCLI: plain progress marks hits CACHED, json progress
// carries the miss reason, --no-cache and prune --cache work.
func TestBuildCacheCLI(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM scratch\nCOPY a /a\nENV X=1\nCOPY b /b\nCMD [\"/x\"]\n",
		"a":          "a1",
		"b":          "b1",
	})
	first := mustIbuild(t, root, "build", "-q", "-t", "c:1", dir)
	_, plain, code := ibuild(t, root, "", "build", "--progress", "plain", "-t", "c:1", dir)
	if code != 0 {
		t.Fatal(plain)
	}
	if n := strings.Count(plain, "done (CACHED"); n != 4 {
		t.Errorf("plain progress shows %d CACHED steps, want 4:\n%s", n, plain)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(filepath.Join(dir, "a"), later, later); err != nil {
		t.Fatal(err)
	}
	if again := mustIbuild(t, root, "build", "-q", "-t", "c:1", dir); again != first {
		t.Errorf("touch changed the image: %s, then %s", first, again)
	}
	if err := os.WriteFile(filepath.Join(dir, "b"), []byte("b2"), 0o644); err != nil {
		t.Fatal(err)
	}
	evs := buildEvents(t, root, "-t", "c:1", dir)
	var got []string
	for _, e := range evs[1:] {
		if e["cached"] == true {
			got = append(got, "cached")
		} else {
			got = append(got, e["miss_reason"].(string))
		}
	}
	want := []string{"cached", "cached", "source changed: b", "an earlier step changed"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("steps: %q, want %q", got, want)
	}
	for _, e := range buildEvents(t, root, "--no-cache", "-t", "c:1", dir)[1:] {
		if e["cached"] == true || e["miss_reason"] != "--no-cache" {
			t.Errorf("--no-cache step: %v", e)
		}
	}
	out := mustIbuild(t, root, "prune", "--cache")
	if !strings.Contains(out, "build cache records") {
		t.Errorf("prune --cache said %q", out)
	}
	for _, e := range buildEvents(t, root, "-t", "c:1", dir)[1:] {
		if e["cached"] == true {
			t.Errorf("step cached after prune --cache: %v", e)
		}
	}
}

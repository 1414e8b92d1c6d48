package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ibuild/ibuild/registry/registrytest"
)

// TestBuildCacheFromTo runs the CLI as two CI runners sharing a registry
// cache: the first build warns that the cache does not exist yet and
// exports it; a fresh root takes every step from it and, with --push,
// pushes without storing (its layers were never downloaded).
func TestBuildCacheFromTo(t *testing.T) {
	reg := registrytest.Start(t)
	ctxDir := t.TempDir()
	files := map[string]string{
		"Dockerfile": "FROM scratch\nCOPY a /a\nENV X=1\nCOPY b /b\n",
		"a":          "a\n",
		"b":          strings.Repeat("b", 5000),
	}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(ctxDir, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cache := reg.Host + "/cache/cli:buildcache"
	epoch := "--source-date-epoch=1700000000"

	_, errOut, code := ibuild(t, t.TempDir(), "", "build", "--cache-to", "type=registry,ref="+cache+",dest=/tmp/x", ctxDir)
	if code == 0 || !strings.Contains(errOut, "--cache-to type=registry,ref="+cache+",dest=/tmp/x") || !strings.Contains(errOut, "type=local's") {
		t.Fatalf("bad --cache-to: exit %d\n%s", code, errOut)
	}

	// Runner 1: no cache yet.
	d1 := filepath.Join(t.TempDir(), "d1")
	_, errOut, code = ibuild(t, t.TempDir(), "", "build", epoch, "--progress", "plain",
		"--cache-from", "type=registry,ref="+cache, "--cache-to", "type=registry,ref="+cache+",mode=max",
		"--push", "--digestfile", d1, "-t", reg.Host+"/cli/app:1", ctxDir)
	if code != 0 || !strings.Contains(errOut, "does not exist yet") {
		t.Fatalf("first build: exit %d, want success with a warning\n%s", code, errOut)
	}

	// Runner 2: fresh root.
	root2 := t.TempDir()
	d2 := filepath.Join(t.TempDir(), "d2")
	_, errOut, code = ibuild(t, root2, "", "build", epoch, "--progress", "plain",
		"--cache-from", cache, "--push", "--digestfile", d2, "-t", reg.Host+"/cli/app:2", ctxDir)
	if code != 0 {
		t.Fatalf("second build: exit %d\n%s", code, errOut)
	}
	if n := strings.Count(errOut, "CACHED"); n != 3 {
		t.Fatalf("second build: %d CACHED steps, want 3\n%s", n, errOut)
	}
	if !strings.Contains(errOut, "was pushed but not stored locally: 2 layers came from the registry cache and were not downloaded") {
		t.Fatalf("second build: no not-stored warning\n%s", errOut)
	}
	b1, _ := os.ReadFile(d1)
	b2, _ := os.ReadFile(d2)
	if len(b1) == 0 || string(b1) != string(b2) {
		t.Fatalf("pushed digests %q and %q differ", b1, b2)
	}
	if out := mustIbuild(t, root2, "images"); strings.Contains(out, "cli/app") {
		t.Fatalf("the unstored result is listed:\n%s", out)
	}
	if out := mustIbuild(t, root2, "pull", "-q", reg.Host+"/cli/app:2"); strings.TrimSpace(out) != string(b2) {
		t.Fatalf("pull gave %q, want %s", out, b2)
	}
}

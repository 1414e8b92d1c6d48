// Package layertest holds checks the tests of several packages make on a
// store: that every blob is whole and named by its digest, and file
// digests. It is only for tests.
package layertest

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// FileDigest is the sha256 digest of the file at p.
func FileDigest(t testing.TB, p string) v1.Hash {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

// CheckBlobs fails the test unless every entry of root's blobs/sha256 is a
// regular file whose content hashes to its name: a store never shows a
// partial blob under a digest. It returns the blob names.
func CheckBlobs(t testing.TB, root string) []string {
	t.Helper()
	dir := filepath.Join(root, "blobs", "sha256")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
		if !e.Type().IsRegular() {
			t.Errorf("blobs/sha256/%s is not a regular file (%v)", e.Name(), e.Type())
			continue
		}
		if got := FileDigest(t, filepath.Join(dir, e.Name())); got.Hex != e.Name() {
			t.Errorf("blobs/sha256/%s holds content with digest %s", e.Name(), got)
		}
	}
	return names
}

// SkipOrFail skips the test, except under CI (CI=true), where a missing
// prerequisite (a tool, a privilege) is a failure: CI must run every test.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// RequireTool returns the path of the command name, or skips the test (fails
// it under CI) when it is not installed; `make test-deps` installs them all.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		SkipOrFail(t, "%s is required for this test (make test-deps installs it): %v", name, err)
	}
	return p
}

package sbom

import (
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/layers/layertest"
)

// debianRoot extracts the cached Debian test root (see
// registrytest.DebianRootTarball) once per benchmark; without it the
// benchmark is skipped.
func debianRoot(b *testing.B) string {
	b.Helper()
	dir := os.Getenv("IBUILD_TEST_CACHE")
	if dir == "" {
		dir = "/var/cache/ibuild-test"
	}
	tgz := filepath.Join(dir, "debian-bookworm-minbase-"+runtime.GOARCH+".tar.gz")
	if _, err := os.Stat(tgz); err != nil {
		layertest.SkipOrFail(b, "no Debian test root (%v): run the attestation end-to-end tests once to make it", err)
	}
	root := b.TempDir()
	if out, err := exec.Command("tar", "-C", root, "--no-same-owner", "-xzf", tgz).CombinedOutput(); err != nil {
		b.Fatalf("tar: %v\n%s", err, out)
	}
	return root
}

// BenchmarkScanDebian is what --sbom adds to a build of a Debian 12 image
// (88 packages, ~7,000 files): a scan of its snapshot, then the SPDX
// document. BenchmarkWalkDebian, the baseline, only lists the same tree.
func BenchmarkScanDebian(b *testing.B) {
	root := debianRoot(b)
	rfs := layers.NewRootFS([]string{root})
	b.ResetTimer()
	for b.Loop() {
		inv, err := Scan(context.Background(), rfs, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := inv.SPDX(DocOptions{Subject: Subject{Name: "debian"}}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWalkDebian walks and lstats the Debian root: the floor any
// file-system scan pays.
func BenchmarkWalkDebian(b *testing.B) {
	root := debianRoot(b)
	b.ResetTimer()
	for b.Loop() {
		n := 0
		if err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if _, err := d.Info(); err == nil {
				n++
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
}

package compat

import (
	"bytes"
	"compress/gzip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ibuild/ibuild/layers/layertest"
)

// ownSetups make the inputs of own fixtures that git cannot hold (archives
// made with the system's tools): the fixture is copied to a temporary
// directory first.
var ownSetups = map[string]func(t *testing.T, c *compatCase){
	"copy-parents-modes": func(t *testing.T, c *compatCase) {
		dir := filepath.Join(t.TempDir(), "ctx")
		if out, err := exec.Command("cp", "-a", c.ContextDir, dir).CombinedOutput(); err != nil {
			t.Fatalf("copy %s: %v\n%s", c.ContextDir, err, out)
		}
		for _, d := range []string{"foo1", "foo1/foo2"} {
			if err := os.Chmod(filepath.Join(dir, d), 0o700); err != nil {
				t.Fatal(err)
			}
		}
		c.ContextDir, c.Dockerfile = dir, filepath.Join(dir, "Dockerfile")
	},
	"add-archives": func(t *testing.T, c *compatCase) {
		dir := t.TempDir()
		src, ctx := filepath.Join(dir, "src"), filepath.Join(dir, "ctx")
		for _, tool := range []string{"tar", "gzip", "bzip2", "xz", "zstd"} {
			layertest.RequireTool(t, tool)
		}
		sh := func(dir, script string) {
			t.Helper()
			cmd := exec.Command("sh", "-ec", script)
			cmd.Dir = dir
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", script, err, out)
			}
		}
		if err := os.MkdirAll(filepath.Join(src, "pkg", "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(ctx, 0o755); err != nil {
			t.Fatal(err)
		}
		sh(src, `printf 'hello from an archive\n' > pkg/hello.txt; printf '#!/bin/sh\n' > pkg/sub/tool.sh; chmod 755 pkg/sub/tool.sh; ln -s hello.txt pkg/link`)
		tarc := "tar --sort=name --mtime=@1700000000 --owner=0 --group=0 --numeric-owner -cf - pkg"
		sh(src, tarc+" > ../ctx/plain.tar; "+tarc+" | gzip -n -9 > ../ctx/files.tar.gz; "+tarc+" | bzip2 -9 > ../ctx/files.tar.bz2; "+
			tarc+" | xz -6 > ../ctx/files.tar.xz; "+tarc+" | zstd -q -3 > ../ctx/files.tar.zst")
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.Write([]byte("just gzip, no tar inside\n"))
		zw.Close()
		if err := os.WriteFile(filepath.Join(ctx, "not-an-archive.gz"), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		df, err := os.ReadFile(c.Dockerfile)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), df, 0o644); err != nil {
			t.Fatal(err)
		}
		c.ContextDir, c.Dockerfile = dir, filepath.Join(dir, "Dockerfile")
	},
}

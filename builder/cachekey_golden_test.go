package builder

import (
	"archive/tar"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// TestCacheKeyGolden pins the build cache's keys: the same Dockerfile and
// context, built in a new store, must give byte for byte the keys (and
// the per-step key inputs, which the store's step histories keep as
// digests) of testdata/cachekey/*.golden. Cache keys are stored locally
// and in registry caches, so a change here silently invalidates every
// user's cache: a deliberate change of the key format bumps
// executorRevision or the key's version line and rewrites the golden
// files (go test -run TestCacheKeyGolden -update).
func TestCacheKeyGolden(t *testing.T) {
	dir := keyGoldenContext(t)
	df := "ARG BASE=scratch\n" +
		"FROM ${BASE} AS first\n" +
		"ARG V=1\n" +
		"ARG PORT=8080\n" +
		"COPY a/ /a/\n" +
		"COPY --chown=1:2 --chmod=0640 b/*.txt /b/\n" +
		"COPY --exclude=*.skip c /c\n" +
		"COPY nothing* /none/\n" +
		"ADD t.tar /t/\n" +
		"ENV E=$V\n" +
		"EXPOSE $PORT\n" +
		"WORKDIR /w\n" +
		"USER 1000\n" +
		"LABEL l=1\n" +
		`CMD ["x"]` + "\n" +
		"FROM scratch\n" +
		"COPY --from=first /a /fa\n" +
		"COPY links/ /links/\n"
	got := keyGoldenBuild(t, dir, df, nil)
	checkGolden(t, filepath.Join("testdata", "cachekey", "build.golden"), got)
}

// TestCacheKeyGoldenRun pins the keys of RUN steps: build args, mounts
// (a bound context directory, a cache mount) and the network flag. The
// step runs a tiny static x86-64 program that exits 0, so the base is
// the same on every machine.
func TestCacheKeyGoldenRun(t *testing.T) {
	if testing.Short() {
		t.Skip("RUN steps: skipped with -short")
	}
	if os.Geteuid() != 0 {
		layertest.SkipOrFail(t, "RUN needs root here (CI runs the tests as root)")
	}
	if runtime.GOARCH != "amd64" {
		layertest.SkipOrFail(t, "the test program is x86-64; this machine is %s", runtime.GOARCH)
	}
	dir := keyGoldenContext(t)
	if err := os.WriteFile(filepath.Join(dir, "true"), exitZeroELF(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "true"), 0o755); err != nil {
		t.Fatal(err)
	}
	df := "FROM scratch\n" +
		"COPY true /true\n" +
		"ARG V=1\n" +
		`RUN ["/true"]` + "\n" +
		`RUN --mount=type=bind,source=a,target=/a ["/true", "a"]` + "\n" +
		`RUN --mount=type=cache,target=/c,id=k --network=none ["/true", "c"]` + "\n"
	got := keyGoldenBuild(t, dir, df, nil)
	checkGolden(t, filepath.Join("testdata", "cachekey", "run.golden"), got)
}

// keyGoldenContext writes a context with every kind of entry a key reads:
// files of several modes, a symlink, hard links, an ignored file, a
// directory tree, a tar; with fixed mtimes (some before, some after the
// SOURCE_DATE_EPOCH used).
func keyGoldenContext(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := []struct {
		name, data string
		mode       os.FileMode
	}{
		{"a/x", "x", 0o644},
		{"a/exec", "#!/bin/sh\n", 0o755},
		{"a/sub/y", "y", 0o600},
		{"b/1.txt", "one", 0o644},
		{"b/2.txt", "two", 0o644},
		{"b/n.md", "not copied", 0o644},
		{"c/keep", "keep", 0o644},
		{"c/drop.skip", "drop", 0o644},
		{"c/d/e", "deep", 0o444},
		{"links/target", "target", 0o644},
		{"ign", "ignored", 0o644},
		{".dockerignore", "ign\n", 0o644},
	}
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		mustMkdir(t, filepath.Dir(p))
		writeFile(t, p, f.data, f.mode)
	}
	writeFile(t, filepath.Join(dir, "t.tar"), string(tarOf(t,
		&tar.Header{Name: "in/", Typeflag: tar.TypeDir, Mode: 0o755}, "",
		&tar.Header{Name: "in/f", Typeflag: tar.TypeReg, Mode: 0o644}, "in tar",
	)), 0o644)
	if err := os.Symlink("target", filepath.Join(dir, "links/sym")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../nowhere", filepath.Join(dir, "links/dangling")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "links/target"), filepath.Join(dir, "links/hard")); err != nil {
		t.Fatal(err)
	}
	old, later := time.Unix(1600000000, 0), time.Unix(1800000000, 0)
	var dirs []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return nil
		}
		if fi.IsDir() {
			dirs = append(dirs, p)
			return os.Chmod(p, 0o755)
		}
		ts := old
		if strings.HasPrefix(filepath.Base(p), "2") || strings.HasSuffix(p, "/y") {
			ts = later
		}
		return os.Chtimes(p, ts, ts)
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Chtimes(dirs[i], old, old); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// keyGoldenBuild builds df in dir in a new store for linux/amd64 with a
// fixed SOURCE_DATE_EPOCH, and renders the store's step histories (the
// digested inputs of each step's key) and its cache record and layer
// memo keys.
func keyGoldenBuild(t *testing.T, dir, df string, args map[string]string) string {
	t.Helper()
	st := newStore(t)
	opts := Options{Store: st, ContextDir: dir, DockerfileContent: []byte(df), StepOptions: StepOptions{SourceDateEpoch: &epoch},
		BuildArgs: args, Platforms: []v1.Platform{{OS: "linux", Architecture: "amd64"}}}
	if _, err := Build(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	hist, err := filepath.Glob(filepath.Join(st.Root(), "cache", "steps", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	var stages []string
	for _, p := range hist {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var h struct {
			Steps map[int]map[string]string `json:"steps"`
		}
		if err := json.Unmarshal(b, &h); err != nil {
			t.Fatal(err)
		}
		var s strings.Builder
		steps := make([]int, 0, len(h.Steps))
		for n := range h.Steps {
			steps = append(steps, n)
		}
		sort.Ints(steps)
		for _, n := range steps {
			names := make([]string, 0, len(h.Steps[n]))
			for k := range h.Steps[n] {
				names = append(names, k)
			}
			sort.Strings(names)
			for _, k := range names {
				fmt.Fprintf(&s, "step %d %s %s\n", n, k, h.Steps[n][k])
			}
		}
		stages = append(stages, s.String())
	}
	sort.Strings(stages)
	for _, s := range stages {
		sb.WriteString("stage history\n" + s)
	}
	for _, sub := range []string{"records", "layers"} {
		names, err := filepath.Glob(filepath.Join(st.Root(), "cache", sub, "*.json"))
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, n := range names {
			keys = append(keys, strings.TrimSuffix(filepath.Base(n), ".json"))
		}
		sort.Strings(keys)
		fmt.Fprintf(&sb, "%s\n", sub)
		for _, k := range keys {
			sb.WriteString(k + "\n")
		}
	}
	return sb.String()
}

// checkGolden compares got with the golden file p (rewritten with
// -update).
func checkGolden(t *testing.T, p, got string) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("cache keys differ from %s: every user's cache would be invalidated; if that is meant, bump the version and run with -update\n%s", p, lineDiff(string(want), got))
	}
}

// exitZeroELF is a static x86-64 Linux executable that exits 0: one
// program header loading the file at 0x400000, and xor edi,edi; mov
// eax,60; syscall.
func exitZeroELF() []byte {
	const base = 0x400000
	code := []byte{0x31, 0xff, 0xb8, 0x3c, 0, 0, 0, 0x0f, 0x05}
	b := make([]byte, 64+56)
	copy(b, "\x7fELF\x02\x01\x01")
	le := binary.LittleEndian
	le.PutUint16(b[16:], 2)                   // ET_EXEC
	le.PutUint16(b[18:], 62)                  // EM_X86_64
	le.PutUint32(b[20:], 1)                   // EV_CURRENT
	le.PutUint64(b[24:], base+uint64(len(b))) // entry
	le.PutUint64(b[32:], 64)                  // phoff
	le.PutUint16(b[52:], 64)                  // ehsize
	le.PutUint16(b[54:], 56)                  // phentsize
	le.PutUint16(b[56:], 1)                   // phnum
	ph := b[64:]
	le.PutUint32(ph[0:], 1) // PT_LOAD
	le.PutUint32(ph[4:], 5) // R+X
	le.PutUint64(ph[16:], base)
	le.PutUint64(ph[24:], base)
	size := uint64(len(b) + len(code))
	le.PutUint64(ph[32:], size)
	le.PutUint64(ph[40:], size)
	le.PutUint64(ph[48:], 0x1000)
	return append(b, code...)
}

// TestInstructionInputFlagOrder: BuildKit lists a RUN's flags in map
// order; the key input must not depend on it.
func TestInstructionInputFlagOrder(t *testing.T) {
	a := &instructions.RunCommand{ShellDependantCmdLine: instructions.ShellDependantCmdLine{CmdLine: []string{"true"}}, FlagsUsed: []string{"mount", "network"}}
	b := *a
	b.FlagsUsed = []string{"network", "mount"}
	ja, err := json.Marshal(instructionInput(a))
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(instructionInput(&b))
	if err != nil {
		t.Fatal(err)
	}
	if string(ja) != string(jb) {
		t.Errorf("flag order changes the key input:\n%s\n%s", ja, jb)
	}
	if got := b.FlagsUsed; got[0] != "network" {
		t.Errorf("the command was changed: %v", got)
	}
}

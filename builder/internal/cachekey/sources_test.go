package cachekey

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/moby/patternmatcher"

	"github.com/ibuild/ibuild/builder/ctxhash"
	"github.com/ibuild/ibuild/builder/internal/copier"
)

// sourceTree writes a context with every kind of entry a key reads, and
// a directory beside it (outside) that no key may read. Mtimes are fixed.
func sourceTree(t *testing.T) (ctx, outside string) {
	t.Helper()
	root := t.TempDir()
	ctx, outside = filepath.Join(root, "ctx"), filepath.Join(root, "outside")
	for _, f := range []struct {
		name, data string
		mode       os.FileMode
	}{
		{"a/x", "x", 0o644},
		{"a/exec", "run", 0o755},
		{"a/setuid", "s", 0o755 | os.ModeSetuid},
		{"a/sub/y", "y", 0o600},
		{"a/skip.tmp", "excluded", 0o644},
		{"b/1.txt", "one", 0o644},
		{"b/2.txt", "two", 0o644},
		{"../outside/secret", "host secret", 0o600},
	} {
		p := filepath.Join(ctx, f.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	for target, name := range map[string]string{
		"x":                  "a/link",
		"../../outside":      "a/up",
		"/outside/secret":    "a/abs",
		"../outside":         "up",
		"sub/../../../../..": "a/deep",
	} {
		if err := os.Symlink(target, filepath.Join(ctx, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(filepath.Join(ctx, "a/x"), filepath.Join(ctx, "a/hard")); err != nil {
		t.Fatal(err)
	}
	ts := time.Unix(1600000000, 0)
	later := time.Unix(1800000000, 0)
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.Mode()&os.ModeSymlink != 0 {
			return err
		}
		if fi.IsDir() {
			return os.Chmod(p, 0o755)
		}
		if strings.HasSuffix(p, "2.txt") {
			return os.Chtimes(p, later, later)
		}
		return os.Chtimes(p, ts, ts)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"a/sub", "a", "b", "."} {
		if err := os.Chtimes(filepath.Join(ctx, d), ts, ts); err != nil {
			t.Fatal(err)
		}
	}
	return ctx, outside
}

// render lists a key's inputs and its sum.
func render(k *Key) string {
	var lines []string
	for n, v := range k.Inputs() {
		lines = append(lines, n+" = "+v)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\nsum " + k.Sum().String() + "\n"
}

func addSources(t *testing.T, ctxDir string, paths []string, exclude []string, epoch *time.Time) *Key {
	t.Helper()
	c, err := copier.OpenContext(ctxDir, "", "")
	if err != nil {
		t.Fatal(err)
	}
	var pm *patternmatcher.PatternMatcher
	if len(exclude) > 0 {
		if pm, err = patternmatcher.New(exclude); err != nil {
			t.Fatal(err)
		}
	}
	k := New()
	err = k.AddSources(context.Background(), "src:", Sources{From: c, Paths: paths, Exclude: pm, Epoch: epoch,
		Index: ctxhash.Load(filepath.Join(t.TempDir(), "index"))})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestAddSourcesGolden pins the inputs a source tree gives: per path its
// type, image mode bits, a symlink's target (never followed below the
// top), hard links, content digests, and with SOURCE_DATE_EPOCH the
// clamped mtime.
func TestAddSourcesGolden(t *testing.T) {
	ctxDir, _ := sourceTree(t)
	epoch := time.Unix(1700000000, 0)
	var sb strings.Builder
	for _, tc := range []struct {
		name    string
		paths   []string
		exclude []string
		epoch   *time.Time
	}{
		{"dir", []string{"a"}, nil, nil},
		{"dir-excluded-epoch", []string{"a/"}, []string{"*.tmp", "sub"}, &epoch},
		{"glob", []string{"b/*.txt"}, nil, &epoch},
		{"no-match-and-missing", []string{"nothing*", "absent", "../outside/secret"}, nil, nil},
		{"top-symlink-followed", []string{"a/link"}, nil, nil},
		{"escaping-symlinks-are-absent", []string{"up/secret", "a/abs", "a/up/secret"}, nil, nil},
	} {
		sb.WriteString("== " + tc.name + "\n" + render(addSources(t, ctxDir, tc.paths, tc.exclude, tc.epoch)))
	}
	checkGolden(t, filepath.Join("testdata", "sources.golden"), sb.String())
}

// TestAddSourcesReadsNothingOutside: a change outside the context, which
// the context's symlinks point to, changes no key.
func TestAddSourcesReadsNothingOutside(t *testing.T) {
	ctxDir, outside := sourceTree(t)
	if err := os.Symlink(outside, filepath.Join(ctxDir, "hostabs")); err != nil {
		t.Fatal(err)
	}
	paths := []string{"a", "up/secret", "a/abs", "a/up/secret", "../outside/secret", "a/deep/outside/secret", "hostabs/secret", "hostabs"}
	before := addSources(t, ctxDir, paths, nil, nil).Sum()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("changed"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "new"), []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	if after := addSources(t, ctxDir, paths, nil, nil).Sum(); after != before {
		t.Error("a file outside the context changed the key")
	}
	// And a change inside does.
	if err := os.WriteFile(filepath.Join(ctxDir, "a/sub/y"), []byte("y2"), 0o600); err != nil {
		t.Fatal(err)
	}
	if after := addSources(t, ctxDir, paths, nil, nil).Sum(); after == before {
		t.Error("a changed source kept the key")
	}
}

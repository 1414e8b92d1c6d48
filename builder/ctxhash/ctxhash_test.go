package ctxhash

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func files(t *testing.T, dir string, names ...string) []File {
	t.Helper()
	var out []File
	for _, n := range names {
		p := filepath.Join(dir, n)
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, File{Rel: n, Host: p, Info: fi})
	}
	return out
}

func write(t *testing.T, p, data string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// age makes a file's ctime older than the racy margin by waiting it out.
func age() { time.Sleep(2 * racyMargin) }

func save(t *testing.T, x *Index, p string) {
	t.Helper()
	if err := x.Save(p, func(p string, b []byte) error { return os.WriteFile(p, b, 0o644) }); err != nil {
		t.Fatal(err)
	}
}

func TestDigests(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		// change modifies dir/a between a first and a second build.
		change func(t *testing.T, p string)
		// rehash is whether the second build must read a again.
		rehash bool
		want   string
	}{
		{"unchanged", func(*testing.T, string) {}, false, "one"},
		{"content", func(t *testing.T, p string) { write(t, p, "two") }, true, "two"},
		{"same-size-mtime-restored", func(t *testing.T, p string) {
			fi, _ := os.Stat(p)
			write(t, p, "owe")
			if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
				t.Fatal(err)
			}
		}, true, "owe"},
		{"touch", func(t *testing.T, p string) {
			later := time.Now().Add(time.Hour)
			if err := os.Chtimes(p, later, later); err != nil {
				t.Fatal(err)
			}
		}, true, "one"},
		{"replaced", func(t *testing.T, p string) {
			write(t, p+".new", "one")
			if err := os.Rename(p+".new", p); err != nil {
				t.Fatal(err)
			}
		}, true, "one"},
		{"chmod", func(t *testing.T, p string) {
			if err := os.Chmod(p, 0o600); err != nil {
				t.Fatal(err)
			}
		}, true, "one"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			idxPath := filepath.Join(dir, "index")
			write(t, filepath.Join(dir, "a"), "one")
			write(t, filepath.Join(dir, "b"), "bee")
			age()
			x := Load(idxPath)
			if _, err := x.Digests(ctx, files(t, dir, "a", "b")); err != nil {
				t.Fatal(err)
			}
			if x.Hashed() != 2 {
				t.Fatalf("first build hashed %d files, want 2", x.Hashed())
			}
			save(t, x, idxPath)
			tc.change(t, filepath.Join(dir, "a"))
			age()
			y := Load(idxPath)
			got, err := y.Digests(ctx, files(t, dir, "a", "b"))
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			if tc.rehash {
				want = 1
			}
			if y.Hashed() != want {
				t.Errorf("second build hashed %d files, want %d", y.Hashed(), want)
			}
			if got[0] != Digest(sha256.Sum256([]byte(tc.want))) {
				t.Errorf("digest of a is not that of %q", tc.want)
			}
			if got[1] != Digest(sha256.Sum256([]byte("bee"))) {
				t.Error("digest of b is wrong")
			}
		})
	}
}

// A file hashed right after it was written is "racily clean": its index
// entry is not trusted, since a second write within the same timestamp
// tick would leave its metadata unchanged.
func TestRacilyCleanRehashed(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p := filepath.Join(dir, "a")
	write(t, p, "one")
	x := Load(filepath.Join(dir, "index"))
	if _, err := x.Digests(ctx, files(t, dir, "a")); err != nil {
		t.Fatal(err)
	}
	if _, err := x.Digests(ctx, files(t, dir, "a")); err != nil {
		t.Fatal(err)
	}
	if x.Hashed() != 2 {
		t.Errorf("racily clean file hashed %d times, want 2", x.Hashed())
	}
	age()
	if _, err := x.Digests(ctx, files(t, dir, "a")); err != nil {
		t.Fatal(err)
	}
	// At most once more (unless the second hashing was already late
	// enough), then the entry is trusted.
	n := x.Hashed()
	if _, err := x.Digests(ctx, files(t, dir, "a")); err != nil {
		t.Fatal(err)
	}
	if n > 3 || x.Hashed() != n {
		t.Errorf("hashed %d then %d times, want at most 3 and then no more", n, x.Hashed())
	}
}

func TestLoadDamagedIndex(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string]string{
		"empty":     "",
		"foreign":   "not an index",
		"truncated": magic + "\x05\x03ab",
		"huge":      magic + "\xff\xff\xff\xff\xff\xff\x7f",
	} {
		p := filepath.Join(dir, name)
		write(t, p, data)
		if x := Load(p); len(x.entries) != 0 {
			t.Errorf("%s: loaded %d entries", name, len(x.entries))
		}
	}
}

func TestSaveRoundTripAndParallel(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	var names []string
	for i := range 200 {
		n := fmt.Sprintf("f%03d", i)
		write(t, filepath.Join(dir, n), n)
		names = append(names, n)
	}
	age()
	x := Load(filepath.Join(dir, "index"))
	x.Jobs = 4
	first, err := x.Digests(ctx, files(t, dir, names...))
	if err != nil {
		t.Fatal(err)
	}
	save(t, x, filepath.Join(dir, "index"))
	y := Load(filepath.Join(dir, "index"))
	second, err := y.Digests(ctx, files(t, dir, names...))
	if err != nil {
		t.Fatal(err)
	}
	if y.Hashed() != 0 {
		t.Errorf("reloaded index rehashed %d files", y.Hashed())
	}
	for i := range first {
		if first[i] != second[i] || first[i] != Digest(sha256.Sum256([]byte(names[i]))) {
			t.Fatalf("digest %d differs", i)
		}
	}
}

func TestDigestsCanceled(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a"), "one")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Load("").Digests(ctx, files(t, dir, "a")); err == nil {
		t.Error("canceled context: no error")
	}
}

package copier

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// TestCopyOwnerAndMode covers --chown and --chmod: files and the
// directories a copy creates get them; without --chown a context file is
// root's and a file of another tree keeps its owner.
func TestCopyOwnerAndMode(t *testing.T) {
	mode := func(m fs.FileMode) *fs.FileMode { return &m }
	for _, tc := range []struct {
		name  string
		chown *Owner
		chmod *fs.FileMode
		srcs  []string
		dest  string
		// want lists "path mode uid:gid" for the layer's entries.
		want string
	}{{
		name: "context-files-are-root",
		srcs: []string{"f", "x"}, dest: "/d/",
		want: "d drwxr-xr-x 0:0\nd/f -rw-r--r-- 0:0\nd/x -rwxr-x--- 0:0",
	}, {
		name: "chown-numeric", chown: &Owner{UID: 1000, GID: 50},
		srcs: []string{"f"}, dest: "/new/dir/",
		want: "new drwxr-xr-x 1000:50\nnew/dir drwxr-xr-x 1000:50\nnew/dir/f -rw-r--r-- 1000:50",
	}, {
		name: "chmod-file-and-new-dirs", chmod: mode(0o640),
		srcs: []string{"f"}, dest: "/a/b/",
		// New directories take the mode, as with BuildKit (without
		// root the owner keeps rwx: see unprivDirs).
		want: "a drw-r----- 0:0\na/b drw-r----- 0:0\na/b/f -rw-r----- 0:0",
	}, {
		name: "chmod-setuid", chmod: mode(0o755 | fs.ModeSetuid),
		srcs: []string{"f"}, dest: "/s",
		want: "s urwxr-xr-x 0:0",
	}, {
		name: "chmod-and-chown-on-a-tree", chown: &Owner{UID: 7, GID: 8}, chmod: mode(0o700),
		srcs: []string{"dir"}, dest: "/t",
		want: "t drwx------ 7:8\nt/sub drwx------ 7:8\nt/sub/g -rwx------ 7:8",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSandbox(t)
			write(t, filepath.Join(s.ctx, "f"), "f", 0o644)
			write(t, filepath.Join(s.ctx, "x"), "x", 0o750)
			write(t, filepath.Join(s.ctx, "dir/sub/g"), "g", 0o600)
			l := NewLayerDir(s.layer, nil, time.Unix(1700000000, 0))
			spec := &Spec{Instr: "COPY", From: s.open(t), FromName: "build context", Srcs: tc.srcs, Dest: tc.dest,
				Chown: tc.chown, Chmod: tc.chmod}
			if err := Copy(context.Background(), l, spec); err != nil {
				t.Fatal(err)
			}
			want := tc.want
			if os.Geteuid() != 0 {
				want = unprivDirs(want)
			}
			if got := owners(t, s.layer); got != want {
				t.Errorf("layer:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// unprivDirs is want as an unprivileged copy makes it: directories keep
// rwx for their owner, or the layer could not be read back.
func unprivDirs(want string) string {
	lines := strings.Split(want, "\n")
	for i, l := range lines {
		f := strings.Fields(l)
		if len(f) == 3 && strings.HasPrefix(f[1], "d") {
			f[1] = "drwx" + f[1][4:]
			lines[i] = strings.Join(f, " ")
		}
	}
	return strings.Join(lines, "\n")
}

// owners lists dir's entries as "path mode uid:gid" lines, the owner as
// the layer's tar writer reads it (StatOwner).
func owners(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(p string, fi fs.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		uid, gid := StatOwner(fi, p)
		out = append(out, fmt.Sprintf("%s %v %d:%d", rel, fi.Mode(), uid, gid))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(out, "\n")
}

// TestArchiveDetection checks that ADD extracts by content, as docker
// does: a tar, plain or compressed with gzip, bzip2, xz or zstd, whatever
// its name; nothing else, whatever its name.
func TestArchiveDetection(t *testing.T) {
	tarData := func() []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		if err := tw.WriteHeader(&tar.Header{Name: "in/f", Mode: 0o644, Size: 2, Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte("hi")); err != nil {
			t.Fatal(err)
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}()
	compress := func(wrap func(io.Writer) (io.WriteCloser, error), data []byte) []byte {
		var buf bytes.Buffer
		w, err := wrap(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	gz := func(w io.Writer) (io.WriteCloser, error) { return gzip.NewWriter(w), nil }
	xzw := func(w io.Writer) (io.WriteCloser, error) { return xz.NewWriter(w) }
	zst := func(w io.Writer) (io.WriteCloser, error) { return zstd.NewWriter(w) }
	bz2, err := os.ReadFile(filepath.Join("testdata", "in.tar.bz2"))
	if err != nil {
		t.Fatal(err)
	}
	text := []byte(strings.Repeat("not an archive\n", 100))
	for _, tc := range []struct {
		name string
		data []byte
		want bool
	}{
		{"plain.txt", tarData, true},
		{"x.tar.gz", compress(gz, tarData), true},
		{"x.bz2", bz2, true},
		{"x.xz", compress(xzw, tarData), true},
		{"noname", compress(zst, tarData), true},
		{"text.tar", text, false},
		{"text.tar.gz", compress(gz, text), false},
		{"text.zst", compress(zst, text), false},
		{"empty.tar", nil, false},
		{"short.tar", tarData[:100], false},
		{"gzip-magic-only.gz", []byte{0x1f, 0x8b, 0, 0}, false},
		{"bzip-magic-text", append([]byte("BZh9"), text...), false},
		{"xz-magic-only", []byte{0xfd, '7', 'z', 'X', 'Z', 0}, false},
		{"zstd-magic-only", []byte{0x28, 0xb5, 0x2f, 0xfd}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), tc.name)
			if err := os.WriteFile(p, tc.data, 0o644); err != nil {
				t.Fatal(err)
			}
			if got := isArchive(p); got != tc.want {
				t.Errorf("isArchive = %v, want %v", got, tc.want)
			}
			if !tc.want {
				return
			}
			// And ADD extracts it into the destination directory.
			s := newSandbox(t)
			if err := os.WriteFile(filepath.Join(s.ctx, "a"), tc.data, 0o644); err != nil {
				t.Fatal(err)
			}
			l := NewLayerDir(s.layer, nil, time.Unix(1700000000, 0))
			spec := &Spec{Instr: "ADD", From: s.open(t), FromName: "build context", Srcs: []string{"a"}, Dest: "/x/", Unpack: true,
				Extract: func(ctx context.Context, l *LayerDir, host, dir string, o *Owner) error {
					return ExtractArchive(ctx, l, host, dir, o, nil)
				}}
			if err := Copy(context.Background(), l, spec); err != nil {
				t.Fatal(err)
			}
			if got, want := tree(t, s.layer), "x d\nx/in d\nx/in/f f hi"; got != want {
				t.Errorf("layer:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestExtractArchiveConfined extracts archives whose entries point out
// of the destination: an entry named out of it is refused, a symlink is
// followed as if the destination were the root; nothing lands outside.
func TestExtractArchiveConfined(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []*tar.Header
		want    string
		wantErr bool
	}{{
		name:    "dotdot-entry",
		entries: []*tar.Header{{Name: "../../../outside/evil", Typeflag: tar.TypeReg, Mode: 0o644}},
		wantErr: true,
	}, {
		name: "symlink-then-write-through-it",
		entries: []*tar.Header{
			{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "../../outside", Mode: 0o777},
			{Name: "l/evil", Typeflag: tar.TypeReg, Mode: 0o644},
		},
		// The link is followed as if the destination were "/".
		want: "d d\nd/l l ../../outside\nd/outside d\nd/outside/evil f ",
	}, {
		name: "absolute-symlink-then-write-through-it",
		entries: []*tar.Header{
			{Name: "abs", Typeflag: tar.TypeSymlink, Linkname: "/", Mode: 0o777},
			{Name: "abs/evil", Typeflag: tar.TypeReg, Mode: 0o644},
		},
		want: "d d\nd/abs l /\nd/evil f ",
	}, {
		name: "hardlink-to-outside",
		entries: []*tar.Header{
			{Name: "h", Typeflag: tar.TypeLink, Linkname: "../../outside/secret"},
		},
		wantErr: true,
	}, {
		name: "absolute-name-is-relative-to-destination",
		entries: []*tar.Header{
			{Name: "/etc/f", Typeflag: tar.TypeReg, Mode: 0o644},
		},
		want: "d d\nd/etc d\nd/etc/f f ",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSandbox(t)
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, h := range tc.entries {
				h.ModTime = time.Unix(1700000000, 0)
				if err := tw.WriteHeader(h); err != nil {
					t.Fatal(err)
				}
			}
			if err := tw.Close(); err != nil {
				t.Fatal(err)
			}
			arch := filepath.Join(s.ctx, "a.tar")
			if err := os.WriteFile(arch, buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			outsideBefore := tree(t, s.outside)
			l := NewLayerDir(s.layer, nil, time.Unix(1700000000, 0))
			dir, err := l.MkdirAll("/d", Owner{})
			if err != nil {
				t.Fatal(err)
			}
			err = ExtractArchive(context.Background(), l, arch, dir, nil, nil)
			if tc.wantErr != (err != nil) {
				t.Fatalf("error %v, want an error: %v", err, tc.wantErr)
			}
			if got := tree(t, s.outside); got != outsideBefore {
				t.Errorf("outside changed:\n%s", got)
			}
			if tc.want != "" {
				if got := tree(t, s.layer); got != tc.want {
					t.Errorf("layer:\n%s\nwant:\n%s", got, tc.want)
				}
			}
			for _, p := range []string{filepath.Join(s.root, "evil"), "/evil", filepath.Join(s.outside, "evil")} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("%s was written", p)
				}
			}
		})
	}
}

// TestGlob matches wildcards in every component, following symlinks of
// earlier components inside the tree only.
func TestGlob(t *testing.T) {
	s := newSandbox(t)
	symlink(t, "../outside", filepath.Join(s.ctx, "up"))
	symlink(t, s.outside, filepath.Join(s.ctx, "abs"))
	write(t, filepath.Join(s.ctx, "a/1.txt"), "1", 0o644)
	write(t, filepath.Join(s.ctx, "a/2.txt"), "2", 0o644)
	write(t, filepath.Join(s.ctx, "b/3.txt"), "3", 0o644)
	write(t, filepath.Join(s.ctx, "b/n.md"), "n", 0o644)
	symlink(t, "a", filepath.Join(s.ctx, "la"))
	c := s.open(t)
	for _, tc := range []struct {
		pattern, want string
	}{
		{"/*/*.txt", "/a/1.txt /a/2.txt /b/3.txt /la/1.txt /la/2.txt"},
		{"/la/?.txt", "/la/1.txt /la/2.txt"},
		{"/[ab]/n.*", "/b/n.md"},
		{"/up/*", ""},
		{"/abs/*", ""},
		{"/nothing*", ""},
	} {
		got, err := Glob(c, tc.pattern)
		if err != nil {
			t.Fatalf("%s: %v", tc.pattern, err)
		}
		if s := strings.Join(got, " "); s != tc.want {
			t.Errorf("Glob(%s) = %q, want %q", tc.pattern, s, tc.want)
		}
	}
	if _, err := Glob(c, "/a/[x"); err == nil {
		t.Error("a bad pattern gave no error")
	}
}

// TestParseChmod covers --chmod's octal values.
func TestParseChmod(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // fs.FileMode's String, or "error"
	}{
		{"", "none"},
		{"0755", "-rwxr-xr-x"},
		{"644", "-rw-r--r--"},
		{"4755", "urwxr-xr-x"},
		{"2755", "grwxr-xr-x"},
		{"1777", "trwxrwxrwx"},
		{"10000", "error"},
		{"u+x", "error"},
		{"9", "error"},
	} {
		m, err := ParseChmod(tc.in)
		got := "error"
		switch {
		case err == nil && m == nil:
			got = "none"
		case err == nil:
			got = m.String()
		}
		if got != tc.want {
			t.Errorf("ParseChmod(%q) = %s (%v), want %s", tc.in, got, err, tc.want)
		}
	}
}

// files is an image's /etc files for owner lookups.
type files map[string]string

func (f files) ReadFile(p string) ([]byte, error) {
	if d, ok := f[p]; ok {
		return []byte(d), nil
	}
	return nil, fs.ErrNotExist
}

// TestResolveOwner covers --chown's user[:group] against the image's
// passwd and group files, as BuildKit resolves it.
func TestResolveOwner(t *testing.T) {
	img := files{
		"/etc/passwd": "root:x:0:0:root:/root:/bin/sh\n# comment\napp:x:1000:1001:app:/home/app:/bin/sh\n",
		"/etc/group":  "root:x:0:\nstaff:x:50:app\napp:x:1001:\n",
	}
	for _, tc := range []struct {
		spec  string
		files FileReader
		want  string
	}{
		{"app", img, "1000:1001"},
		{"app:staff", img, "1000:50"},
		{"app:7", img, "1000:7"},
		{"5", img, "5:5"},
		{"5:staff", img, "5:50"},
		{"nobody", img, "0:0"},
		{"app:nogroup", img, "1000:1001"},
		{":staff", img, "0:50"},
		{"app:", img, "1000:1001"},
		{"app", nil, "0:0"},
		{"", img, "error"},
		{"-1", img, "error"},
		{"app:-2", img, "error"},
	} {
		o, err := ResolveOwner(tc.spec, tc.files)
		got := fmt.Sprintf("%d:%d", o.UID, o.GID)
		if err != nil {
			got = "error"
		}
		if got != tc.want {
			t.Errorf("ResolveOwner(%q) = %s (%v), want %s", tc.spec, got, err, tc.want)
		}
	}
}

package layers

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibuild/ibuild/layers/layertest"

	"golang.org/x/sys/unix"
)

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		layertest.SkipOrFail(t, "needs root (device nodes, trusted xattrs, chown)")
	}
}

// setUserXattr sets a user.* xattr, skipping (outside CI) when the file
// system refuses them.
func setUserXattr(t testing.TB, path, key, value string) {
	t.Helper()
	if err := unix.Lsetxattr(path, key, []byte(value), 0); err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			layertest.SkipOrFail(t, "file system refuses user xattrs: %v", err)
		}
		t.Fatal(err)
	}
}

// tarEntry is one entry of a tar, as read back.
type tarEntry struct {
	hdr  *tar.Header
	body string
}

func readTarEntries(t testing.TB, b []byte) []tarEntry {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var out []tarEntry
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read %s: %v", hdr.Name, err)
		}
		out = append(out, tarEntry{hdr, string(body)})
	}
}

func entryNames(es []tarEntry) []string {
	var names []string
	for _, e := range es {
		names = append(names, e.hdr.Name)
	}
	return names
}

func findEntry(t testing.TB, es []tarEntry, name string) tarEntry {
	t.Helper()
	for _, e := range es {
		if e.hdr.Name == name {
			return e
		}
	}
	t.Fatalf("no entry %q in %q", name, entryNames(es))
	return tarEntry{}
}

func writeTarBytes(t testing.TB, dir string, opts TarOptions) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteTar(context.Background(), &buf, dir, opts); err != nil {
		t.Fatalf("WriteTar: %v", err)
	}
	return buf.Bytes()
}

func mustWrite(t testing.TB, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

func mustDo(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// setAllTimes sets atime and mtime of everything below dir (not following
// symlinks) to at and mt, deepest first so directories keep theirs.
func setAllTimes(t testing.TB, dir string, at, mt time.Time) {
	t.Helper()
	var paths []string
	mustDo(t, filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		paths = append(paths, p)
		return err
	}))
	ts := []unix.Timespec{unix.NsecToTimespec(at.UnixNano()), unix.NsecToTimespec(mt.UnixNano())}
	for i := len(paths) - 1; i >= 0; i-- {
		mustDo(t, unix.UtimesNanoAt(unix.AT_FDCWD, paths[i], ts, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// makeSampleTree builds a small layer directory. reverse creates the files
// in the opposite order, so inode numbers and readdir order differ.
func makeSampleTree(t testing.TB, dir string, reverse bool) {
	t.Helper()
	steps := []func(){
		func() { mustWrite(t, filepath.Join(dir, "etc/passwd"), "root:x:0:0::/root:/bin/sh\n", 0o644) },
		func() { mustWrite(t, filepath.Join(dir, "bin/tool"), strings.Repeat("tool ", 1000), 0o755) },
		func() { mustDo(t, os.MkdirAll(filepath.Join(dir, "var/empty"), 0o755)) },
		func() {
			mustDo(t, os.MkdirAll(filepath.Join(dir, "bin"), 0o755))
			mustDo(t, os.Symlink("../etc/passwd", filepath.Join(dir, "bin/link")))
		},
		func() { mustWrite(t, filepath.Join(dir, "a-b"), "dash", 0o600) },
		func() { mustWrite(t, filepath.Join(dir, "a/z"), "z", 0o640) },
	}
	if reverse {
		for i := len(steps) - 1; i >= 0; i-- {
			steps[i]()
		}
	} else {
		for _, s := range steps {
			s()
		}
	}
}

func TestWriteTarDeterministic(t *testing.T) {
	epoch := time.Unix(1700000000, 0)
	type tree struct {
		reverse      bool // creation order
		atime, mtime time.Time
	}
	tests := []struct {
		name string
		a, b tree
	}{
		{"mtimes newer than epoch",
			tree{false, time.Unix(1800000000, 0), time.Unix(1800000100, 0)},
			tree{false, time.Unix(1800000000, 0), time.Unix(1900000000, 0)}},
		{"atimes",
			tree{false, time.Unix(1000, 0), time.Unix(1600000000, 0)},
			tree{false, time.Unix(1500000000, 0), time.Unix(1600000000, 0)}},
		{"sub-second mtimes",
			tree{false, time.Unix(1600000000, 0), time.Unix(1600000000, 1)},
			tree{false, time.Unix(1600000000, 0), time.Unix(1600000000, 999999999)}},
		{"creation order",
			tree{false, time.Unix(1800000000, 0), time.Unix(1800000000, 0)},
			tree{true, time.Unix(1800000000, 0), time.Unix(1800000000, 0)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var tars [][]byte
			for _, tr := range []tree{tc.a, tc.b} {
				dir := t.TempDir()
				makeSampleTree(t, dir, tr.reverse)
				setAllTimes(t, dir, tr.atime, tr.mtime)
				tars = append(tars, writeTarBytes(t, dir, TarOptions{SourceDateEpoch: &epoch}))
				if again := writeTarBytes(t, dir, TarOptions{SourceDateEpoch: &epoch}); !bytes.Equal(again, tars[len(tars)-1]) {
					t.Fatal("two runs over one tree differ")
				}
			}
			if !bytes.Equal(tars[0], tars[1]) {
				t.Fatalf("tars differ:\n%q\n%q", entryNames(readTarEntries(t, tars[0])), entryNames(readTarEntries(t, tars[1])))
			}
			for _, e := range readTarEntries(t, tars[0]) {
				if e.hdr.ModTime.After(epoch) || e.hdr.ModTime.Nanosecond() != 0 {
					t.Errorf("%s: mtime %v not clamped and truncated", e.hdr.Name, e.hdr.ModTime)
				}
				if !e.hdr.AccessTime.IsZero() || !e.hdr.ChangeTime.IsZero() {
					t.Errorf("%s: has atime/ctime", e.hdr.Name)
				}
			}
		})
	}
}

func TestWriteTarEntries(t *testing.T) {
	dir := t.TempDir()
	makeSampleTree(t, dir, false)
	mustWrite(t, filepath.Join(dir, "bin/suid"), "x", 0o4755)
	mustDo(t, os.Mkdir(filepath.Join(dir, "tmp"), 0o755))
	mustDo(t, unix.Chmod(filepath.Join(dir, "tmp"), 0o1777))
	mustDo(t, unix.Chmod(filepath.Join(dir, "bin/suid"), 0o4755))
	mustDo(t, os.Link(filepath.Join(dir, "bin/tool"), filepath.Join(dir, "bin/tool2")))
	mustDo(t, os.Link(filepath.Join(dir, "bin/tool"), filepath.Join(dir, "a/tool0")))
	mustDo(t, unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644))
	setUserXattr(t, filepath.Join(dir, "etc/passwd"), "user.foo", "bar\x00baz")
	sparse := filepath.Join(dir, "sparse")
	f, err := os.Create(sparse)
	mustDo(t, err)
	_, err = f.WriteAt([]byte("end"), 3<<20)
	mustDo(t, err)
	mustDo(t, f.Close())
	old := time.Unix(1000000000, 700)
	setAllTimes(t, dir, old, old)
	epoch := time.Unix(1700000000, 0)

	es := readTarEntries(t, writeTarBytes(t, dir, TarOptions{SourceDateEpoch: &epoch}))
	want := []string{
		"a/", "a/tool0", "a/z", "a-b", "bin/", "bin/link", "bin/suid", "bin/tool", "bin/tool2",
		"etc/", "etc/passwd", "fifo", "sparse", "tmp/", "var/", "var/empty/",
	}
	if got := entryNames(es); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("entries\n got %q\nwant %q", got, want)
	}
	for _, e := range es {
		h := e.hdr
		if h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: uname %q gname %q, want empty", h.Name, h.Uname, h.Gname)
		}
		if h.Uid != os.Getuid() || h.Gid != os.Getgid() {
			t.Errorf("%s: owner %d:%d", h.Name, h.Uid, h.Gid)
		}
		if !h.ModTime.Equal(time.Unix(1000000000, 0)) {
			t.Errorf("%s: mtime %v, want the file's, truncated", h.Name, h.ModTime)
		}
		if strings.HasPrefix(h.Name, "/") || strings.HasPrefix(h.Name, "./") {
			t.Errorf("%s: not relative", h.Name)
		}
	}
	checks := []struct {
		name  string
		typ   byte
		mode  int64
		link  string
		body  string
		xattr string
	}{
		{name: "a/tool0", typ: tar.TypeReg, mode: 0o755, body: strings.Repeat("tool ", 1000)},
		{name: "bin/tool", typ: tar.TypeLink, mode: 0o755, link: "a/tool0"},
		{name: "bin/tool2", typ: tar.TypeLink, mode: 0o755, link: "a/tool0"},
		{name: "bin/link", typ: tar.TypeSymlink, mode: 0o777, link: "../etc/passwd"},
		{name: "bin/suid", typ: tar.TypeReg, mode: 0o4755, body: "x"},
		{name: "tmp/", typ: tar.TypeDir, mode: 0o1777},
		{name: "var/empty/", typ: tar.TypeDir, mode: 0o755},
		{name: "fifo", typ: tar.TypeFifo, mode: 0o644},
		{name: "etc/passwd", typ: tar.TypeReg, mode: 0o644, body: "root:x:0:0::/root:/bin/sh\n", xattr: "bar\x00baz"},
		{name: "sparse", typ: tar.TypeReg, mode: 0o644, body: string(make([]byte, 3<<20)) + "end"},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			e := findEntry(t, es, c.name)
			if e.hdr.Typeflag != c.typ || e.hdr.Mode != c.mode || e.hdr.Linkname != c.link {
				t.Errorf("type %q mode %#o link %q, want %q %#o %q", e.hdr.Typeflag, e.hdr.Mode, e.hdr.Linkname, c.typ, c.mode, c.link)
			}
			if e.body != c.body {
				t.Errorf("body of %d bytes, want %d", len(e.body), len(c.body))
			}
			if got := e.hdr.PAXRecords["SCHILY.xattr.user.foo"]; got != c.xattr {
				t.Errorf("user.foo = %q, want %q", got, c.xattr)
			}
		})
	}
}

func TestWriteTarDevicesAndOverlay(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	mustDo(t, unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	mustDo(t, unix.Chmod(filepath.Join(dir, "null"), 0o666))
	mustDo(t, unix.Mknod(filepath.Join(dir, "gone"), unix.S_IFCHR, 0))
	mustDo(t, os.MkdirAll(filepath.Join(dir, "opq/keep"), 0o755))
	mustDo(t, os.MkdirAll(filepath.Join(dir, "uopq"), 0o755))
	mustDo(t, unix.Mknod(filepath.Join(dir, "opq/deleted"), unix.S_IFCHR, 0))
	mustDo(t, unix.Lsetxattr(filepath.Join(dir, "opq"), "trusted.overlay.opaque", []byte("y"), 0))
	mustDo(t, unix.Lsetxattr(filepath.Join(dir, "opq"), "trusted.overlay.origin", []byte("x"), 0))
	mustDo(t, unix.Lsetxattr(filepath.Join(dir, "uopq"), "user.overlay.opaque", []byte("y"), 0))
	mustWrite(t, filepath.Join(dir, "cap"), "bin", 0o755)
	capV2 := []byte{1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} // cap_net_bind_service+ep
	mustDo(t, unix.Lsetxattr(filepath.Join(dir, "cap"), "security.capability", capV2, 0))
	mustWrite(t, filepath.Join(dir, "owned"), "o", 0o644)
	mustDo(t, unix.Lsetxattr(filepath.Join(dir, "owned"), OwnerXattr, []byte("1234:5678"), 0))
	mustDo(t, os.Mkdir(filepath.Join(dir, "moded"), 0o740))
	mustDo(t, unix.Lsetxattr(filepath.Join(dir, "moded"), OwnerXattr, []byte("7:8:2040"), 0))
	epoch := time.Unix(1000, 0)
	if err := CheckNames(context.Background(), dir); err != nil {
		t.Errorf("CheckNames on an overlay upper directory: %v", err)
	}

	es := readTarEntries(t, writeTarBytes(t, dir, TarOptions{SourceDateEpoch: &epoch}))
	want := []string{".wh.gone", "cap", "moded/", "null", "opq/", "opq/.wh..wh..opq", "opq/.wh.deleted", "opq/keep/", "owned", "uopq/", "uopq/.wh..wh..opq"}
	if got := entryNames(es); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("entries\n got %q\nwant %q", got, want)
	}
	for _, name := range []string{".wh.gone", "opq/.wh..wh..opq", "opq/.wh.deleted"} {
		h := findEntry(t, es, name).hdr
		if h.Typeflag != tar.TypeReg || h.Mode != 0 || h.Size != 0 || !h.ModTime.Equal(epoch) || len(h.PAXRecords) != 0 {
			t.Errorf("%s: type %q mode %#o size %d mtime %v pax %v; want an empty mode-0 file at the epoch", name, h.Typeflag, h.Mode, h.Size, h.ModTime, h.PAXRecords)
		}
	}
	for _, e := range es {
		for k := range e.hdr.PAXRecords {
			if strings.Contains(k, ".overlay.") || strings.Contains(k, OwnerXattr) {
				t.Errorf("%s: %s written", e.hdr.Name, k)
			}
		}
	}
	if h := findEntry(t, es, "null").hdr; h.Typeflag != tar.TypeChar || h.Devmajor != 1 || h.Devminor != 3 || h.Mode != 0o666 {
		t.Errorf("null: type %q %d:%d mode %#o", h.Typeflag, h.Devmajor, h.Devminor, h.Mode)
	}
	if got := findEntry(t, es, "cap").hdr.PAXRecords["SCHILY.xattr.security.capability"]; got != string(capV2) {
		t.Errorf("security.capability = %x, want %x", got, capV2)
	}
	if h := findEntry(t, es, "owned").hdr; h.Uid != 1234 || h.Gid != 5678 {
		t.Errorf("owned: %d:%d, want the owner xattr's 1234:5678", h.Uid, h.Gid)
	}
	if h := findEntry(t, es, "moded/").hdr; h.Uid != 7 || h.Gid != 8 || h.Mode != 0o2040 {
		t.Errorf("moded/: %d:%d mode %#o, want the owner xattr's 7:8 and 2040", h.Uid, h.Gid, h.Mode)
	}
}

// TestOwnerXattr: the record of an unprivileged file's in-image owner,
// and mode, round-trips; malformed ones are refused.
func TestOwnerXattr(t *testing.T) {
	for _, tc := range []struct {
		v    string
		want OwnerMode
		bad  bool
	}{
		{v: "0:0", want: OwnerMode{}},
		{v: "1000:50", want: OwnerMode{UID: 1000, GID: 50}},
		{v: "1:2:640", want: OwnerMode{UID: 1, GID: 2, Mode: 0o640, HasMode: true}},
		{v: "1:2:0", want: OwnerMode{UID: 1, GID: 2, HasMode: true}},
		{v: "1:2:4755", want: OwnerMode{UID: 1, GID: 2, Mode: 0o4755, HasMode: true}},
		{v: "nobody", bad: true},
		{v: "1:-2", bad: true},
		{v: "1:2:9", bad: true},
		{v: "1:2:17777", bad: true},
		{v: "1:2:3:4", bad: true},
	} {
		got, err := ParseOwnerXattr(tc.v)
		if tc.bad {
			if err == nil {
				t.Errorf("ParseOwnerXattr(%q) = %+v, want an error", tc.v, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseOwnerXattr(%q) = %+v, %v; want %+v", tc.v, got, err, tc.want)
		}
		if back, err := ParseOwnerXattr(FormatOwnerXattr(got)); err != nil || back != got {
			t.Errorf("FormatOwnerXattr(%+v) = %q parses back as %+v, %v", got, FormatOwnerXattr(got), back, err)
		}
	}
}

func TestWriteTarDoesNotFollowSymlinks(t *testing.T) {
	outside := t.TempDir()
	mustWrite(t, filepath.Join(outside, "secret"), "s", 0o644)
	dir := t.TempDir()
	mustDo(t, os.Symlink(outside, filepath.Join(dir, "out")))
	mustDo(t, os.Symlink(filepath.Join(outside, "secret"), filepath.Join(dir, "file")))
	es := readTarEntries(t, writeTarBytes(t, dir, TarOptions{}))
	if got := strings.Join(entryNames(es), " "); got != "file out" {
		t.Fatalf("entries %q, want just the two symlinks", got)
	}
	for _, e := range es {
		if e.hdr.Typeflag != tar.TypeSymlink {
			t.Errorf("%s: type %q, want symlink", e.hdr.Name, e.hdr.Typeflag)
		}
	}
}

func TestWriteTarErrors(t *testing.T) {
	dir := t.TempDir()
	makeSampleTree(t, dir, false)
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	bad := t.TempDir()
	mustWrite(t, filepath.Join(bad, "f"), "", 0o644)
	setUserXattr(t, filepath.Join(bad, "f"), OwnerXattr, "nobody")
	whFile := t.TempDir()
	mustWrite(t, filepath.Join(whFile, "etc", "sub", ".wh.passwd"), "not a whiteout", 0o644)
	whDir := t.TempDir()
	mustDo(t, os.MkdirAll(filepath.Join(whDir, "a", ".wh.dir", "x"), 0o755))
	tests := []struct {
		name string
		ctx  context.Context
		dir  string
		want string
	}{
		{"canceled", canceled, dir, "context canceled"},
		{"missing dir", context.Background(), filepath.Join(dir, "nope"), "no such file"},
		{"bad owner xattr", context.Background(), bad, "invalid owner"},
		{"file named .wh.", context.Background(), whFile, `/etc/sub/.wh.passwd: a name starting with ".wh." cannot be carried in an OCI layer`},
		{"directory named .wh.", context.Background(), whDir, `/a/.wh.dir: a name starting with ".wh."`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := WriteTar(tc.ctx, io.Discard, tc.dir, TarOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
			var wn *WhiteoutNameError
			if strings.Contains(tc.want, ".wh.") {
				if !errors.As(err, &wn) {
					t.Errorf("err = %v, want a *WhiteoutNameError", err)
				}
				// CheckNames finds the same file without reading content.
				if cerr := CheckNames(tc.ctx, tc.dir); !errors.As(cerr, &wn) || !strings.Contains(cerr.Error(), tc.want) {
					t.Errorf("CheckNames = %v, want %q", cerr, tc.want)
				}
			}
		})
	}
}

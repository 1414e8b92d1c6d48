package layers

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// An entry of a hand-made layer tar.
type ent struct {
	hdr  tar.Header
	body string
}

func regEnt(name, body string, mode int64) ent {
	return ent{tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body))}, body}
}

func dirEnt(name string, mode int64) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
}

func symEnt(name, target string) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

// linkEnt is a hardlink entry with mode 0644, as archivers write the
// shared inode's metadata on every name of it (the entry's header applies
// to that inode when extracted).
func linkEnt(name, target string) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644}}
}

func buildTar(t testing.TB, es ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := e.hdr
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1600000000, 0)
		}
		h.Uid, h.Gid = os.Getuid(), os.Getgid()
		mustDo(t, tw.WriteHeader(&h))
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	mustDo(t, tw.Close())
	return buf.Bytes()
}

// describeTree maps each path below root to its type, mode bits and
// content or link target.
func describeTree(t testing.TB, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		mode := st.Mode & 0o7777
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			out[rel] = fmt.Sprintf("dir %04o", mode)
		case unix.S_IFREG:
			var b []byte
			if st.Size > 0 {
				if b, err = os.ReadFile(p); err != nil {
					return err
				}
			}
			out[rel] = fmt.Sprintf("file %04o %q", mode, b)
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out[rel] = "symlink -> " + target
		case unix.S_IFCHR:
			out[rel] = fmt.Sprintf("char %d:%d %04o", unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev)), mode)
		case unix.S_IFIFO:
			out[rel] = fmt.Sprintf("fifo %04o", mode)
		default:
			out[rel] = fmt.Sprintf("other %o", st.Mode)
		}
		return nil
	})
	mustDo(t, err)
	return out
}

func diffTrees(got, want map[string]string) string {
	var keys []string
	for k := range got {
		keys = append(keys, k)
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		if got[k] != want[k] {
			fmt.Fprintf(&b, "  %s: got %q, want %q\n", k, got[k], want[k])
		}
	}
	return b.String()
}

func extractAll(t testing.TB, root string, mode WhiteoutMode, layers ...[]byte) {
	t.Helper()
	for i, l := range layers {
		src := fmt.Sprintf("layer%d", i)
		err := Extract(context.Background(), bytes.NewReader(l), root, ExtractOptions{Whiteouts: mode, Source: src})
		if err != nil {
			t.Fatalf("extract %s: %v", src, err)
		}
	}
}

func TestExtractWhiteouts(t *testing.T) {
	base := buildTar(t,
		dirEnt("etc/", 0o755),
		regEnt("etc/hosts", "h", 0o644),
		regEnt("etc/passwd", "p", 0o644),
		dirEnt("app/", 0o755),
		dirEnt("app/sub/", 0o700),
		regEnt("app/sub/x", "x", 0o600),
		regEnt("app/y", "y", 0o644),
		regEnt("file", "f", 0o644),
		symEnt("link", "etc/hosts"),
	)
	baseTree := map[string]string{
		"etc": "dir 0755", "etc/hosts": `file 0644 "h"`, "etc/passwd": `file 0644 "p"`,
		"app": "dir 0755", "app/sub": "dir 0700", "app/sub/x": `file 0600 "x"`, "app/y": `file 0644 "y"`,
		"file": `file 0644 "f"`, "link": "symlink -> etc/hosts",
	}
	with := func(changes map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range baseTree {
			m[k] = v
		}
		for k, v := range changes {
			if v == "" {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		return m
	}
	tests := []struct {
		name   string
		mode   WhiteoutMode
		layers [][]byte
		want   map[string]string
	}{
		{"delete a file", ApplyWhiteouts, [][]byte{buildTar(t, regEnt("etc/.wh.passwd", "", 0))},
			with(map[string]string{"etc/passwd": ""})},
		{"delete a symlink, not its target", ApplyWhiteouts, [][]byte{buildTar(t, regEnt(".wh.link", "", 0))},
			with(map[string]string{"link": ""})},
		{"delete a directory", ApplyWhiteouts, [][]byte{buildTar(t, regEnt(".wh.app", "", 0))},
			with(map[string]string{"app": "", "app/sub": "", "app/sub/x": "", "app/y": ""})},
		{"whiteout of something absent", ApplyWhiteouts, [][]byte{buildTar(t, regEnt("nope/.wh.x", "", 0), regEnt(".wh.nothing", "", 0))},
			baseTree},
		{"delete a directory and recreate it", ApplyWhiteouts,
			[][]byte{buildTar(t, dirEnt("app/", 0o750), regEnt("app/.wh..wh..opq", "", 0), regEnt("app/new", "n", 0o644))},
			with(map[string]string{"app": "dir 0750", "app/sub": "", "app/sub/x": "", "app/y": "", "app/new": `file 0644 "n"`})},
		{"opaque marker after new contents", ApplyWhiteouts,
			[][]byte{buildTar(t, dirEnt("app/", 0o755), regEnt("app/!new", "n", 0o644), dirEnt("app/sub/", 0o755), regEnt("app/sub/z", "z", 0o644), regEnt("app/.wh..wh..opq", "", 0))},
			// app/sub is this layer's, but what the base had in it is
			// lower content of app, which the marker hides too.
			with(map[string]string{"app/sub": "dir 0755", "app/sub/z": `file 0644 "z"`, "app/sub/x": "", "app/y": "", "app/!new": `file 0644 "n"`})},
		{"whiteout of the layer's own file", ApplyWhiteouts,
			[][]byte{buildTar(t, regEnt("etc/passwd", "mine", 0o644), regEnt("etc/.wh.passwd", "", 0), regEnt("etc/.wh.hosts", "", 0))},
			with(map[string]string{"etc/passwd": `file 0644 "mine"`, "etc/hosts": ""})},
		{"replace a file with a dir and back", ApplyWhiteouts,
			[][]byte{
				buildTar(t, dirEnt("file/", 0o711), regEnt("file/inner", "i", 0o644)),
				buildTar(t, regEnt("file", "again", 0o600)),
			},
			with(map[string]string{"file": `file 0600 "again"`})},
		{"replace a dir with a file", ApplyWhiteouts,
			[][]byte{buildTar(t, regEnt("app", "now a file", 0o644))},
			with(map[string]string{"app": `file 0644 "now a file"`, "app/sub": "", "app/sub/x": "", "app/y": ""})},
		{"whiteout then new file of the same name", ApplyWhiteouts,
			[][]byte{buildTar(t, regEnt(".wh.file", "", 0)), buildTar(t, regEnt("file", "new", 0o644))},
			with(map[string]string{"file": `file 0644 "new"`})},
		{"keep markers", KeepWhiteouts,
			[][]byte{buildTar(t, regEnt("etc/.wh.passwd", "", 0), dirEnt("app/", 0o755), regEnt("app/.wh..wh..opq", "", 0))},
			with(map[string]string{"etc/.wh.passwd": `file 0000 ""`, "app/.wh..wh..opq": `file 0000 ""`})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			extractAll(t, root, ApplyWhiteouts, base)
			extractAll(t, root, tc.mode, tc.layers...)
			if d := diffTrees(describeTree(t, root), tc.want); d != "" {
				t.Errorf("tree differs:\n%s", d)
			}
		})
	}
}

// TestExtractRoundTrip writes a tree as a tar, extracts it and writes the
// result again: the two tars must be identical.
func TestExtractRoundTrip(t *testing.T) {
	src := t.TempDir()
	makeSampleTree(t, src, false)
	mustDo(t, os.Link(filepath.Join(src, "bin/tool"), filepath.Join(src, "bin/tool2")))
	mustWrite(t, filepath.Join(src, "bin/suid"), "s", 0o755)
	mustDo(t, unix.Chmod(filepath.Join(src, "bin/suid"), 0o6755))
	mustDo(t, os.Mkdir(filepath.Join(src, "tmp"), 0o755))
	mustDo(t, unix.Chmod(filepath.Join(src, "tmp"), 0o1777))
	mustDo(t, os.MkdirAll(filepath.Join(src, "ro/inner"), 0o755))
	mustWrite(t, filepath.Join(src, "ro/inner/f"), "f", 0o444)
	mustDo(t, unix.Chmod(filepath.Join(src, "ro/inner"), 0o555))
	mustDo(t, unix.Chmod(filepath.Join(src, "ro"), 0o500))
	dst := filepath.Join(t.TempDir(), "root")
	t.Cleanup(func() { // let the unprivileged remove them
		for _, d := range []string{src, dst} {
			os.Chmod(filepath.Join(d, "ro"), 0o700)
			os.Chmod(filepath.Join(d, "ro/inner"), 0o700)
		}
	})
	mustDo(t, unix.Mkfifo(filepath.Join(src, "fifo"), 0o600))
	setUserXattr(t, filepath.Join(src, "etc/passwd"), "user.foo", "bar")
	f, err := os.Create(filepath.Join(src, "sparse"))
	mustDo(t, err)
	_, err = f.WriteAt([]byte("tail"), 8<<20)
	mustDo(t, err)
	mustDo(t, f.Close())
	root := os.Geteuid() == 0
	if root {
		mustDo(t, os.Lchown(filepath.Join(src, "etc/passwd"), 1000, 2000))
		mustDo(t, os.Lchown(filepath.Join(src, "bin/link"), 3000, 4000))
		mustDo(t, os.Lchown(filepath.Join(src, "bin/suid"), 5, 6))
		mustDo(t, unix.Chmod(filepath.Join(src, "bin/suid"), 0o6755))
		mustDo(t, unix.Mknod(filepath.Join(src, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		capV2 := []byte{1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
		mustDo(t, unix.Lsetxattr(filepath.Join(src, "bin/tool"), "security.capability", capV2, 0))
	}
	setAllTimes(t, src, time.Unix(1500000000, 0), time.Unix(1600000000, 0))
	want := writeTarBytes(t, src, TarOptions{})

	mustDo(t, Extract(context.Background(), bytes.NewReader(want), dst, ExtractOptions{Source: "rt", Whiteouts: KeepWhiteouts}))
	got := writeTarBytes(t, dst, TarOptions{})
	if !bytes.Equal(got, want) {
		g, w := readTarEntries(t, got), readTarEntries(t, want)
		if gn, wn := strings.Join(entryNames(g), " "), strings.Join(entryNames(w), " "); gn != wn {
			t.Fatalf("entries\n got %s\nwant %s", gn, wn)
		}
		for i := range g {
			gh, wh := *g[i].hdr, *w[i].hdr
			if fmt.Sprint(gh) != fmt.Sprint(wh) || g[i].body != w[i].body {
				t.Errorf("%s:\n got %+v\nwant %+v", wh.Name, gh, wh)
			}
		}
		t.Fatal("re-tarred extraction differs from the original tar")
	}
	var st unix.Stat_t
	mustDo(t, unix.Stat(filepath.Join(dst, "sparse"), &st))
	if st.Blocks*512 >= st.Size {
		t.Errorf("sparse file uses %d bytes for %d: holes were written", st.Blocks*512, st.Size)
	}
	if !root {
		return
	}
	// Directory times are set after their contents were written.
	mustDo(t, unix.Lstat(filepath.Join(dst, "ro"), &st))
	if st.Mtim.Sec != 1600000000 {
		t.Errorf("ro mtime %d", st.Mtim.Sec)
	}
}

func TestExtractReplace(t *testing.T) {
	tests := []struct {
		name   string
		layers [][]byte
		want   map[string]string
	}{
		{"file over file", [][]byte{buildTar(t, regEnt("f", "1", 0o644)), buildTar(t, regEnt("f", "2", 0o600))},
			map[string]string{"f": `file 0600 "2"`}},
		{"dir over dir merges", [][]byte{
			buildTar(t, dirEnt("d/", 0o755), regEnt("d/a", "a", 0o644)),
			buildTar(t, dirEnt("d/", 0o700), regEnt("d/b", "b", 0o644)),
		}, map[string]string{"d": "dir 0700", "d/a": `file 0644 "a"`, "d/b": `file 0644 "b"`}},
		{"symlink over dir removes the tree", [][]byte{
			buildTar(t, dirEnt("d/", 0o755), regEnt("d/a", "a", 0o644)),
			buildTar(t, symEnt("d", "elsewhere")),
		}, map[string]string{"d": "symlink -> elsewhere"}},
		{"dir over symlink to dir replaces the symlink", [][]byte{
			buildTar(t, dirEnt("real/", 0o755), symEnt("d", "real")),
			buildTar(t, dirEnt("d/", 0o711), regEnt("d/x", "x", 0o644)),
		}, map[string]string{"real": "dir 0755", "d": "dir 0711", "d/x": `file 0644 "x"`}},
		{"file over symlink replaces the symlink", [][]byte{
			buildTar(t, regEnt("target", "t", 0o644), symEnt("l", "target")),
			buildTar(t, regEnt("l", "new", 0o644)),
		}, map[string]string{"target": `file 0644 "t"`, "l": `file 0644 "new"`}},
		{"entries under a symlinked dir land in its target", [][]byte{
			buildTar(t, dirEnt("real/", 0o755), symEnt("d", "/real")),
			buildTar(t, regEnt("d/x", "x", 0o644)),
		}, map[string]string{"real": "dir 0755", "d": "symlink -> /real", "real/x": `file 0644 "x"`}},
		{"hardlinks", [][]byte{buildTar(t, regEnt("a", "same", 0o644), linkEnt("b", "a"), linkEnt("sub/c", "/a"), linkEnt("a", "a"))},
			map[string]string{"a": `file 0644 "same"`, "b": `file 0644 "same"`, "sub": "dir 0755", "sub/c": `file 0644 "same"`}},
		// docker's and containerd's extractors apply each header to the
		// inode: the last one of its names wins.
		{"hardlink header sets the shared inode's mode", [][]byte{buildTar(t, regEnt("a", "same", 0o644),
			with(linkEnt("b", "a"), func(h *tar.Header) { h.Mode = 0o600 }))},
			map[string]string{"a": `file 0600 "same"`, "b": `file 0600 "same"`}},
		{"missing parents are made", [][]byte{buildTar(t, regEnt("x/y/z", "z", 0o644))},
			map[string]string{"x": "dir 0755", "x/y": "dir 0755", "x/y/z": `file 0644 "z"`}},
		{"root entry", [][]byte{buildTar(t, dirEnt("./", 0o755), regEnt("./f", "f", 0o644))},
			map[string]string{"f": `file 0644 "f"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			extractAll(t, root, ApplyWhiteouts, tc.layers...)
			if d := diffTrees(describeTree(t, root), tc.want); d != "" {
				t.Errorf("tree differs:\n%s", d)
			}
		})
	}
	t.Run("hardlinks share an inode", func(t *testing.T) {
		root := t.TempDir()
		extractAll(t, root, ApplyWhiteouts, buildTar(t, regEnt("a", "x", 0o644), linkEnt("b", "a")))
		a, err := os.Stat(filepath.Join(root, "a"))
		mustDo(t, err)
		b, err := os.Stat(filepath.Join(root, "b"))
		mustDo(t, err)
		if !os.SameFile(a, b) {
			t.Error("a and b are different files")
		}
	})
}

func TestExtractOwnership(t *testing.T) {
	needRoot(t)
	layer := func(t *testing.T) []byte {
		h := tar.Header{Typeflag: tar.TypeReg, Name: "suid", Mode: 0o4755, Uid: 1000, Gid: 1000, Size: 1, ModTime: time.Unix(1, 0)}
		d := tar.Header{Typeflag: tar.TypeChar, Name: "null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: time.Unix(1, 0)}
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		mustDo(t, tw.WriteHeader(&h))
		_, err := tw.Write([]byte("x"))
		mustDo(t, err)
		mustDo(t, tw.WriteHeader(&d))
		mustDo(t, tw.Close())
		return buf.Bytes()
	}
	tests := []struct {
		name      string
		opts      ExtractOptions
		wantUID   int
		wantDev   bool
		wantWarns []string
	}{
		{"as root", ExtractOptions{}, 1000, true, nil},
		{"no same owner", ExtractOptions{NoSameOwner: true}, 0, true, nil},
		{"rootless skips devices", ExtractOptions{Rootless: true}, 1000, false, []string{"src: null: device node 1:3 not created"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			var warns []string
			tc.opts.Warn = func(m string) { warns = append(warns, m) }
			tc.opts.Source = "src"
			mustDo(t, Extract(context.Background(), bytes.NewReader(layer(t)), root, tc.opts))
			var st unix.Stat_t
			mustDo(t, unix.Lstat(filepath.Join(root, "suid"), &st))
			if int(st.Uid) != tc.wantUID || st.Mode&0o7777 != 0o4755 {
				t.Errorf("suid: uid %d mode %#o, want %d and 04755", st.Uid, st.Mode&0o7777, tc.wantUID)
			}
			_, err := os.Lstat(filepath.Join(root, "null"))
			if (err == nil) != tc.wantDev {
				t.Errorf("device exists = %v, want %v", err == nil, tc.wantDev)
			}
			if len(warns) != len(tc.wantWarns) {
				t.Fatalf("warnings %q, want %q", warns, tc.wantWarns)
			}
			for i := range warns {
				if !strings.HasPrefix(warns[i], tc.wantWarns[i]) {
					t.Errorf("warning %q, want %q...", warns[i], tc.wantWarns[i])
				}
			}
		})
	}
}

// TestExtractHardlinkHeader checks that a hardlink entry's header applies
// to the inode it shares with its target, as docker's extractor does (the
// last header wins): owner, mode and mtime, and for a link to a symlink
// only the owner.
func TestExtractHardlinkHeader(t *testing.T) {
	needRoot(t)
	hdr := func(typ byte, name, link string, mode int64, uid, gid int, mtime int64, body string) ent {
		return ent{hdr: tar.Header{Typeflag: typ, Name: name, Linkname: link, Mode: mode, Uid: uid, Gid: gid,
			ModTime: time.Unix(mtime, 0), Size: int64(len(body))}, body: body}
	}
	layer := sqTar(t, // keeps the owners
		hdr(tar.TypeReg, "target", "", 0o644, 1234, 5678, 1500000000, "shared\n"),
		hdr(tar.TypeLink, "link", "target", 0o600, 42, 43, 1700000000, ""),
		hdr(tar.TypeSymlink, "sym", "target", 0o777, 7, 7, 1600000000, ""),
		hdr(tar.TypeLink, "symlink-hard", "sym", 0o600, 9, 9, 1700000000, ""))
	root := t.TempDir()
	mustDo(t, Extract(context.Background(), bytes.NewReader(layer), root, ExtractOptions{}))
	for _, tc := range []struct {
		name           string
		uid, gid, mode uint32
		mtime          int64
	}{
		{"target", 42, 43, 0o600, 1700000000},
		{"link", 42, 43, 0o600, 1700000000},
		{"sym", 9, 9, 0o777, 1600000000},
		{"symlink-hard", 9, 9, 0o777, 1600000000},
	} {
		var st unix.Stat_t
		mustDo(t, unix.Lstat(filepath.Join(root, tc.name), &st))
		if st.Uid != tc.uid || st.Gid != tc.gid || st.Mode&0o7777 != tc.mode || st.Mtim.Sec != tc.mtime {
			t.Errorf("%s: %d:%d %#o mtime %d, want %d:%d %#o mtime %d", tc.name,
				st.Uid, st.Gid, st.Mode&0o7777, st.Mtim.Sec, tc.uid, tc.gid, tc.mode, tc.mtime)
		}
	}
}

func TestExtractCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Extract(ctx, bytes.NewReader(buildTar(t, regEnt("f", "x", 0o644))), t.TempDir(), ExtractOptions{Source: "L"})
	if err == nil || !strings.Contains(err.Error(), "context canceled") || !strings.Contains(err.Error(), "L") {
		t.Fatalf("err = %v", err)
	}
}

// TestExtractContained feeds hostile layers to Extract. Each must either fail
// or stay inside root; in every case nothing outside root may appear or
// change. root's parent holds only root and a sentinel file, which the
// layers aim at.
func TestExtractContained(t *testing.T) {
	type check func(t *testing.T, tmp, root string)
	exists := func(rel string) check {
		return func(t *testing.T, tmp, root string) {
			rel := strings.ReplaceAll(rel, "<tmp>", tmp)
			if _, err := os.Lstat(filepath.Join(root, rel)); err != nil {
				t.Errorf("want %s inside root: %v", rel, err)
			}
		}
	}
	isFile := func(rel string) check {
		return func(t *testing.T, tmp, root string) {
			rel := strings.ReplaceAll(rel, "<tmp>", tmp)
			fi, err := os.Lstat(filepath.Join(root, rel))
			if err != nil || !fi.Mode().IsRegular() {
				t.Errorf("want regular file %s inside root: %v %v", rel, fi, err)
			}
		}
	}
	const (
		fail    = "error"
		contain = "contained"
	)
	// Layers may name the absolute host path of root's parent: "<tmp>".
	tests := []struct {
		name   string
		layers [][]ent
		want   string
		check  check
	}{
		{"dotdot", [][]ent{{regEnt("../evil", "x", 0o644)}}, fail, nil},
		{"dotdot to sentinel", [][]ent{{regEnt("../sentinel", "x", 0o644)}}, fail, nil},
		{"inner dotdot", [][]ent{{regEnt("a/../../evil", "x", 0o644)}}, fail, nil},
		{"absolute name", [][]ent{{regEnt("/abs/evil", "x", 0o644)}}, contain, isFile("abs/evil")},
		{"absolute host path", [][]ent{{regEnt("<tmp>/sentinel", "x", 0o644)}}, contain, isFile("<tmp>/sentinel")},
		{"symlink to host dir, then a file under it", [][]ent{{symEnt("l", "<tmp>"), regEnt("l/evil", "x", 0o644)}}, contain, isFile("<tmp>/evil")},
		{"symlink to host dir, then overwrite through it", [][]ent{{symEnt("l", "<tmp>"), regEnt("l/sentinel", "x", 0o644)}}, contain, isFile("<tmp>/sentinel")},
		{"symlink to .., then a file under it", [][]ent{{symEnt("l", ".."), regEnt("l/evil", "x", 0o644)}}, contain, isFile("evil")},
		{"symlink to ../../.., then dirs under it", [][]ent{{symEnt("l", "../../.."), dirEnt("l/d/", 0o777), regEnt("l/d/evil", "x", 0o644)}}, contain, isFile("d/evil")},
		{"symlink to /", [][]ent{{symEnt("l", "/"), regEnt("l/evil", "x", 0o644)}}, contain, isFile("evil")},
		{"nested symlinks", [][]ent{{symEnt("a", "b/c"), dirEnt("b/", 0o755), symEnt("b/c", "../.."), regEnt("a/evil", "x", 0o644)}}, contain, isFile("evil")},
		{"symlink loop", [][]ent{{symEnt("a", "b"), symEnt("b", "a"), regEnt("a/evil", "x", 0o644)}}, fail, nil},
		{"symlinked parent from an earlier layer", [][]ent{{symEnt("d", "<tmp>")}, {regEnt("d/evil", "x", 0o644), regEnt("d/sentinel", "x", 0o644)}}, contain, isFile("<tmp>/evil")},
		{"dir entry over symlink to host dir", [][]ent{{symEnt("d", "<tmp>")}, {dirEnt("d/", 0o777)}}, contain, exists("d")},
		{"file entry over symlink to host file", [][]ent{{symEnt("f", "<tmp>/sentinel"), regEnt("f", "x", 0o644)}}, contain, isFile("f")},
		{"hardlink to host path", [][]ent{{linkEnt("h", "<tmp>/sentinel")}}, fail, nil},
		{"hardlink to /etc/passwd", [][]ent{{linkEnt("h", "/etc/passwd")}}, fail, nil},
		{"hardlink to ../sentinel", [][]ent{{linkEnt("h", "../sentinel")}}, fail, nil},
		{"hardlink through symlink", [][]ent{{symEnt("l", "<tmp>"), linkEnt("h", "l/sentinel")}}, fail, nil},
		{"hardlink through symlink to ..", [][]ent{{symEnt("l", ".."), linkEnt("h", "l/sentinel")}}, fail, nil},
		{"hardlink to a symlink pointing out", [][]ent{{symEnt("l", "<tmp>/sentinel"), linkEnt("h", "l"), regEnt("h", "x", 0o644)}}, contain, isFile("h")},
		{"whiteout above root", [][]ent{{regEnt("../.wh.sentinel", "", 0)}}, fail, nil},
		{"whiteout through symlink to host dir", [][]ent{{symEnt("l", "<tmp>")}, {regEnt("l/.wh.sentinel", "", 0), regEnt("l/.wh.root", "", 0)}}, contain, nil},
		{"whiteout through symlink to ..", [][]ent{{symEnt("l", "..")}, {regEnt("l/.wh.sentinel", "", 0), regEnt("l/.wh.root", "", 0)}}, contain, nil},
		{"opaque through symlink to host dir", [][]ent{{symEnt("l", "<tmp>")}, {regEnt("l/.wh..wh..opq", "", 0)}}, contain, nil},
		{"whiteout of a symlink to host dir", [][]ent{{symEnt("l", "<tmp>")}, {regEnt(".wh.l", "", 0)}}, contain, nil},
		{"replace a symlinked dir's tree", [][]ent{{symEnt("l", "<tmp>")}, {regEnt("l", "x", 0o644)}}, contain, isFile("l")},
		{"invalid whiteout names", [][]ent{{regEnt(".wh..", "", 0)}}, fail, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			root := filepath.Join(tmp, "root")
			sentinel := filepath.Join(tmp, "sentinel")
			mustDo(t, os.Mkdir(root, 0o755))
			mustWrite(t, sentinel, "keep", 0o600)
			old := time.Unix(1234567890, 0)
			mustDo(t, os.Chtimes(sentinel, old, old))
			mustDo(t, os.Chtimes(tmp, old, old))
			tmpBefore, err := os.Lstat(tmp)
			mustDo(t, err)

			var err2 error
			for i, l := range tc.layers {
				var es []ent
				for _, e := range l {
					e.hdr.Name = strings.ReplaceAll(e.hdr.Name, "<tmp>", tmp)
					e.hdr.Linkname = strings.ReplaceAll(e.hdr.Linkname, "<tmp>", tmp)
					es = append(es, e)
				}
				err2 = Extract(context.Background(), bytes.NewReader(buildTar(t, es...)), root, ExtractOptions{Source: fmt.Sprintf("evil%d", i)})
				if err2 != nil {
					break
				}
			}
			switch {
			case tc.want == fail && err2 == nil:
				t.Errorf("Extract succeeded, want an error")
			case tc.want == contain && err2 != nil:
				t.Errorf("Extract: %v", err2)
			case err2 != nil && !strings.Contains(err2.Error(), "evil"):
				t.Errorf("error %q does not name the layer", err2)
			}
			if tc.check != nil && err2 == nil {
				tc.check(t, tmp, root)
			}

			ents, err := os.ReadDir(tmp)
			mustDo(t, err)
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			if strings.Join(names, " ") != "root sentinel" {
				t.Errorf("root's parent holds %q, want just root and sentinel", names)
			}
			fi, err := os.Lstat(sentinel)
			if err != nil {
				t.Fatalf("sentinel: %v", err)
			}
			b, _ := os.ReadFile(sentinel)
			st := fi.Sys().(*syscall.Stat_t)
			if string(b) != "keep" || fi.Mode() != 0o600 || !fi.ModTime().Equal(old) || st.Nlink != 1 || int(st.Uid) != os.Getuid() {
				t.Errorf("sentinel changed: %q %v %v nlink %d uid %d", b, fi.Mode(), fi.ModTime(), st.Nlink, st.Uid)
			}
			tmpAfter, err := os.Lstat(tmp)
			mustDo(t, err)
			if !tmpAfter.ModTime().Equal(tmpBefore.ModTime()) || tmpAfter.Mode() != tmpBefore.Mode() {
				t.Errorf("root's parent changed: %v %v -> %v %v", tmpBefore.Mode(), tmpBefore.ModTime(), tmpAfter.Mode(), tmpAfter.ModTime())
			}
		})
	}
}

// corruptSize sets the size field of the first header of a tar to -1
// (base-256) and fixes the checksum.
func corruptSize(b []byte) []byte {
	b = bytes.Clone(b)
	for i := 124; i < 136; i++ {
		b[i] = 0xff
	}
	for i := 148; i < 156; i++ {
		b[i] = ' '
	}
	sum := 0
	for _, c := range b[:512] {
		sum += int(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

func TestExtractMalformed(t *testing.T) {
	good := buildTar(t, regEnt("dir/file", strings.Repeat("data", 1000), 0o644), regEnt("other", "o", 0o644))
	garbage := bytes.Repeat([]byte("not a tar header "), 64)
	tests := []struct {
		name  string
		input []byte
	}{
		{"truncated in a file body", good[:512+2000]},
		{"truncated in a header", good[:100]},
		{"garbage header", garbage},
		{"garbage after an entry", append(bytes.Clone(good[:512+4096]), garbage...)},
		{"negative size", corruptSize(good)},
		{"unknown type", buildTar(t, ent{hdr: tar.Header{Typeflag: 'Z', Name: "z"}})},
		{"hardlink to nothing", buildTar(t, linkEnt("h", "missing"))},
		{"file under a file", buildTar(t, regEnt("f", "x", 0o644), regEnt("f/g", "y", 0o644))},
		{"non-directory root", buildTar(t, regEnt(".", "", 0o644))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Extract(context.Background(), bytes.NewReader(tc.input), t.TempDir(), ExtractOptions{Source: "sha256:feedface"})
			if err == nil || !strings.Contains(err.Error(), "sha256:feedface") {
				t.Fatalf("err = %v, want an error naming the layer", err)
			}
			t.Log(err)
		})
	}
}

package layers

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/layers/layertest"
)

// sqTar writes the entries of a squash fixture layer as a tar; unlike
// buildTar, it keeps their owners.
func sqTar(t testing.TB, es ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := e.hdr
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1600000000, 0)
		}
		h.Format = tar.FormatPAX
		mustDo(t, tw.WriteHeader(&h))
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	mustDo(t, tw.Close())
	return buf.Bytes()
}

// marker is an empty whiteout marker entry.
func marker(name string) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: time.Unix(1600000500, 0)}}
}

// with returns e changed by fn.
func with(e ent, fn func(h *tar.Header)) ent {
	fn(&e.hdr)
	return e
}

// storeLayers stores each tar as a layer.
func storeLayers(t testing.TB, s *Store, tars [][]byte) []v1.Layer {
	t.Helper()
	var out []v1.Layer
	for _, b := range tars {
		d, err := s.Blobs().CommitTar(context.Background(), bytes.NewReader(b), CommitOptions{})
		mustDo(t, err)
		out = append(out, s.Blobs().Layer(d))
	}
	return out
}

// describeFlat flattens ls and describes every path of the result: type,
// owner, mode, mtime, xattrs, content or link target, and for hardlinked
// files the names of the whole link group.
func describeFlat(t testing.TB, ls []v1.Layer) map[string]string {
	t.Helper()
	var buf bytes.Buffer
	mustDo(t, Flatten(context.Background(), &buf, ls))
	type file struct {
		hdr  *tar.Header
		body []byte
	}
	files := map[string]file{}
	parent := map[string]string{} // hardlink union-find
	find := func(n string) string {
		for parent[n] != "" && parent[n] != n {
			n = parent[n]
		}
		return n
	}
	tr := tar.NewReader(&buf)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		mustDo(t, err)
		body, err := io.ReadAll(tr)
		mustDo(t, err)
		name := strings.TrimSuffix(hdr.Name, "/")
		files[name] = file{hdr, body}
		if hdr.Typeflag == tar.TypeLink {
			parent[find(name)] = find(strings.TrimSuffix(hdr.Linkname, "/"))
		}
	}
	groups := map[string][]string{}
	for n, f := range files {
		if f.hdr.Typeflag == tar.TypeLink || parent[n] != "" {
			root := find(n)
			groups[root] = append(groups[root], n)
		}
	}
	out := map[string]string{}
	for n, f := range files {
		h, body := f.hdr, f.body
		var group []string
		if h.Typeflag == tar.TypeLink || parent[n] != "" {
			group = groups[find(n)]
			sort.Strings(group)
			if t := files[find(n)]; t.hdr != nil {
				h, body = t.hdr, t.body
			}
		}
		var xattrs []string
		for k, v := range h.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") {
				xattrs = append(xattrs, strings.TrimPrefix(k, "SCHILY.xattr.")+"="+v)
			}
		}
		sort.Strings(xattrs)
		d := fmt.Sprintf("%c %d:%d %04o %d xattrs=%v", h.Typeflag, h.Uid, h.Gid, h.Mode&0o7777, h.ModTime.Unix(), xattrs)
		switch h.Typeflag {
		case tar.TypeReg:
			d += fmt.Sprintf(" %q", body)
		case tar.TypeSymlink:
			d += " -> " + h.Linkname
		}
		if len(group) > 1 {
			d += fmt.Sprintf(" links=%v", group)
		}
		out[n] = d
	}
	return out
}

// markersOf lists the whiteout markers in the layer l.
func markersOf(t testing.TB, l v1.Layer) []string {
	t.Helper()
	rc, err := l.Uncompressed()
	mustDo(t, err)
	defer rc.Close()
	var out []string
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		mustDo(t, err)
		if strings.HasPrefix(path.Base(hdr.Name), whiteoutPrefix) {
			out = append(out, hdr.Name)
		}
	}
	sort.Strings(out)
	return out
}

func TestSquash(t *testing.T) {
	dir := func(name string) ent { return dirEnt(name, 0o755) }
	file := func(name, body string) ent { return regEnt(name, body, 0o644) }
	symlink := func(name, target string) ent {
		return with(symEnt(name, target), func(h *tar.Header) { h.Uid, h.Gid = os.Getuid(), os.Getgid() })
	}
	cases := []struct {
		name string
		base [][]byte // layers kept below
		top  [][]byte // layers squashed
		// markers are the whiteouts the squashed layer must keep.
		markers []string
	}{
		{
			name: "file replaced",
			base: [][]byte{sqTar(t, dir("etc/"), file("etc/a", "base"), file("etc/b", "b"))},
			top: [][]byte{
				sqTar(t, dir("etc/"), file("etc/a", "one")),
				sqTar(t, dir("etc/"), with(file("etc/a", "two"), func(h *tar.Header) {
					h.Mode, h.Uid, h.Gid, h.ModTime = 0o600, 1000, 1001, time.Unix(1700000000, 0)
				})),
			},
		},
		{
			name: "file deleted by a later layer",
			base: [][]byte{sqTar(t, dir("etc/"), file("etc/a", "a"), file("etc/b", "b"))},
			top: [][]byte{
				sqTar(t, dir("etc/"), file("etc/c", "c")),
				sqTar(t, dir("etc/"), marker("etc/.wh.a")),
			},
			markers: []string{"etc/.wh.a"},
		},
		{
			name: "directory made opaque then refilled",
			base: [][]byte{sqTar(t, dir("d/"), file("d/x", "x"), dir("d/sub/"), file("d/sub/y", "y"))},
			top: [][]byte{
				sqTar(t, dir("d/"), file("d/z", "z")),
				sqTar(t, dir("d/"), marker("d/.wh..wh..opq"), file("d/new1", "1")),
				sqTar(t, dir("d/"), file("d/new2", "2")),
			},
			markers: []string{"d/.wh..wh..opq"},
		},
		{
			name: "file added then deleted within the range",
			base: [][]byte{sqTar(t, dir("a/"), file("a/old", "old"))},
			top: [][]byte{
				sqTar(t, dir("a/"), file("a/tmp", "junk"), file("a/keep", "k")),
				sqTar(t, dir("a/"), marker("a/.wh.tmp")),
			},
			markers: []string{"a/.wh.tmp"},
		},
		{
			name: "directory added then deleted over a lower one",
			base: [][]byte{sqTar(t, dir("d/"), file("d/old", "old"))},
			top: [][]byte{
				sqTar(t, dir("d/"), file("d/a", "a"), dir("d/e/"), file("d/e/f", "f")),
				sqTar(t, marker(".wh.d")),
			},
			markers: []string{".wh.d"},
		},
		{
			name: "directory deleted then recreated",
			base: [][]byte{sqTar(t, dir("d/"), file("d/old", "old"))},
			top: [][]byte{
				sqTar(t, marker(".wh.d")),
				sqTar(t, dir("d/"), file("d/new", "new")),
			},
			markers: []string{"d/.wh..wh..opq"},
		},
		{
			name: "directory replaced by a file then by a directory",
			base: [][]byte{sqTar(t, dir("d/"), file("d/old", "old"))},
			top: [][]byte{
				sqTar(t, file("d", "a file")),
				sqTar(t, dir("d/"), file("d/new", "new")),
			},
			markers: []string{"d/.wh..wh..opq"},
		},
		{
			name: "whiteout and re-add in one layer",
			base: [][]byte{sqTar(t, dir("d/"), file("d/f", "old"))},
			top: [][]byte{
				sqTar(t, dir("d/"), file("d/g", "g")),
				sqTar(t, dir("d/"), marker("d/.wh.f"), file("d/f", "new")),
			},
		},
		{
			name: "hardlinks",
			top: [][]byte{
				sqTar(t, dir("bin/"), file("bin/busybox", "bb"), linkEnt("bin/sh", "bin/busybox"),
					file("bin/a", "a"), linkEnt("bin/b", "bin/a")),
				sqTar(t, dir("bin/"), file("bin/busybox", "bb2"), linkEnt("bin/c", "bin/busybox")),
			},
		},
		{
			// Symlinks are owned by the test's user: an unprivileged
			// process can record no other owner for them.
			name: "symlinks",
			base: [][]byte{sqTar(t, dir("lib/"), file("lib/old", "old"), symlink("cur", "v1"))},
			top: [][]byte{
				sqTar(t, symlink("lib", "usr/lib"), dir("usr/"), dir("usr/lib/"), file("usr/lib/x", "x"),
					symlink("dangling", "/nowhere")),
				sqTar(t, dir("lib/"), file("lib/new", "new"), symlink("cur", "v2")),
			},
			markers: []string{"lib/.wh..wh..opq"},
		},
		{
			name: "owners, modes, mtimes and xattrs",
			base: [][]byte{sqTar(t, dir("usr/"), dir("usr/bin/"))},
			top: [][]byte{
				sqTar(t, dir("usr/"), dir("usr/bin/"),
					with(file("usr/bin/su", "su"), func(h *tar.Header) {
						h.Mode, h.Uid, h.Gid = 0o4755, 0, 0
						h.PAXRecords = map[string]string{"SCHILY.xattr.user.test": "v"}
					}),
					with(dir("srv/"), func(h *tar.Header) { h.Mode, h.Uid, h.Gid = 0o1770, 1234, 5678 })),
				sqTar(t, with(dir("srv/"), func(h *tar.Header) {
					h.Mode, h.Uid, h.Gid, h.ModTime = 0o750, 1234, 5678, time.Unix(1650000000, 0)
				}), with(file("srv/data", "d"), func(h *tar.Header) { h.Uid, h.Gid = 1234, 5678 })),
			},
		},
	}
	ctx := context.Background()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := OpenStore(ctx, t.TempDir())
			mustDo(t, err)
			defer s.Close()
			base := storeLayers(t, s, tc.base)
			top := storeLayers(t, s, tc.top)
			all := append(slices.Clone(base), top...)
			want := describeFlat(t, all)
			var warns []string
			opts := SquashOptions{Warn: func(m string) { warns = append(warns, m) }}

			d, err := s.Squash(ctx, top, opts)
			mustDo(t, err)
			sq := s.Blobs().Layer(d)
			if diff := diffTrees(describeFlat(t, append(slices.Clone(base), sq)), want); diff != "" {
				t.Errorf("base + squashed differs from base + layers:\n%s", diff)
			}
			if got := markersOf(t, sq); !slices.Equal(got, tc.markers) {
				t.Errorf("whiteouts in the squashed layer: got %q, want %q", got, tc.markers)
			}
			again, err := s.Squash(ctx, top, opts)
			mustDo(t, err)
			if again.Digest != d.Digest {
				t.Errorf("squashing twice gave %s then %s", d.Digest, again.Digest)
			}

			opts.All = true
			d, err = s.Squash(ctx, all, opts)
			mustDo(t, err)
			sq = s.Blobs().Layer(d)
			if diff := diffTrees(describeFlat(t, []v1.Layer{sq}), want); diff != "" {
				t.Errorf("all squashed differs from the layers:\n%s", diff)
			}
			if got := markersOf(t, sq); len(got) != 0 {
				t.Errorf("whiteouts in the all-squashed layer: %q", got)
			}
			if len(warns) > 0 {
				t.Errorf("warnings: %q", warns)
			}
		})
	}
}

func TestSquashErrors(t *testing.T) {
	ctx := context.Background()
	s, err := OpenStore(ctx, t.TempDir())
	mustDo(t, err)
	defer s.Close()
	if _, err := s.Squash(ctx, nil, SquashOptions{}); err == nil {
		t.Error("squashing no layers: no error")
	}
	// A hardlink to a file below the squashed range cannot be kept.
	top := storeLayers(t, s, [][]byte{sqTar(t, linkEnt("b", "a"))})
	if _, err := s.Squash(ctx, top, SquashOptions{}); err == nil || !strings.Contains(err.Error(), "hard link target") {
		t.Errorf("hardlink out of the range: got %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	top = storeLayers(t, s, [][]byte{sqTar(t, regEnt("f", "x", 0o644))})
	if _, err := s.Squash(cctx, top, SquashOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: got %v", err)
	}
}

// TestSquashUnprivileged runs TestSquash as an unprivileged user (nobody):
// whiteouts are character devices it may still create, and owners it
// cannot set are recorded for WriteTar.
func TestSquashUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		layertest.SkipOrFail(t, "needs root to switch to an unprivileged user (CI runs the tests as root)")
	}
	setpriv := layertest.RequireTool(t, "setpriv")
	work, err := os.MkdirTemp("", "ibuild-squash-")
	mustDo(t, err)
	defer forceRemoveAll(work)
	bin, err := os.ReadFile(os.Args[0])
	mustDo(t, err)
	mustDo(t, os.WriteFile(filepath.Join(work, "layers.test"), bin, 0o755))
	mustDo(t, os.Mkdir(filepath.Join(work, "tmp"), 0o755))
	mustDo(t, os.Chown(filepath.Join(work, "tmp"), 65534, 65534))
	mustDo(t, os.Chmod(work, 0o755))
	cmd := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
		filepath.Join(work, "layers.test"), "-test.run", "^TestSquash$", "-test.count=1", "-test.v")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "TMPDIR=" + filepath.Join(work, "tmp"), "HOME=" + work}
	cmd.Dir = filepath.Join(work, "tmp")
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestSquash ")) {
		t.Fatalf("TestSquash as nobody: %v\n%s", err, out)
	}
}

package builder

import (
	"archive/tar"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ibuild/ibuild/layers"
)

// filesTar is a tar archive of one-byte regular files named names.
func filesTar(t *testing.T, names ...string) string {
	t.Helper()
	var entries []any
	for _, n := range names {
		entries = append(entries, &tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644}, "x")
	}
	return string(tarOf(t, entries...))
}

// TestWhiteoutNamesRefused checks that a file whose name starts with ".wh."
// never reaches a layer, where it would delete a file of the image below:
// COPY and ADD refuse such a context file, directory, destination or
// archive entry, naming it.
func TestWhiteoutNamesRefused(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name       string
		dockerfile string
		files      map[string]string
		want       []string
	}{
		{"context file", "COPY .wh.secret /app/\n", map[string]string{".wh.secret": "s"},
			[]string{"Dockerfile:2", ".wh.secret (in the build context)", "/app/.wh.secret", `starting with ".wh." cannot be carried in an OCI layer`}},
		{"file in a copied directory", "COPY app/ /app/\n", map[string]string{"app/ok": "ok", "app/sub/.wh.passwd": "p"},
			[]string{"app/sub/.wh.passwd (in the build context)", "/app/sub/.wh.passwd"}},
		{"directory in the context", "COPY . /srv/\n", map[string]string{"x/.wh.etc/f": "f"},
			[]string{"x/.wh.etc (in the build context)", "/srv/x/.wh.etc"}},
		{"destination name", "COPY f /etc/.wh.passwd\n", map[string]string{"f": "f"},
			[]string{"f (in the build context)", "/etc/.wh.passwd"}},
		{"destination directory", "COPY f /.wh.etc/\n", map[string]string{"f": "f"},
			[]string{"/.wh.etc/f"}},
		{"ADD archive entry", "ADD a.tar /d/\n", map[string]string{"a.tar": filesTar(t, "ok", "etc/.wh.passwd")},
			[]string{"Dockerfile:2", "a.tar", "etc/.wh.passwd", "cannot be carried"}},
		{"heredoc", "COPY <<.wh.x /d/\nhello\n.wh.x\n", nil,
			[]string{"/d/.wh.x"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := newStore(t)
			files := map[string]string{"Dockerfile": "FROM scratch\n" + tc.dockerfile}
			for k, v := range tc.files {
				files[k] = v
			}
			dir := writeContext(t, files)
			_, err := Build(ctx, Options{Store: st, ContextDir: dir})
			if err == nil {
				t.Fatal("the build succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			var wn *layers.WhiteoutNameError
			if !errors.As(err, &wn) {
				t.Errorf("error %v is not a *layers.WhiteoutNameError", err)
			}
		})
	}
}

// TestWhiteoutNamesFromCommands checks the same for files the image's own
// commands create: a RUN step (over overlay, and over the unpacked root
// of a vfs store), `ibuild copy` and a write through `ibuild mount`, which
// is refused while the container is still mounted, so nothing is lost.
func TestWhiteoutNamesFromCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("runs RUN steps")
	}
	ctx := context.Background()
	for _, snap := range []string{layers.SnapshotterOverlay, layers.SnapshotterVFS} {
		t.Run("RUN on "+snap, func(t *testing.T) {
			st, err := layers.OpenStore(ctx, filepath.Join(t.TempDir(), "root"), layers.WithSnapshotter(snap))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			busyboxBase(t, st)
			dir := writeContext(t, map[string]string{"Dockerfile": "FROM busybox:1\nRUN touch /tmp-ok && mkdir -p /var/x && touch /var/x/.wh.passwd\n"})
			_, err = Build(ctx, Options{Store: st, ContextDir: dir})
			if err == nil {
				t.Fatal("a RUN step that creates /var/x/.wh.passwd succeeded")
			}
			for _, w := range []string{"Dockerfile:2", "the command created /var/x/.wh.passwd", "cannot be carried in an OCI layer", "same RUN step"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	t.Run("working container", func(t *testing.T) {
		st := newStore(t)
		busyboxBase(t, st)
		c, err := From(ctx, st, "busybox:1", FromOptions{Name: "wh"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		src := filepath.Join(t.TempDir(), ".wh.hosts")
		writeFile(t, src, "x", 0o644)
		err = c.Copy(ctx, CopyOptions{Sources: []string{src}, Dest: "/etc/"})
		if err == nil || !strings.Contains(err.Error(), ".wh.hosts") || !strings.Contains(err.Error(), "/etc/.wh.hosts") {
			t.Errorf("copy of a .wh. file: %v, want an error naming it", err)
		}

		mp, err := c.Mount(ctx, MountOptions{})
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(mp, "etc", ".wh.group"), "through the mount", 0o644)
		err = c.Unmount(ctx)
		if err == nil || !strings.Contains(err.Error(), "/etc/.wh.group") || !strings.Contains(err.Error(), "stays mounted") {
			t.Fatalf("umount with a .wh. file: %v, want an error naming it", err)
		}
		// Still mounted: the file can be renamed, and then it is kept.
		if err := os.Rename(filepath.Join(mp, "etc", ".wh.group"), filepath.Join(mp, "etc", "wh.group")); err != nil {
			t.Fatalf("the container is no longer mounted after the refused umount: %v", err)
		}
		if err := c.Unmount(ctx); err != nil {
			t.Fatal(err)
		}
		rootfs, err := c.RootFS(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if b, err := rootfs.ReadFile("/etc/wh.group"); err != nil || string(b) != "through the mount" {
			t.Errorf("/etc/wh.group after umount: %q, %v", b, err)
		}
		if b, err := rootfs.ReadFile("/etc/group"); err != nil || len(b) == 0 {
			t.Errorf("/etc/group of the image: %q, %v", b, err)
		}
	})
}

package builder

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"golang.org/x/sys/unix"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ibuild/ibuild/layers/layertest"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
)

var update = flag.Bool("update", false, "rewrite want.golden files")

// caseOptions is a fixture's options.json.
type caseOptions struct {
	BuildArgs map[string]string `json:"buildArgs"`
	Target    string            `json:"target"`
	Platform  string            `json:"platform"`
	Labels    map[string]string `json:"labels"`
	// IgnoreFile is Options.IgnoreFile, relative to the fixture.
	IgnoreFile string `json:"ignoreFile"`
	// Busybox makes busybox:1 (see busyboxBase) available to the
	// fixture, whose RUN steps then need root.
	Busybox bool `json:"busybox"`
}

// setups prepare fixtures whose inputs git cannot hold (archives made with
// the system's tools, modes).
var setups = map[string]func(t *testing.T, dir string){
	"bad-dockerignore-fifo": func(t *testing.T, dir string) {
		// A named pipe would block a plain read forever.
		if err := unix.Mkfifo(filepath.Join(dir, ".dockerignore"), 0o644); err != nil {
			t.Fatal(err)
		}
	},
	"bad-long-line": func(t *testing.T, dir string) {
		p := filepath.Join(dir, "Dockerfile")
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, p, strings.Replace(string(data), "LONG", strings.Repeat("y", 10_000_000), 1), 0o644)
	},
	"from-image-without-path": func(t *testing.T, dir string) {
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(tarOf(t, &tar.Header{Typeflag: tar.TypeReg, Name: "hello", Mode: 0o644}, "hi\n"))), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		img, err := mutate.AppendLayers(empty.Image, layer)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf = cf.DeepCopy()
		hp := HostPlatform()
		cf.OS, cf.Architecture, cf.Variant = hp.OS, hp.Architecture, hp.Variant
		cf.Config = v1.Config{Env: []string{"A=1"}, Cmd: []string{"/hello"}}
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
		if err := registry.WriteOCILayout(context.Background(), filepath.Join(dir, "layout"), img, nil, "nopath:1"); err != nil {
			t.Fatal(err)
		}
	},
	"add-tar-hardlink-owner": func(t *testing.T, dir string) {
		mtime := time.Unix(1700000000, 0)
		data := tarOf(t,
			&tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o755, ModTime: mtime}, "",
			&tar.Header{Typeflag: tar.TypeReg, Name: "d/target", Mode: 0o644, Uid: 1234, Gid: 5678, ModTime: mtime}, "shared\n",
			&tar.Header{Typeflag: tar.TypeLink, Name: "d/link", Linkname: "d/target", Mode: 0o600, Uid: 42, Gid: 43, ModTime: mtime}, "",
			&tar.Header{Typeflag: tar.TypeSymlink, Name: "d/sym", Linkname: "target", Mode: 0o777, Uid: 7, Gid: 7, ModTime: mtime}, "",
			&tar.Header{Typeflag: tar.TypeLink, Name: "d/symlink-hard", Linkname: "d/sym", Mode: 0o777, Uid: 9, Gid: 9, ModTime: mtime}, "")
		writeFile(t, filepath.Join(dir, "links.tar"), string(data), 0o644)
	},
	"dockerignore-excluded-dirs": func(t *testing.T, dir string) {
		mustMkdir(t, filepath.Join(dir, "empty-ex"))
		if err := os.Chmod(filepath.Join(dir, "keep", "a"), 0o700); err != nil {
			t.Fatal(err)
		}
	},
	"dockerignore-symlink-outside": func(t *testing.T, dir string) {
		outside := filepath.Join(filepath.Dir(dir), "outside-ignore")
		writeFile(t, outside, "secret.txt\n", 0o644)
		if err := os.Symlink(outside, filepath.Join(dir, ".dockerignore")); err != nil {
			t.Fatal(err)
		}
	},
	"copy-parents-modes": func(t *testing.T, dir string) {
		for _, d := range []string{"foo1", "foo1/foo2"} {
			if err := os.Chmod(filepath.Join(dir, d), 0o700); err != nil {
				t.Fatal(err)
			}
		}
	},
	"add-archives": func(t *testing.T, dir string) {
		ctx := filepath.Join(dir, "ctx")
		src := filepath.Join(dir, "src")
		mustMkdir(t, filepath.Join(src, "pkg", "sub"))
		writeFile(t, filepath.Join(src, "pkg", "hello.txt"), "hello from an archive\n", 0o644)
		writeFile(t, filepath.Join(src, "pkg", "sub", "tool.sh"), "#!/bin/sh\n", 0o755)
		if err := os.Symlink("hello.txt", filepath.Join(src, "pkg", "link")); err != nil {
			t.Fatal(err)
		}
		mustMkdir(t, ctx)
		for _, tool := range []string{"tar", "gzip", "bzip2", "xz", "zstd"} {
			layertest.RequireTool(t, tool)
		}
		// Deterministic archives, so the golden file holds on any machine.
		tarc := "tar --sort=name --mtime=@1700000000 --owner=0 --group=0 --numeric-owner -cf - pkg"
		for name, pipe := range map[string]string{
			"plain.tar":     tarc,
			"files.tar.gz":  tarc + " | gzip -n -9",
			"files.tar.bz2": tarc + " | bzip2 -9",
			"files.tar.xz":  tarc + " | xz -6",
			"files.tar.zst": tarc + " | zstd -q -3",
		} {
			run(t, src, "sh", "-c", "set -e; "+pipe+" > "+filepath.Join(ctx, name))
		}
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.Write([]byte("just gzip, no tar inside\n"))
		zw.Close()
		writeFile(t, filepath.Join(ctx, "not-an-archive.gz"), buf.String(), 0o644)
	},
}

// checks make assertions a golden file cannot: on the context after the
// build.
var checks = map[string]func(t *testing.T, dir string){
	"run-mount-buildah-options": func(t *testing.T, dir string) {
		// U chowned a copy: the context on the host is as it was.
		for _, p := range []string{"ctxdir", "ctxdir/f"} {
			fi, err := os.Lstat(filepath.Join(dir, p))
			if err != nil {
				t.Fatal(err)
			}
			if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != os.Getuid() || int(st.Gid) != os.Getgid() {
				t.Errorf("U changed the owner of the context's %s to %d:%d", p, st.Uid, st.Gid)
			}
		}
		if _, err := os.Lstat(filepath.Join(dir, "ctxdir", "new")); err == nil {
			t.Error("a write to a U,rw bind mount reached the context")
		}
	},
}

// tarOf makes an uncompressed tar of headers, each followed by its
// content.
func tarOf(t *testing.T, entries ...any) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := 0; i < len(entries); i += 2 {
		h := *entries[i].(*tar.Header)
		body := entries[i+1].(string)
		h.Size = int64(len(body))
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1700000000, 0)
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestBuildFixtures(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	buildBase(t, st)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Last-Modified", time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC).Format(http.TimeFormat))
		switch r.URL.Path {
		case "/download/file.txt":
			io.WriteString(w, "file content\n")
		case "/download/foo":
			io.WriteString(w, "foo\n")
		case "/download/sub/..": // no file name can be derived from it
			io.WriteString(w, "dot dot\n")
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()

	dirs, err := filepath.Glob("../testdata/dockerfiles/*")
	if err != nil {
		t.Fatal(err)
	}
	haveBusybox := false
	for _, caseDir := range dirs {
		name := filepath.Base(caseDir)
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), name)
			copyFixture(t, caseDir, dir)
			if setup := setups[name]; setup != nil {
				setup(t, dir)
			}
			var co caseOptions
			if data, err := os.ReadFile(filepath.Join(dir, "options.json")); err == nil {
				if err := json.Unmarshal(data, &co); err != nil {
					t.Fatal(err)
				}
			}
			if co.BuildArgs == nil {
				co.BuildArgs = map[string]string{}
			}
			co.BuildArgs["URL"] = srv.URL
			co.BuildArgs["CASEDIR"] = dir
			if co.Busybox && !haveBusybox {
				busyboxBase(t, st)
				haveBusybox = true
			}
			if _, err := os.Stat(filepath.Join(dir, "base.Dockerfile")); err == nil {
				if _, err := Build(ctx, Options{Store: st, ContextDir: dir, Dockerfile: filepath.Join(dir, "base.Dockerfile"), Tags: []string{name + "-base:1"}}); err != nil {
					t.Fatalf("base image: %v", err)
				}
			}
			tag := "fixture-" + name + ":1"
			opts := Options{
				Store: st, ContextDir: dir, Tags: []string{tag},
				BuildArgs: co.BuildArgs, Target: co.Target, Labels: co.Labels,
				StepOptions: StepOptions{
					Pull: registry.PullNever, // fixtures never reach a registry
					Now:  func() time.Time { return time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC) },
				},
			}
			if co.IgnoreFile != "" {
				opts.IgnoreFile = filepath.Join(dir, co.IgnoreFile)
			}
			if co.Platform != "" {
				p, err := ParsePlatforms(co.Platform)
				if err != nil {
					t.Fatal(err)
				}
				opts.Platforms = p
			}
			res, err := Build(ctx, opts)
			if want, rerr := os.ReadFile(filepath.Join(dir, "want-error")); rerr == nil {
				if err == nil {
					t.Fatalf("build succeeded, want an error")
				}
				msg := err.Error()
				for _, w := range strings.Split(strings.TrimSpace(string(want)), "\n") {
					w = strings.ReplaceAll(w, name+"/", dir+"/")
					if !strings.Contains(msg, w) {
						t.Errorf("error %q\ndoes not contain %q", msg, w)
					}
				}
				if _, lerr := st.Lookup(ctx, tag); lerr == nil {
					t.Errorf("a failed build left %s tagged", tag)
				}
				return
			}
			if err != nil {
				t.Fatalf("build: %v", err)
			}
			if err := validate.Image(res.Image); err != nil {
				t.Fatalf("validate built image: %v", err)
			}
			stored, err := st.Image(ctx, res.Digest)
			if err != nil {
				t.Fatal(err)
			}
			if err := validate.Image(stored); err != nil {
				t.Fatalf("validate stored image: %v", err)
			}
			if check := checks[name]; check != nil {
				check(t, dir)
			}
			got := dumpImage(t, stored)
			golden := filepath.Join(caseDir, "want.golden")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./builder -run TestBuildFixtures -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("image differs from %s:\n%s", golden, lineDiff(string(want), got))
			}
		})
	}
}

// buildBase builds testdata/base as localhost/testbase:1.
func buildBase(t *testing.T, st *layers.Store) {
	t.Helper()
	_, err := Build(context.Background(), Options{Store: st, ContextDir: "../testdata/base", Tags: []string{"testbase:1"}})
	if err != nil {
		t.Fatalf("build test base image: %v", err)
	}
}

func newStore(t *testing.T) *layers.Store {
	t.Helper()
	st, err := layers.OpenStore(context.Background(), filepath.Join(t.TempDir(), "root"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	return st
}

// dumpImage renders an image's config, history and flattened file tree as
// stable text for golden comparison.
func dumpImage(t *testing.T, img v1.Image) string {
	t.Helper()
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "platform: %s/%s", cfg.OS, cfg.Architecture)
	if cfg.Variant != "" {
		fmt.Fprintf(&b, "/%s", cfg.Variant)
	}
	fmt.Fprintf(&b, "\nauthor: %s\n", cfg.Author)
	c := cfg.Config
	js, _ := json.MarshalIndent(c, "", "  ")
	fmt.Fprintf(&b, "config: %s\n", js)
	fmt.Fprintf(&b, "history:\n")
	for _, h := range cfg.History {
		mark := "layer"
		if h.EmptyLayer {
			mark = "empty"
		}
		fmt.Fprintf(&b, "  %s %s\n", mark, h.CreatedBy)
	}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "layers: %d\n", len(ls))
	root := filepath.Join(t.TempDir(), "rootfs")
	if err := registry.WriteRootFS(context.Background(), root, img, func(string) {}); err != nil {
		t.Fatalf("flatten: %v", err)
	}
	b.WriteString("files:\n")
	b.WriteString(dumpTree(t, root))
	return b.String()
}

// dumpTree lists a directory tree: path, type, mode, owner, and content
// hash or link target.
func dumpTree(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		line := fmt.Sprintf("  /%s %s %d:%d", rel, modeString(fi.Mode()), st.Uid, st.Gid)
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			line += " -> " + target
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			line += fmt.Sprintf(" %dB sha256:%s", len(data), hex.EncodeToString(sum[:])[:12])
			if len(data) < 40 && !bytes.ContainsAny(data, "\x00") {
				line += fmt.Sprintf(" %q", data)
			}
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}

func modeString(m fs.FileMode) string {
	kind := "file"
	switch {
	case m.IsDir():
		kind = "dir"
	case m&fs.ModeSymlink != 0:
		kind = "symlink"
	case m&fs.ModeDevice != 0:
		kind = "device"
	}
	perm := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		perm |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		perm |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		perm |= 0o1000
	}
	if kind == "symlink" {
		return kind
	}
	return fmt.Sprintf("%s %04o", kind, perm)
}

func lineDiff(want, got string) string {
	w := strings.Split(want, "\n")
	g := strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&b, "line %d:\n  want: %s\n  got:  %s\n", i+1, wl, gl)
		}
	}
	return b.String()
}

// copyFixture copies a fixture directory (files, dirs, symlinks).
func copyFixture(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if rel == "want.golden" {
			return nil // the expected result is not part of the context
		}
		target := filepath.Join(dst, rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			return os.MkdirAll(target, 0o755)
		case fi.Mode()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		default:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(target, data, fi.Mode().Perm())
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

func mustMkdir(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, p, data string, mode fs.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// run runs a tool the test needs.
func run(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	layertest.RequireTool(t, name)
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// tarEntries lists the entry names of an uncompressed layer.
func tarEntries(t *testing.T, l v1.Layer) []string {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var out []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, h.Name)
	}
	return out
}

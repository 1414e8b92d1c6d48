package copier

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ibuild/ibuild/layers"
)

// sandbox is a temporary directory holding a build context (ctx), an
// image's root file system (image), the layer a step writes (layer), and
// a directory outside all of them (outside) that a copy must never read
// nor write.
type sandbox struct {
	root, ctx, image, layer, outside string
}

func newSandbox(t *testing.T) *sandbox {
	t.Helper()
	root := t.TempDir()
	s := &sandbox{root: root}
	for _, d := range []*string{&s.ctx, &s.image, &s.layer, &s.outside} {
		*d = filepath.Join(root, map[*string]string{&s.ctx: "ctx", &s.image: "image", &s.layer: "layer", &s.outside: "outside"}[d])
		if err := os.Mkdir(*d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(s.outside, "secret"), "host secret", 0o600)
	return s
}

// write makes the file p (and its parents) with data and mode.
func write(t *testing.T, p, data string, mode fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// symlink makes p (and its parents) a symlink to target.
func symlink(t *testing.T, target, p string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

// tree lists dir's entries as "path type" lines: "f content" for a
// regular file, "l target" for a symlink, "d" for a directory.
func tree(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(p string, fi fs.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out = append(out, rel+" l "+target)
		case fi.IsDir():
			out = append(out, rel+" d")
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out = append(out, rel+" f "+string(b))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// context fills the sandbox's context with files and symlinks that point
// out of it every way a context can: "..", absolute host paths, and chains.
func (s *sandbox) context(t *testing.T) {
	t.Helper()
	write(t, filepath.Join(s.ctx, "file"), "in context", 0o644)
	write(t, filepath.Join(s.ctx, "dir/inner"), "inner", 0o644)
	symlink(t, "../outside", filepath.Join(s.ctx, "up"))
	symlink(t, "../../../../../../.."+s.outside, filepath.Join(s.ctx, "updeep"))
	symlink(t, s.outside, filepath.Join(s.ctx, "abs"))
	symlink(t, s.outside+"/secret", filepath.Join(s.ctx, "abssecret"))
	symlink(t, "chain2", filepath.Join(s.ctx, "chain1"))
	symlink(t, "dir/../chain3", filepath.Join(s.ctx, "chain2"))
	symlink(t, "/../../file", filepath.Join(s.ctx, "chain3"))
	symlink(t, "loop", filepath.Join(s.ctx, "loop"))
	symlink(t, "../../outside/secret", filepath.Join(s.ctx, "dir/rel"))
}

func (s *sandbox) open(t *testing.T) *ContextFS {
	t.Helper()
	c, err := OpenContext(s.ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestContextConfined resolves paths of a context whose symlinks point out
// of it: every resolution stays inside, and what lies outside reads as
// absent.
func TestContextConfined(t *testing.T) {
	s := newSandbox(t)
	s.context(t)
	c := s.open(t)
	for _, tc := range []struct {
		in, want string
		exists   bool
	}{
		{"/file", "/file", true},
		{"/../../file", "/file", true},
		{"/dir/../../../outside/secret", "/outside/secret", false},
		{"/up/secret", "/outside/secret", false},
		{"/updeep/secret", s.outside + "/secret", false},
		{"/abs/secret", s.outside + "/secret", false},
		{"/abssecret", s.outside + "/secret", false},
		{"/chain1", "/file", true},
		{"/dir/rel", "/outside/secret", false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := c.Resolve(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("Resolve(%s) = %s, want %s", tc.in, got, tc.want)
			}
			fi, host, err := c.Lstat(got)
			if tc.exists != (err == nil) {
				t.Fatalf("Lstat(%s): %v, %v", got, fi, err)
			}
			if err == nil && !strings.HasPrefix(host, s.ctx+"/") {
				t.Errorf("Lstat(%s) reads %s, outside the context", got, host)
			}
		})
	}
	if _, err := c.Resolve("/loop/x"); err == nil {
		t.Error("a symlink loop resolved")
	}
}

// TestCopyConfined copies from a context with escaping symlinks into
// images with escaping symlinks: what is copied lands in the layer at the
// in-image path the image resolves it to, and nothing outside the layer
// is read or written.
func TestCopyConfined(t *testing.T) {
	for _, tc := range []struct {
		name string
		// image sets up the image's root file system (may be nil: scratch).
		image   func(t *testing.T, s *sandbox)
		srcs    []string
		dest    string
		want    string                  // the layer's tree
		wantFor func(s *sandbox) string // or the tree, from the sandbox's paths
		wantErr string
	}{{
		name: "dotdot-source-is-in-context",
		srcs: []string{"../../file"}, dest: "/x",
		want: "x f in context",
	}, {
		name: "dotdot-source-outside-is-absent",
		srcs: []string{"../outside/secret"}, dest: "/x",
		wantErr: "file not found in build context",
	}, {
		name: "relative-symlink-out-is-absent",
		srcs: []string{"up/secret"}, dest: "/x",
		wantErr: "file not found in build context",
	}, {
		name: "absolute-symlink-out-is-absent",
		srcs: []string{"abssecret"}, dest: "/x",
		wantErr: "file not found in build context",
	}, {
		name: "symlink-chain-in-context-followed-at-top",
		srcs: []string{"chain1"}, dest: "/x",
		want: "x f in context",
	}, {
		name: "symlinks-below-copied-dir-stay-symlinks",
		srcs: []string{"dir"}, dest: "/d/",
		want: "d d\nd/inner f inner\nd/rel l ../../outside/secret",
	}, {
		name: "glob-through-escaping-symlink-matches-nothing",
		srcs: []string{"up/*"}, dest: "/d/",
		want: "",
	}, {
		name: "dotdot-destination-stays-in-layer",
		srcs: []string{"file"}, dest: "/../../../escaped",
		want: "escaped f in context",
	}, {
		name: "image-relative-symlink-destination",
		image: func(t *testing.T, s *sandbox) {
			symlink(t, "../../../../outside", filepath.Join(s.image, "etc"))
		},
		srcs: []string{"file"}, dest: "/etc/x",
		want: "outside d\noutside/x f in context",
	}, {
		name: "image-absolute-symlink-destination",
		image: func(t *testing.T, s *sandbox) {
			symlink(t, s.outside, filepath.Join(s.image, "opt"))
		},
		srcs: []string{"file"}, dest: "/opt/",
		wantFor: func(s *sandbox) string {
			return dirsOf(s.outside) + strings.TrimPrefix(s.outside, "/") + "/file f in context"
		},
	}, {
		name: "image-symlink-chain-destination",
		image: func(t *testing.T, s *sandbox) {
			symlink(t, "b/../c", filepath.Join(s.image, "a"))
			symlink(t, "/../../d", filepath.Join(s.image, "c"))
			if err := os.Mkdir(filepath.Join(s.image, "b"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(filepath.Join(s.image, "d"), 0o755); err != nil {
				t.Fatal(err)
			}
		},
		srcs: []string{"file"}, dest: "/a/",
		want: "d d\nd/file f in context",
	}, {
		name: "image-symlink-to-file-is-replaced-not-followed",
		image: func(t *testing.T, s *sandbox) {
			symlink(t, s.outside+"/secret", filepath.Join(s.image, "f"))
		},
		srcs: []string{"file"}, dest: "/f",
		want: "f f in context",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSandbox(t)
			s.context(t)
			var base *layers.RootFS
			if tc.image != nil {
				tc.image(t, s)
				base = layers.NewRootFS([]string{s.image})
			}
			imageBefore, outsideBefore := tree(t, s.image), tree(t, s.outside)
			l := NewLayerDir(s.layer, base, time.Unix(1700000000, 0))
			spec := &Spec{Instr: "COPY", From: s.open(t), FromName: "build context", Srcs: tc.srcs, Dest: tc.dest}
			err := Copy(context.Background(), l, spec)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			want := tc.want
			if tc.wantFor != nil {
				want = tc.wantFor(s)
			}
			if got := tree(t, s.layer); got != want {
				t.Errorf("layer:\n%s\nwant:\n%s", got, want)
			}
			if got := tree(t, s.outside); got != outsideBefore {
				t.Errorf("outside changed:\n%s", got)
			}
			if got := tree(t, s.image); got != imageBefore {
				t.Errorf("image changed:\n%s", got)
			}
			ents, err := os.ReadDir(s.root)
			if err != nil {
				t.Fatal(err)
			}
			if len(ents) != 4 {
				t.Errorf("the copy made entries beside the layer: %v", ents)
			}
		})
	}
}

// dirsOf lists, as tree does, the directories of the absolute path p (p
// included) as layer entries, each ending in a newline.
func dirsOf(p string) string {
	var out []string
	cur := ""
	for _, c := range strings.Split(strings.Trim(p, "/"), "/") {
		if c == "" {
			continue
		}
		cur = strings.TrimPrefix(cur+"/"+c, "/")
		out = append(out, cur+" d")
	}
	if len(out) == 0 {
		return ""
	}
	return strings.Join(out, "\n") + "\n"
}

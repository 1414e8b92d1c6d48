package builder

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
)

// mountCase builds dockerfile (whose first line is line 1) over busybox:1
// with files as the rest of the context; opts adjusts the Options.
type mountCase struct {
	name       string
	dockerfile string
	files      map[string]string
	opts       func(t *testing.T, o *Options)
	// builds is how many times the case is built (in the same store); the
	// check sees the last.
	builds  int
	wantErr []string
	check   func(t *testing.T, b *runBuild, st *layers.Store, contextDir string)
}

// secretValue is what the secret cases offer; it is random so that finding
// it anywhere in the store can only mean it leaked.
var secretValue = func() []byte {
	b := make([]byte, 16)
	rand.Read(b)
	return []byte("s3cret-" + hex.EncodeToString(b))
}()

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

var mountCases = []mountCase{{
	name: "bind-context-ro",
	files: map[string]string{
		"data/hello.txt": "hi\n", "data/ignored.txt": "no\n", ".dockerignore": "data/ignored.txt\n",
	},
	dockerfile: "FROM busybox:1\n" +
		"RUN --mount=target=/ctx,source=data cat /ctx/hello.txt > /got && ! test -e /ctx/ignored.txt" +
		" && ! touch /ctx/new 2>/dev/null && ! sh -c 'echo x >> /ctx/hello.txt' 2>/dev/null && echo ro > /ro\n",
	check: func(t *testing.T, b *runBuild, _ *layers.Store, _ string) {
		wantFile(t, b.root, "/got", "hi\n")
		wantFile(t, b.root, "/ro", "ro\n")
		wantNames(t, b.top(t), "got", "ro")
	},
}, {
	name:  "bind-context-file-under-existing-dir",
	files: map[string]string{"data/hello.txt": "hi\n"},
	// /etc is the base's: it must not be copied into the layer for the
	// mount point, nor /etc/h.txt left behind.
	dockerfile: "FROM busybox:1\nRUN --mount=source=data/hello.txt,target=/etc/h.txt cat /etc/h.txt > /got\n",
	check: func(t *testing.T, b *runBuild, _ *layers.Store, _ string) {
		wantFile(t, b.root, "/got", "hi\n")
		wantNames(t, b.top(t), "got")
	},
}, {
	name: "bind-context-escape",
	files: map[string]string{
		"data/hello.txt": "hi\n",
	},
	// A symlink out of the context resolves inside it: /etc/passwd of the
	// context, which does not exist.
	opts: func(t *testing.T, o *Options) {
		if err := os.Symlink("../../../../../../etc/passwd", filepath.Join(o.ContextDir, "data", "esc")); err != nil {
			t.Fatal(err)
		}
	},
	dockerfile: "FROM busybox:1\nRUN --mount=source=data/esc,target=/p cat /p\n" +
		"RUN --mount=source=../../../../etc/passwd,target=/p cat /p\n",
	wantErr: []string{"not found in the build context"},
}, {
	name:  "bind-rw-discarded",
	files: map[string]string{"data/hello.txt": "hi\n"},
	dockerfile: "FROM busybox:1\n" +
		"RUN --mount=target=/ctx,source=data,rw echo new > /ctx/hello.txt && echo x > /ctx/made && cat /ctx/hello.txt > /got\n" +
		"RUN --mount=target=/ctx,source=data cat /ctx/hello.txt > /got2 && ! test -e /ctx/made\n",
	check: func(t *testing.T, b *runBuild, _ *layers.Store, dir string) {
		wantFile(t, b.root, "/got", "new\n")
		wantFile(t, b.root, "/got2", "hi\n")
		wantFile(t, dir, "data/hello.txt", "hi\n")
		wantAbsent(t, dir, "data/made")
		wantAbsent(t, b.root, "/ctx")
	},
}, {
	name: "bind-from-stage",
	dockerfile: "FROM busybox:1 AS src\nRUN mkdir /out && echo built > /out/f && ln -s /out/f /out/link\n" +
		"FROM busybox:1\n" +
		"RUN --mount=from=src,source=/out,target=/mnt cat /mnt/f > /got && ! touch /mnt/g 2>/dev/null\n" +
		"RUN --mount=from=src,source=/out/link,target=/one cat /one > /got-link\n" +
		"RUN --mount=from=0,source=/out,target=/mnt,rw echo changed > /mnt/f && cat /mnt/f > /got-rw\n" +
		"RUN --mount=from=src,source=/out,target=/mnt cat /mnt/f > /got-after\n",
	check: func(t *testing.T, b *runBuild, _ *layers.Store, _ string) {
		wantFile(t, b.root, "/got", "built\n")
		wantFile(t, b.root, "/got-link", "built\n")
		wantFile(t, b.root, "/got-rw", "changed\n")
		wantFile(t, b.root, "/got-after", "built\n")
		wantAbsent(t, b.root, "/mnt")
		wantAbsent(t, b.root, "/one")
		wantAbsent(t, b.root, "/out")
	},
}, {
	name: "bind-from-image",
	dockerfile: "FROM busybox:1\n" +
		"RUN --mount=from=busybox:1,source=/etc,target=/other-etc cat /other-etc/group > /got\n",
	check: func(t *testing.T, b *runBuild, _ *layers.Store, _ string) {
		wantFile(t, b.root, "/got", "root:x:0:\nstaff:x:50:app\napp:x:1000:\n")
		wantNames(t, b.top(t), "got")
	},
}, {
	name: "cache-options-make-another-cache",
	// As in BuildKit, a cache with uid, gid or mode is not the cache of
	// the same id without them: it starts empty, made with them.
	dockerfile: "FROM busybox:1\n" +
		"RUN --mount=type=cache,target=/c,id=runmount-ident touch /c/plain\n" +
		"RUN --mount=type=cache,target=/c,id=runmount-ident,uid=1000,gid=50,mode=0751 stat -c '%u:%g %a' /c > /owner && ls /c > /ls\n",
	check: func(t *testing.T, b *runBuild, _ *layers.Store, _ string) {
		wantFile(t, b.root, "/owner", "1000:50 751\n")
		wantFile(t, b.root, "/ls", "")
	},
}, {
	name:   "cache-persists",
	builds: 2,
	dockerfile: "FROM busybox:1\n" +
		"RUN --mount=type=cache,target=/cache-target,id=runmount-test-cache n=$(cat /cache-target/n 2>/dev/null || echo 0)" +
		" && echo $((n+1)) > /cache-target/n && cp /cache-target/n /count && stat -c %a /cache-target > /mode\n" +
		"RUN --mount=type=cache,target=/var/cache/own,uid=1000,gid=50,mode=0700 stat -c '%u:%g %a' /var/cache/own > /owner\n",
	check: func(t *testing.T, b *runBuild, st *layers.Store, _ string) {
		wantFile(t, b.root, "/count", "2\n")
		wantFile(t, b.root, "/mode", "755\n")
		wantFile(t, b.root, "/owner", "1000:50 700\n")
		wantAbsent(t, b.root, "/cache-target")
		wantAbsent(t, b.root, "/var")
		if ents, _ := filepath.Glob(filepath.Join(st.Root(), "cache", "runmount-test-cache-*", "n")); len(ents) != 1 {
			t.Errorf("cache directory not in the store: %q", ents)
		}
	},
}, {
	name: "tmpfs",
	dockerfile: "FROM busybox:1\n" +
		`RUN --mount=type=tmpfs,target=/scratch,size=1m test -z "$(ls -A /scratch)" && echo x > /scratch/f` +
		" && grep -q ' /scratch tmpfs ' /proc/mounts && echo ok > /ok\n",
	check: func(t *testing.T, b *runBuild, _ *layers.Store, _ string) {
		wantNames(t, b.top(t), "ok")
	},
}, {
	name: "secrets",
	opts: func(t *testing.T, o *Options) {
		f := filepath.Join(t.TempDir(), "tok")
		writeFile(t, f, string(secretValue), 0o600)
		o.Secrets = map[string]SecretSource{"tok": {Value: secretValue}, "file": {File: f}}
	},
	dockerfile: "FROM busybox:1\n" +
		"RUN --mount=type=secret,id=tok sha256sum /run/secrets/tok | cut -d' ' -f1 > /sum && stat -c '%a %u' /run/secrets/tok > /perm" +
		" && ! sh -c 'echo x > /run/secrets/tok' 2>/dev/null\n" +
		"RUN --mount=type=secret,id=tok,env=TOKEN printf %s \"$TOKEN\" | sha256sum | cut -d' ' -f1 > /envsum && ! test -e /run/secrets/tok\n" +
		"RUN --mount=type=secret,id=file,target=/s/f,mode=0440,uid=1000 sha256sum /s/f | cut -d' ' -f1 > /filesum && stat -c '%a %u' /s/f > /fileperm\n" +
		"RUN --mount=type=secret,id=absent test ! -e /run/secrets/absent && echo ok > /optional\n",
	check: func(t *testing.T, b *runBuild, st *layers.Store, _ string) {
		want := sha256Hex(secretValue) + "\n"
		wantFile(t, b.root, "/sum", want)
		wantFile(t, b.root, "/envsum", want)
		wantFile(t, b.root, "/filesum", want)
		wantFile(t, b.root, "/perm", "400 0\n")
		wantFile(t, b.root, "/fileperm", "440 1000\n")
		wantFile(t, b.root, "/optional", "ok\n")
		wantAbsent(t, b.root, "/run")
		wantAbsent(t, b.root, "/s")
		cfg, err := json.Marshal(b.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(cfg, secretValue) {
			t.Error("the secret is in the image config")
		}
		wantNowhereInStore(t, st, secretValue)
	},
}, {
	name:       "secret-required-missing",
	dockerfile: "FROM busybox:1\nRUN --mount=type=secret,id=nope,required true\n",
	wantErr:    []string{"Dockerfile:2", `secret "nope" is required but was not provided`},
}, {
	name:       "ssh",
	dockerfile: "FROM busybox:1\nRUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo \"$SSH_AUTH_SOCK\" > /sock\n",
	opts: func(t *testing.T, o *Options) {
		dir, err := os.MkdirTemp("", "agent")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		l, err := net.Listen("unix", filepath.Join(dir, "agent.sock"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		o.SSH = map[string]string{"default": l.Addr().String()}
	},
	check: func(t *testing.T, b *runBuild, _ *layers.Store, _ string) {
		wantFile(t, b.root, "/sock", "/run/buildkit/ssh_agent.0\n")
		wantNames(t, b.top(t), "sock")
	},
}, {
	name:       "ssh-required-missing",
	dockerfile: "FROM busybox:1\nRUN --mount=type=ssh,required true\n",
	wantErr:    []string{`ssh agent "default" is required`},
}, {
	name:       "network-none-option",
	dockerfile: "FROM busybox:1\nRUN cat /proc/net/dev > /netdev\nRUN --network=host cat /proc/net/dev > /netdev-host\n",
	opts:       func(t *testing.T, o *Options) { o.Network, o.AllowNetworkHost = "none", true },
	check: func(t *testing.T, b *runBuild, _ *layers.Store, _ string) {
		lines := strings.Split(strings.TrimSpace(readFileIn(t, b.root, "/netdev")), "\n")
		if len(lines) != 3 || !strings.HasPrefix(strings.TrimSpace(lines[2]), "lo:") {
			t.Errorf("/proc/net/dev under Network none:\n%s", strings.Join(lines, "\n"))
		}
		host, err := os.ReadFile("/proc/net/dev")
		if err != nil {
			t.Fatal(err)
		}
		if got := readFileIn(t, b.root, "/netdev-host"); strings.Count(got, "\n") != strings.Count(string(host), "\n") {
			t.Errorf("RUN --network=host saw:\n%s\nthe host has:\n%s", got, host)
		}
	},
}, {
	// As docker build: RUN --network=host needs the network.host
	// entitlement (the default network is the host's all the same).
	name:       "network-host-needs-entitlement",
	dockerfile: "FROM busybox:1\nRUN --network=host true\n",
	wantErr:    []string{"Dockerfile:2", "needs the network.host entitlement", "Options.AllowNetworkHost"},
}, {
	name:       "tmpfs-on-dev-shm",
	dockerfile: "FROM busybox:1\nRUN --mount=type=tmpfs,target=/dev/shm,size=1m grep -c ' /dev/shm ' /proc/self/mountinfo > /n && df -k /dev/shm | tail -1 | awk '{print $2}' > /size\n",
	check: func(t *testing.T, b *runBuild, _ *layers.Store, _ string) {
		wantFile(t, b.root, "/n", "1\n")
		wantFile(t, b.root, "/size", "1024\n")
	},
}, {
	name:       "isolation-chroot",
	dockerfile: "FROM busybox:1\nRUN hostname > /hn && echo ok > /ok\n",
	opts:       func(t *testing.T, o *Options) { o.Isolation = IsolationChroot },
	check: func(t *testing.T, b *runBuild, _ *layers.Store, _ string) {
		hn, err := os.Hostname()
		if err != nil {
			t.Fatal(err)
		}
		wantFile(t, b.root, "/hn", hn+"\n")
		wantNames(t, b.top(t), "hn", "ok")
	},
}, {
	name:       "isolation-none",
	dockerfile: "FROM busybox:1\nRUN --mount=type=tmpfs,target=/t true\n",
	opts:       func(t *testing.T, o *Options) { o.Isolation = IsolationNone },
	wantErr:    []string{"RUN --mount", "IsolationNone"},
}, {
	// As BuildKit: source= of a cache must exist in it.
	name:       "cache-source-missing",
	dockerfile: "FROM busybox:1\nRUN --mount=type=cache,id=fresh,target=/c,source=nope true\n",
	wantErr:    []string{"Dockerfile:2", "source /nope does not exist in cache fresh"},
}}

func TestRunMount(t *testing.T) {
	st := newStore(t)
	busyboxBase(t, st)
	for _, tc := range mountCases {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{"Dockerfile": tc.dockerfile}
			for k, v := range tc.files {
				files[k] = v
			}
			dir := writeContext(t, files)
			opts := Options{Store: st, ContextDir: dir, Tags: []string{"mount-" + tc.name + ":1"}}
			if tc.opts != nil {
				tc.opts(t, &opts)
			}
			var res *Result
			var err error
			for i := 0; i < max(tc.builds, 1); i++ {
				// Repeated builds must run their steps again.
				opts.NoCache = i > 0
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				res, err = Build(ctx, opts)
				cancel()
				if err != nil {
					break
				}
			}
			if tc.wantErr != nil {
				if err == nil {
					t.Fatal("build succeeded, want an error")
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q\ndoes not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("build: %v", err)
			}
			b := &runBuild{res: res}
			if b.cfg, err = res.Image.ConfigFile(); err != nil {
				t.Fatal(err)
			}
			b.root = filepath.Join(t.TempDir(), "rootfs")
			if err := registry.WriteRootFS(context.Background(), b.root, res.Image, func(w string) { t.Logf("flatten: %s", w) }); err != nil {
				t.Fatalf("flatten: %v", err)
			}
			ls, err := res.Image.Layers()
			if err != nil {
				t.Fatal(err)
			}
			b.layers = append(b.layers, layerHeaders(t, ls[len(ls)-1]))
			tc.check(t, b, st, dir)
		})
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mi), "\n") {
		if strings.Contains(line, st.Root()) {
			t.Errorf("mount left behind: %s", line)
		}
	}
}

// wantNowhereInStore fails if secret is in any file under the store, read
// decompressed (layers.Decompress passes other files through).
func wantNowhereInStore(t *testing.T, st *layers.Store, secret []byte) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(st.Root(), func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		rc, err := layers.Decompress(f)
		if err != nil {
			return err
		}
		defer rc.Close()
		data, err := io.ReadAll(rc)
		if err != nil {
			// A blob that only looks compressed: search its raw bytes.
			raw, rerr := os.ReadFile(p)
			if rerr != nil {
				return rerr
			}
			data = raw
		}
		n++
		if bytes.Contains(data, secret) {
			t.Errorf("the secret is in %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no file searched")
	}
}

func TestCacheDirName(t *testing.T) {
	for _, tc := range []struct{ a, b string }{
		{"/root/.cache", "_root_.cache"},
		{"a/b", "a_b"},
		{"../../etc", "_.._etc"},
	} {
		got := cacheDirName(tc.a)
		if strings.ContainsAny(got, "/") || got == "" || got == "." || got == ".." {
			t.Errorf("cacheDirName(%q) = %q", tc.a, got)
		}
		if got == cacheDirName(tc.b) {
			t.Errorf("ids %q and %q share directory %q", tc.a, tc.b, got)
		}
	}
}

package builder

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry"
)

// busyboxBase builds "busybox:1" in st: Debian's static busybox with its
// applets installed as /bin symlinks, and users root (0), app (1000, also in
// staff 50) and nobody (65534). It needs root and /bin/busybox.
func busyboxBase(t *testing.T, st *layers.Store) *Result {
	t.Helper()
	if testing.Short() {
		t.Skip("RUN steps: skipped with -short")
	}
	if os.Geteuid() != 0 {
		layertest.SkipOrFail(t, "RUN tests need root (namespaces, overlay, chroot)")
	}
	bb := layertest.RequireTool(t, "/bin/busybox")
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM scratch\n" +
			"COPY busybox /bin/busybox\n" +
			"COPY etc/ /etc/\n" +
			`RUN ["/bin/busybox", "--install", "-s", "/bin"]` + "\n",
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n" +
			"app:x:1000:1000:app:/home/app:/bin/sh\n" +
			"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group": "root:x:0:\nstaff:x:50:app\napp:x:1000:\n",
	})
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "busybox"), string(data), 0o755)
	res, err := Build(context.Background(), Options{Store: st, ContextDir: dir, Tags: []string{"busybox:1"}})
	if err != nil {
		t.Fatalf("build busybox:1 base: %v", err)
	}
	return res
}

// runBuild is what a runCase's check sees.
type runBuild struct {
	res     *Result
	cfg     *v1.ConfigFile
	root    string          // the image flattened with registry.WriteRootFS
	layers  [][]*tar.Header // entries of each layer added on top of the base
	logs    string          // the Log events' messages, in order
	elapsed time.Duration   // how long Build took
}

// top is the entries of the last layer.
func (b *runBuild) top(t *testing.T) []*tar.Header {
	t.Helper()
	if len(b.layers) == 0 {
		t.Fatal("the build added no layer")
	}
	return b.layers[len(b.layers)-1]
}

// runCase builds "FROM busybox:1\n" + dockerfile; so the first line of
// dockerfile is line 2.
type runCase struct {
	name       string
	dockerfile string
	args       map[string]string
	wantErr    []string // substrings of the build error; nil: the build succeeds
	check      func(t *testing.T, b *runBuild)
}

// nap is how long case 12's orphaned sleep would sleep: unique to this test
// process, so the leak check finds no other test's sleep.
var nap = strconv.Itoa(300000 + os.Getpid())

// manyLayers is a Dockerfile body adding n one-file layers, the files
// /layers/0 ... /layers/n-1.
func manyLayers(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "COPY <<EOF /layers/%d\n%d\nEOF\n", i, i)
	}
	return b.String()
}

var runCases = []runCase{{
	// mount(2) took every layer path in one page: RUN failed at 37
	// layers. Docker's overlay2 handles 125 and more.
	name:       "on-127-layers",
	dockerfile: manyLayers(127) + "RUN ls /layers | wc -l > /count && cat /layers/126 >> /count\n",
	check: func(t *testing.T, b *runBuild) {
		if got := readFileIn(t, b.root, "count"); got != "127\n126\n" {
			t.Errorf("count = %q", got)
		}
		if n := len(b.layers); n != 128 {
			t.Errorf("%d layers above the base, want 128", n)
		}
	},
}, {
	name:       "device-required",
	dockerfile: "RUN --device=vendor1.com/device=foo,required echo never > /x\n",
	wantErr:    []string{"Dockerfile:2", `required device "vendor1.com/device=foo" is not registered`},
}, {
	name:       "device-optional",
	dockerfile: "RUN --device=vendor1.com/device=foo echo ran > /x\n",
	check: func(t *testing.T, b *runBuild) {
		wantFile(t, b.root, "/x", "ran\n")
	},
}, {
	name: "heredoc-then-command",
	// "<<EOF sh > f" is not a heredoc alone: the line and the heredoc go
	// to the shell together (BuildKit), so the redirection applies.
	dockerfile: "RUN <<EOF sh > /out\necho from-heredoc\nEOF\n",
	check: func(t *testing.T, b *runBuild) {
		wantFile(t, b.root, "/out", "from-heredoc\n")
	},
}, {
	name: "root-supplementary-groups",
	// Without USER a step runs as root with root's groups from /etc/group
	// (BuildKit, like containerd, adds them).
	dockerfile: "RUN echo wheel:x:10:root >> /etc/group\nRUN id -G > /root-groups\n",
	check: func(t *testing.T, b *runBuild) {
		wantFile(t, b.root, "/root-groups", "0 10\n")
	},
}, {
	name: "shebang-heredoc",
	// As BuildKit: a RUN heredoc starting with #! is an executable script
	// mounted at /dev/pipes/NAME for the step, run by the shell.
	dockerfile: "RUN <<EOF\n#!/bin/sh\necho \"$0\" > /script-name\nEOF\n",
	check: func(t *testing.T, b *runBuild) {
		wantFile(t, b.root, "/script-name", "/dev/pipes/EOF\n")
		wantNames(t, b.top(t), "script-name")
	},
}, {
	name:       "writes-files",
	dockerfile: "RUN echo hello > /greeting && mkdir -p /opt/app && echo x > /opt/app/f\n",
	check: func(t *testing.T, b *runBuild) {
		wantFile(t, b.root, "/greeting", "hello\n")
		wantFile(t, b.root, "/opt/app/f", "x\n")
		// Nothing else: no /etc/hosts, /etc/resolv.conf, /etc/hostname.
		wantNames(t, b.top(t), "greeting", "opt", "opt/app", "opt/app/f")
		for _, p := range []string{"/etc/hosts", "/etc/resolv.conf", "/etc/hostname"} {
			wantAbsent(t, b.root, p)
		}
		// The base's RUN (on an image without /proc, /sys, /dev) left
		// those mount points, empty, root-owned, 0755, as docker build
		// (BuildKit with runc) leaves them; this step found them there.
		for _, p := range []string{"/dev", "/proc", "/sys"} {
			st := statOf(t, b.root, p)
			if st.Mode&syscall.S_IFMT != syscall.S_IFDIR || st.Mode&0o7777 != 0o755 || st.Uid != 0 || st.Gid != 0 {
				t.Errorf("%s: mode %o owner %d:%d, want a root-owned 0755 directory", p, st.Mode, st.Uid, st.Gid)
			}
			if ents, err := os.ReadDir(filepath.Join(b.root, p)); err != nil || len(ents) != 0 {
				t.Errorf("%s holds %v (%v), want it empty", p, ents, err)
			}
		}
		if len(b.layers) != 1 {
			t.Errorf("one RUN added %d layers", len(b.layers))
		}
	},
}, {
	name: "deletes",
	dockerfile: "RUN mkdir -p /home/app /opt/d && echo x > /home/app/f && echo old > /opt/d/old\n" +
		"RUN rm /etc/group && rm -rf /home && rm -rf /opt/d && mkdir /opt/d && echo new > /opt/d/new\n",
	check: func(t *testing.T, b *runBuild) {
		top := b.top(t)
		for _, n := range []string{"etc/.wh.group", ".wh.home", "opt/d/.wh..wh..opq", "opt/d/new"} {
			if findHeader(top, n) == nil {
				t.Errorf("the layer lacks %s; it has %q", n, headerNames(top))
			}
		}
		wantAbsent(t, b.root, "/etc/group")
		wantAbsent(t, b.root, "/home")
		wantAbsent(t, b.root, "/opt/d/old")
		wantFile(t, b.root, "/opt/d/new", "new\n")
		if _, err := os.Stat(filepath.Join(b.root, "etc/passwd")); err != nil {
			t.Errorf("a sibling of the deleted file went too: %v", err)
		}
	},
}, {
	name: "links",
	dockerfile: "RUN echo hello > /greeting\n" +
		"RUN ln -s /greeting /link && echo a > /h1 && ln /h1 /h2\n",
	check: func(t *testing.T, b *runBuild) {
		if got, err := os.Readlink(filepath.Join(b.root, "link")); err != nil || got != "/greeting" {
			t.Errorf("/link -> %q (%v), want /greeting", got, err)
		}
		wantFile(t, b.root, "/h1", "a\n")
		wantFile(t, b.root, "/h2", "a\n")
		if s1, s2 := statOf(t, b.root, "/h1"), statOf(t, b.root, "/h2"); s1.Ino != s2.Ino {
			t.Errorf("/h1 and /h2 are not one inode (%d, %d)", s1.Ino, s2.Ino)
		}
		top := b.top(t)
		h1, h2 := findHeader(top, "h1"), findHeader(top, "h2")
		if h1 == nil || h2 == nil || !(h2.Typeflag == tar.TypeLink && h2.Linkname == "h1" || h1.Typeflag == tar.TypeLink && h1.Linkname == "h2") {
			t.Errorf("the layer has no hardlink entry between h1 and h2: %+v %+v", h1, h2)
		}
		if l := findHeader(top, "link"); l == nil || l.Typeflag != tar.TypeSymlink || l.Linkname != "/greeting" {
			t.Errorf("link entry %+v", l)
		}
	},
}, {
	name:       "chown",
	dockerfile: "RUN touch /owned && chown 1000:50 /owned && chmod 4755 /owned\n",
	check: func(t *testing.T, b *runBuild) {
		st := statOf(t, b.root, "/owned")
		if st.Uid != 1000 || st.Gid != 50 || st.Mode&0o7777 != 0o4755 {
			t.Errorf("/owned: %d:%d mode %04o, want 1000:50 4755", st.Uid, st.Gid, st.Mode&0o7777)
		}
		if h := findHeader(b.top(t), "owned"); h == nil || h.Uid != 1000 || h.Gid != 50 || h.Mode&0o7777 != 0o4755 {
			t.Errorf("owned entry %+v", h)
		}
	},
}, {
	name: "user",
	dockerfile: "RUN mkdir -m 1777 /tmp\n" +
		"USER app\n" +
		"RUN id -u > /tmp/uid && id -G > /tmp/groups && touch /tmp/made-by-app\n" +
		"USER 1000:50\n" +
		"RUN id -u > /tmp/numeric-uid && id -g > /tmp/numeric-gid\n",
	check: func(t *testing.T, b *runBuild) {
		wantFile(t, b.root, "/tmp/uid", "1000\n")
		groups := strings.Fields(readFileIn(t, b.root, "/tmp/groups"))
		if !slices.Contains(groups, "1000") || !slices.Contains(groups, "50") {
			t.Errorf("id -G as app = %q, want 1000 and 50 (staff lists app)", groups)
		}
		if st := statOf(t, b.root, "/tmp/made-by-app"); st.Uid != 1000 || st.Gid != 1000 {
			t.Errorf("/tmp/made-by-app owned by %d:%d, want 1000:1000", st.Uid, st.Gid)
		}
		wantFile(t, b.root, "/tmp/numeric-uid", "1000\n")
		wantFile(t, b.root, "/tmp/numeric-gid", "50\n")
		if b.cfg.Config.User != "1000:50" {
			t.Errorf("config User %q", b.cfg.Config.User)
		}
	},
}, {
	name: "environment",
	dockerfile: "ARG A=from-arg\n" +
		"ARG C\n" +
		"ENV B=from-env\n" +
		`RUN echo "$A $B $PATH" > /env.txt && echo "$C" > /c.txt` + "\n",
	args: map[string]string{"C": "from-cli"},
	check: func(t *testing.T, b *runBuild) {
		wantFile(t, b.root, "/env.txt", "from-arg from-env /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n")
		wantFile(t, b.root, "/c.txt", "from-cli\n")
		env := b.cfg.Config.Env
		if !slices.Contains(env, "B=from-env") {
			t.Errorf("config Env %q lacks B=from-env", env)
		}
		for _, e := range env {
			if strings.HasPrefix(e, "A=") || strings.HasPrefix(e, "C=") {
				t.Errorf("an ARG was persisted in the config: %q", e)
			}
		}
	},
}, {
	name: "workdir-shell-exec-heredoc",
	dockerfile: "WORKDIR /w\n" +
		"RUN pwd > here\n" +
		`SHELL ["/bin/sh", "-e", "-c"]` + "\n" +
		`RUN echo "$-" > /shellflags` + "\n" +
		// Shell-wrapping this would expand $0 early and lose "zero".
		`RUN ["/bin/sh", "-c", "echo exec $0 > /exec.txt", "zero"]` + "\n" +
		"RUN <<EOF\n" +
		"echo line1 > /heredoc.txt\n" +
		"echo line2 >> /heredoc.txt\n" +
		"EOF\n",
	check: func(t *testing.T, b *runBuild) {
		wantFile(t, b.root, "/w/here", "/w\n")
		if flags := readFileIn(t, b.root, "/shellflags"); !strings.Contains(flags, "e") {
			t.Errorf("$- under SHELL [/bin/sh -e -c] = %q, want the e flag", flags)
		}
		wantFile(t, b.root, "/exec.txt", "exec zero\n")
		wantFile(t, b.root, "/heredoc.txt", "line1\nline2\n")
	},
}, {
	name: "fails",
	// The output differs from the RUN text, so finding it in the error
	// proves the output is quoted, not the instruction.
	dockerfile: "ENV X=1\nRUN echo some-$((40+2))-output && exit 3\n",
	wantErr:    []string{"Dockerfile:3", "echo some-$((40+2))-output && exit 3", "exit code 3", "some-42-output"},
}, {
	name: "etc-hosts-does-not-leak",
	dockerfile: `RUN grep -q localhost /etc/hosts && echo "1.2.3.4 evil" >> /etc/hosts && test ! -e /etc/hostname && hostname > /hn && cat /etc/resolv.conf > /dev/null` + "\n" +
		"RUN ! grep -q evil /etc/hosts && echo clean > /clean\n",
	check: func(t *testing.T, b *runBuild) {
		if len(b.layers) != 2 {
			t.Fatalf("two RUNs added %d layers", len(b.layers))
		}
		wantNames(t, b.layers[0], "hn")
		wantNames(t, b.layers[1], "clean")
		if hn := strings.TrimSpace(readFileIn(t, b.root, "/hn")); hn == "" {
			t.Error("the host name was empty in RUN")
		}
		for _, p := range []string{"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"} {
			wantAbsent(t, b.root, p)
		}
	},
}, {
	name:       "network-none",
	dockerfile: "RUN --network=none cat /proc/net/dev > /netdev\n",
	check: func(t *testing.T, b *runBuild) {
		lines := strings.Split(strings.TrimSpace(readFileIn(t, b.root, "/netdev")), "\n")
		if len(lines) != 3 || !strings.HasPrefix(strings.TrimSpace(lines[2]), "lo:") {
			t.Errorf("/proc/net/dev under --network=none:\n%s", strings.Join(lines, "\n"))
		}
	},
}, {
	name: "dev-proc-sys",
	dockerfile: "RUN test -c /dev/null && test -c /dev/zero && test -c /dev/full && test -c /dev/random && test -c /dev/urandom && test -c /dev/tty" +
		" && test -d /dev/pts && test -d /dev/shm && ls /proc/self/ > /dev/null" +
		" && grep -Eq '^[^ ]+ /sys [^ ]+ ro[ ,]' /proc/mounts" +
		" && cat > /stdin.txt && echo ok > /devok && echo to-the-log\n",
	check: func(t *testing.T, b *runBuild) {
		wantFile(t, b.root, "/devok", "ok\n")
		wantFile(t, b.root, "/stdin.txt", "")
		wantNames(t, b.top(t), "devok", "stdin.txt")
		if !strings.Contains(b.logs, "to-the-log") {
			t.Errorf("RUN output not in the Log events: %q", b.logs)
		}
	},
}, {
	name:       "orphans-killed",
	dockerfile: "ARG NAP\nRUN sh -c 'sleep $NAP &' ; true\n",
	args:       map[string]string{"NAP": nap},
	check: func(t *testing.T, b *runBuild) {
		if b.elapsed > 20*time.Second {
			t.Errorf("the build took %v: it waited for the background sleep", b.elapsed)
		}
		// The kernel kills the namespace's processes when its init exits;
		// allow a moment for them to be reaped.
		deadline := time.Now().Add(2 * time.Second)
		for pids := sleepers(t); len(pids) > 0; pids = sleepers(t) {
			if time.Now().After(deadline) {
				t.Errorf("RUN's background sleep %s outlived it: pids %v", nap, pids)
				for _, pid := range pids {
					syscall.Kill(pid, syscall.SIGKILL)
				}
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	},
}}

func TestRun(t *testing.T) {
	st := newStore(t)
	base := busyboxBase(t, st)
	baseCfg, err := base.Image.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range runCases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := buildRunCase(t, st, tc, len(baseCfg.RootFS.DiffIDs))
			tag := "run-" + tc.name + ":1"
			if tc.wantErr != nil {
				if err == nil {
					t.Fatal("build succeeded, want an error")
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q\ndoes not contain %q", err, w)
					}
				}
				if _, lerr := st.Lookup(context.Background(), tag); lerr == nil {
					t.Errorf("a failed build left %s tagged", tag)
				}
				return
			}
			if err != nil {
				t.Fatalf("build: %v", err)
			}
			tc.check(t, b)
		})
	}
	// Every RUN's mounts are gone: none is left under the store.
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

// buildRunCase builds tc tagged run-NAME:1, and on success flattens the
// image and reads the layers added on top of the base's baseLayers.
func buildRunCase(t *testing.T, st *layers.Store, tc runCase, baseLayers int) (*runBuild, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM busybox:1\n" + tc.dockerfile})
	var mu sync.Mutex
	var logs strings.Builder
	sink := progress.Func(func(e progress.Event) {
		if e.Kind == progress.Log {
			mu.Lock()
			logs.WriteString(e.Message)
			mu.Unlock()
		}
	})
	start := time.Now()
	res, err := Build(ctx, Options{
		Store: st, ContextDir: dir, Tags: []string{"run-" + tc.name + ":1"},
		BuildArgs: tc.args, StepOptions: StepOptions{Progress: sink},
	})
	b := &runBuild{res: res, elapsed: time.Since(start)}
	mu.Lock()
	b.logs = logs.String()
	mu.Unlock()
	if err != nil {
		return b, err
	}
	if b.cfg, err = res.Image.ConfigFile(); err != nil {
		t.Fatal(err)
	}
	b.root = filepath.Join(t.TempDir(), "rootfs")
	if err := registry.WriteRootFS(ctx, b.root, res.Image, func(w string) { t.Logf("flatten: %s", w) }); err != nil {
		t.Fatalf("flatten: %v", err)
	}
	ls, err := res.Image.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) < baseLayers {
		t.Fatalf("%d layers, fewer than the base's %d", len(ls), baseLayers)
	}
	for _, l := range ls[baseLayers:] {
		b.layers = append(b.layers, layerHeaders(t, l))
	}
	return b, nil
}

// layerHeaders reads an uncompressed layer's headers, names cleaned of any
// "./" prefix and "/" suffix.
func layerHeaders(t *testing.T, l v1.Layer) []*tar.Header {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var out []*tar.Header
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err != nil {
			if err == io.EOF {
				return out
			}
			t.Fatal(err)
		}
		h.Name = strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		out = append(out, h)
	}
}

func headerNames(hs []*tar.Header) []string {
	names := make([]string, len(hs))
	for i, h := range hs {
		names[i] = h.Name
	}
	return names
}

func findHeader(hs []*tar.Header, name string) *tar.Header {
	for _, h := range hs {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// wantNames fails unless the layer holds exactly names, in any order.
func wantNames(t *testing.T, hs []*tar.Header, names ...string) {
	t.Helper()
	got := slices.Sorted(slices.Values(headerNames(hs)))
	want := slices.Sorted(slices.Values(names))
	if !slices.Equal(got, want) {
		t.Errorf("layer entries %q, want exactly %q", got, want)
	}
}

func readFileIn(t *testing.T, root, p string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, p))
	if err != nil {
		t.Fatalf("image file: %v", err)
	}
	return string(data)
}

func wantFile(t *testing.T, root, p, want string) {
	t.Helper()
	if got := readFileIn(t, root, p); got != want {
		t.Errorf("%s = %q, want %q", p, got, want)
	}
}

func wantAbsent(t *testing.T, root, p string) {
	t.Helper()
	if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
		t.Errorf("%s is in the image", p)
	} else if !os.IsNotExist(err) {
		t.Error(err)
	}
}

func statOf(t *testing.T, root, p string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Lstat(filepath.Join(root, p))
	if err != nil {
		t.Fatalf("image file: %v", err)
	}
	return fi.Sys().(*syscall.Stat_t)
}

// sleepers lists the pids of processes running "sleep <nap>".
func sleepers(t *testing.T) []int {
	t.Helper()
	dirs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range dirs {
		cmd, err := os.ReadFile(f)
		if err != nil {
			continue // it exited
		}
		if strings.Contains(string(cmd), "sleep\x00"+nap+"\x00") {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
			pids = append(pids, pid)
		}
	}
	return pids
}

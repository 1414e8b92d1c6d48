package sandbox

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ibuild/ibuild/layers/layertest"
	"go.podman.io/storage/pkg/reexec"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	if reexec.Init() {
		return
	}
	os.Exit(m.Run())
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		layertest.SkipOrFail(t, "needs root (CI runs these tests as root)")
	}
}

// busyboxRoot is a directory holding /bin/busybox and its applets.
func busyboxRoot(t *testing.T) string {
	t.Helper()
	bb := "/bin/busybox"
	if _, err := os.Stat(bb); err != nil {
		layertest.SkipOrFail(t, "needs /bin/busybox (busybox-static, make test-deps): %v", err)
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", bb, filepath.Join(root, "bin", "busybox")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	list, err := exec.Command(bb, "--list").Output()
	if err != nil {
		t.Fatalf("busybox --list: %v", err)
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet != "busybox" {
			if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

// runIn runs a shell script in spec (Args and Env filled here) and
// returns its output.
func runIn(t *testing.T, spec Spec, script string) (string, error) {
	t.Helper()
	spec.Args = []string{"/bin/sh", "-c", script}
	spec.Env = []string{"PATH=/bin"}
	var out strings.Builder
	err := Run(context.Background(), spec, func(line string) { out.WriteString(line + "\n") })
	return out.String(), err
}

// TestOverlayManyLayers mounts 300 layers with long paths with the new
// mount API and 150 with mount(2) (the path before Linux 6.8): mount(2)
// took every path in one page, which failed at 37 such layers.
func TestOverlayManyLayers(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name   string
		layers int
		newAPI bool
	}{
		{"fsconfig", 300, true},
		{"mount(2)", 150, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			long := strings.Repeat("x", 90)
			lowers := make([]string, tc.layers)
			for i := range lowers {
				lowers[i] = filepath.Join(base, fmt.Sprintf("%s-%03d", long, i), "diff")
				if err := os.MkdirAll(lowers[i], 0o755); err != nil {
					t.Fatal(err)
				}
				// Each layer adds its own file and overrides "top".
				if err := os.WriteFile(filepath.Join(lowers[i], fmt.Sprintf("f%03d", i)), nil, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(lowers[i], "top"), []byte(fmt.Sprint(i)), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			upper, work, merged := filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "merged")
			for _, d := range []string{upper, work, merged} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := mountOverlay(lowers, upper, work, merged, unix.MOUNT_ATTR_NODEV, tc.newAPI); err != nil {
				t.Fatal(err)
			}
			defer unix.Unmount(merged, unix.MNT_DETACH)
			top, err := os.ReadFile(filepath.Join(merged, "top"))
			if err != nil || string(top) != fmt.Sprint(tc.layers-1) {
				t.Fatalf("top = %q, %v; want the last layer's %d", top, err, tc.layers-1)
			}
			ents, err := os.ReadDir(merged)
			if err != nil || len(ents) != tc.layers+1 {
				t.Fatalf("%d entries, %v; want %d", len(ents), err, tc.layers+1)
			}
			var st unix.Statfs_t
			if err := unix.Statfs(merged, &st); err != nil || st.Flags&unix.ST_NODEV == 0 {
				t.Fatalf("the overlay is not nodev (flags %#x, %v)", st.Flags, err)
			}
		})
	}
}

// TestConfinement checks, in a step, what docker gives a container: the
// capability sets, the seccomp filter, the masked and read-only paths,
// nodev, the generated files on a tmpfs, and an init the step cannot
// open; with the pivot_root and the MS_MOVE fallback, and with a chosen
// capability set.
func TestConfinement(t *testing.T) {
	requireRoot(t)
	const script = `grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|Seccomp):' /proc/self/status
for p in /proc/kcore /proc/keys /proc/timer_list; do [ -e $p ] && echo "$p size $(cat $p | wc -c)"; done
echo 1 > /proc/sys/kernel/printk_ratelimit 2>/dev/null && echo proc-sys-writable
echo x > /proc/sysrq-trigger 2>/dev/null && echo sysrq-writable
mkdir /sys/fs/cgroup/probe 2>/dev/null && echo cgroup-writable
mount -t tmpfs tmpfs /tmp 2>/dev/null && echo mount-worked
stat -f -c %T /etc/hosts
grep -E ' / | /etc/hosts ' /proc/self/mountinfo | grep -q nodev && echo root-nodev
readlink /proc/1/exe >/dev/null 2>&1 && echo init-exe-readable
cat /etc/hostname
`
	for _, tc := range []struct {
		name     string
		fallback bool
		caps     []string
		wantEff  string
	}{
		{"pivot_root", false, nil, "00000000a80425fb"},
		{"MS_MOVE fallback", true, nil, "00000000a80425fb"},
		{"cap-add NET_ADMIN, cap-drop CHOWN", false, mustCaps(t, []string{"net_admin"}, []string{"CAP_CHOWN"}), "00000000a80435fa"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := busyboxRoot(t)
			spec := Spec{
				Merged: root, Dir: "/", Hostname: "ibuild", Capabilities: tc.caps,
				Files:    map[string]string{"/etc/hosts": "127.0.0.1 localhost\n", "/etc/hostname": "probe-host\n"},
				FilesDir: t.TempDir(), moveRoot: tc.fallback,
			}
			out, err := runIn(t, spec, script)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			for _, want := range []string{
				"CapInh:\t0000000000000000", "CapPrm:\t" + tc.wantEff, "CapEff:\t" + tc.wantEff,
				"CapBnd:\t" + tc.wantEff, "CapAmb:\t0000000000000000", "Seccomp:\t2",
				"tmpfs", "root-nodev", "probe-host",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("want %q in:\n%s", want, out)
				}
			}
			for _, bad := range []string{"proc-sys-writable", "sysrq-writable", "cgroup-writable", "mount-worked", "init-exe-readable"} {
				if strings.Contains(out, bad) {
					t.Errorf("%s:\n%s", bad, out)
				}
			}
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(line, "/proc/") && !strings.HasSuffix(line, "size 0") {
					t.Errorf("a masked file has content: %s", line)
				}
			}
			if ents, _ := os.ReadDir(spec.FilesDir); len(ents) != 0 {
				t.Errorf("generated files reached the host directory %s: %d entries", spec.FilesDir, len(ents))
			}
		})
	}
}

func mustCaps(t *testing.T, add, drop []string) []string {
	t.Helper()
	c, err := Capabilities(add, drop)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCapabilities(t *testing.T) {
	for _, tc := range []struct {
		add, drop []string
		want      string // "+CAP_X" in the set, "-CAP_X" not; or "error"
	}{
		{nil, nil, "+CAP_CHOWN"},
		{nil, nil, "-CAP_SYS_ADMIN"},
		{[]string{"sys_admin"}, nil, "+CAP_SYS_ADMIN"},
		{[]string{"CAP_NET_ADMIN"}, nil, "+CAP_NET_ADMIN"},
		{nil, []string{"chown"}, "-CAP_CHOWN"},
		{[]string{"ALL"}, nil, "+CAP_SYS_MODULE"},
		{[]string{"ALL"}, []string{"sys_module"}, "-CAP_SYS_MODULE"},
		{nil, []string{"all"}, "-CAP_KILL"},
		{[]string{"CAP_BOGUS"}, nil, "error"},
		{nil, []string{"nope"}, "error"},
	} {
		got, err := Capabilities(tc.add, tc.drop)
		name := fmt.Sprintf("add %v drop %v", tc.add, tc.drop)
		if tc.want == "error" {
			if err == nil {
				t.Errorf("%s: no error", name)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		has := strings.Contains(" "+strings.Join(got, " ")+" ", " "+tc.want[1:]+" ")
		if has != (tc.want[0] == '+') {
			t.Errorf("%s: %v, want %s", name, got, tc.want)
		}
	}
}

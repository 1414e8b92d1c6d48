package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// hostBounding is this process's bounding set: a step cannot hold a
// capability outside it (some machines drop CAP_SYS_RESOURCE, say).
func hostBounding(t *testing.T) uint64 {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no CapBnd in /proc/self/status")
	return 0
}

// TestBuildCapabilities: RUN steps hold docker's capability set, which
// --cap-add and --cap-drop change (and the cache key with them);
// RUN --security=insecure needs --allow security.insecure.
func TestBuildCapabilities(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end builds")
	}
	requireRoot(t)
	bnd := hostBounding(t)
	capEff := func(v uint64) string { return fmt.Sprintf("CapEff:\t%016x", v&bnd) }
	const sysAdmin = 1 << 21
	root := t.TempDir()
	ctxDir := busyboxContext(t, "RUN grep -E '^(CapEff|Seccomp):' /proc/self/status\n")
	for _, tc := range []struct {
		name  string
		flags []string
		want  []string
	}{
		{"default", nil, []string{"CapEff:\t00000000a80425fb", "Seccomp:\t2", "done ("}},
		{"default again, cached", nil, []string{"CACHED"}},
		{"cap-add", []string{"--cap-add", "NET_ADMIN"}, []string{"CapEff:\t00000000a80435fb"}},
		{"cap-drop all", []string{"--cap-drop", "ALL"}, []string{"CapEff:\t0000000000000000", "Seccomp:\t2"}},
		{"cap-add all, drop sys_admin", []string{"--cap-add", "all", "--cap-drop", "cap_sys_admin"}, []string{capEff(^uint64(0) &^ sysAdmin)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{"build", "--progress", "plain"}, tc.flags...), ctxDir)
			_, stderr, code := ibuild(t, root, "", args...)
			if code != 0 {
				t.Fatalf("exit %d\n%s", code, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("want %q in:\n%s", w, stderr)
				}
			}
		})
	}
	_, stderr, code := ibuild(t, root, "", "build", "--cap-add", "CAP_BOGUS", ctxDir)
	if code == 0 || !strings.Contains(stderr, "cap-add CAP_BOGUS: unknown capability") {
		t.Errorf("unknown capability: exit %d\n%s", code, stderr)
	}

	insecure := busyboxContext(t, "RUN --security=insecure grep -E '^(CapEff|Seccomp):' /proc/self/status\n")
	_, stderr, code = ibuild(t, root, "", "build", "--progress", "plain", insecure)
	if code == 0 || !strings.Contains(stderr, "--allow security.insecure") {
		t.Errorf("insecure without --allow: exit %d\n%s", code, stderr)
	}
	_, stderr, code = ibuild(t, root, "", "build", "--progress", "plain", "--allow", "security.insecure", insecure)
	if code != 0 || !strings.Contains(stderr, "Seccomp:\t0") || !strings.Contains(stderr, capEff(^uint64(0))) {
		t.Errorf("insecure with --allow: exit %d\n%s", code, stderr)
	}
}

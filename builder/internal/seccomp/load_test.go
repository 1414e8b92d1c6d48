package seccomp

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const childEnv = "IBUILD_SECCOMP_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(filteredChild())
	}
	os.Exit(m.Run())
}

// filteredChild loads docker's default profile on its thread and reports
// what the kernel then answers, one "name errno" line per probe.
func filteredChild() int {
	runtime.LockOSThread()
	p, err := Default(dockerCaps)
	if err == nil {
		var prog []unix.SockFilter
		if prog, err = Compile(p, runtime.GOARCH); err == nil {
			if err = unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err == nil {
				err = Load(prog)
			}
		}
	}
	if err != nil {
		fmt.Println("setup", err)
		return 1
	}
	report := func(name string, err error) {
		var errno unix.Errno
		switch {
		case err == nil:
			fmt.Println(name, "ok")
		case errors.As(err, &errno):
			fmt.Println(name, unix.ErrnoName(errno))
		default:
			fmt.Println(name, "error:", err)
		}
	}
	report("getpid", nil)
	report("unshare-user", unix.Unshare(unix.CLONE_NEWUSER))
	_, err = unix.KeyctlGetKeyringID(unix.KEY_SPEC_SESSION_KEYRING, false)
	report("keyctl", err)
	_, _, e := unix.Syscall(unix.SYS_PERSONALITY, 0x0040000, 0, 0)
	report("personality", errnoErr(e))
	_, _, e = unix.Syscall(unix.SYS_CLONE3, 0, 0, 0)
	report("clone3", errnoErr(e))
	dir, err := os.MkdirTemp("", "seccomp-")
	if err == nil {
		report("mount", unix.Mount("tmpfs", dir, "tmpfs", 0, ""))
		unix.Unmount(dir, 0)
		os.Remove(dir)
	}
	// A process started from this thread runs under the filter too.
	out, err := exec.Command("/bin/sh", "-c", "echo child-ran").CombinedOutput()
	report("exec:"+strings.TrimSpace(string(out)), err)
	return 0
}

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func TestLoadDefaultProfile(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		name, v, _ := strings.Cut(line, " ")
		got[name] = v
	}
	for name, want := range map[string]string{
		"getpid":         "ok",
		"unshare-user":   "EPERM",
		"keyctl":         "EPERM",
		"personality":    "EPERM",
		"clone3":         "ENOSYS",
		"mount":          "EPERM",
		"exec:child-ran": "ok",
	} {
		if got[name] != want {
			t.Errorf("%s: got %q, want %q\n%s", name, got[name], want, out)
		}
	}
}

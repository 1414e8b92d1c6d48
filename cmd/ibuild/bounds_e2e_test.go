package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ibuild/ibuild/registry/registrytest"
)

// ibuildBounded runs the binary as ibuild does, but with its address
// space limited to 4 GB and a minute to finish: the unbounded reads these
// tests cover used to take the machine's memory, or wait forever.
func ibuildBounded(t *testing.T, root, stdin string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", append([]string{"-c", `ulimit -v 4000000 && exec "$0" "$@"`, ibuildBin, "--root", root}, args...)...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	cmd.Stdin = strings.NewReader(stdin)
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("ibuild %s did not finish in a minute\n%s", strings.Join(args, " "), errb.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return errb.String(), code
}

// TestBuildRefusesUnboundedInput covers the bounded-input items of the
// security audit from the command line: -f naming a device, a FIFO or a
// huge file, -f - with too much on standard input, and a .dockerignore
// that is a device. Each must fail at once with an error naming the file
// and the limit, not read without end.
func TestBuildRefusesUnboundedInput(t *testing.T) {
	root := t.TempDir()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nLABEL a=b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(t.TempDir(), "Dockerfile.big")
	if err := os.WriteFile(big, []byte("FROM scratch\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(big, 300<<20); err != nil { // sparse
		t.Fatal(err)
	}
	ignoreDev := t.TempDir()
	if err := os.WriteFile(filepath.Join(ignoreDev, "Dockerfile"), []byte("FROM scratch\nCOPY . /\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A named pipe in the context (a symlink out of the context is not
	// followed, so a device cannot be reached that way).
	if err := syscall.Mkfifo(filepath.Join(ignoreDev, ".dockerignore"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		stdin string
		args  []string
		want  []string
	}{
		{"device", "", []string{"-f", "/dev/zero", dir}, []string{"/dev/zero is a character device, not a regular file", "-f -"}},
		{"fifo", "", []string{"-f", fifo, dir}, []string{fifo + " is a named pipe, not a regular file"}},
		{"huge file", "", []string{"-f", big, dir}, []string{big + " is 300.0 MiB (314572800 bytes), over the limit of 16 MiB"}},
		{"huge stdin", "FROM scratch\n" + strings.Repeat("#\n", 9<<20), []string{"-f", "-", dir}, []string{"-f -: the Dockerfile on standard input is more than 16 MiB, over the limit of 16 MiB"}},
		{"fifo .dockerignore", "", []string{ignoreDev}, []string{filepath.Join(ignoreDev, ".dockerignore") + " is a named pipe, not a regular file"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			errOut, code := ibuildBounded(t, root, tc.stdin, append([]string{"build", "-q"}, tc.args...)...)
			if code == 0 {
				t.Fatal("build succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
		})
	}
}

// TestBuildQuietSecretsAndEscapes covers the flag items of the audit for
// build: -q hides progress but not warnings; a --secret or --ssh id given
// twice is refused naming it; and an error quoting a Dockerfile line with
// an escape sequence shows it escaped.
func TestBuildQuietSecretsAndEscapes(t *testing.T) {
	root := t.TempDir()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch AS Build\nLABEL a=b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := ibuild(t, root, "", "build", "-q", dir)
	if code != 0 {
		t.Fatalf("build -q: exit %d\n%s", code, errOut)
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "sha256:") {
		t.Errorf("build -q printed %q, want only the image ID", out)
	}
	if !strings.Contains(errOut, "warning: "+filepath.Join(dir, "Dockerfile")+":1: StageNameCasing") {
		t.Errorf("build -q hid the lint warning; stderr:\n%s", errOut)
	}
	if strings.Contains(errOut, "LABEL a=b") {
		t.Errorf("build -q printed progress:\n%s", errOut)
	}

	t.Setenv("IBUILD_TEST_SECRET_ONE", "1")
	t.Setenv("IBUILD_TEST_SECRET_TWO", "2")
	for _, tc := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--secret", "id=tok,env=IBUILD_TEST_SECRET_ONE", "--secret", "id=tok,env=IBUILD_TEST_SECRET_TWO"}, "--secret id=tok is given twice"},
		{[]string{"--secret", "id=tok,env=IBUILD_TEST_SECRET_ONE", "--secret", "id=tok,src=" + filepath.Join(dir, "Dockerfile")}, "--secret id=tok is given twice"},
		{[]string{"--ssh", "agent=/run/a.sock", "--ssh", "agent=/run/b.sock"}, "--ssh agent is given twice"},
	} {
		_, errOut, code := ibuild(t, root, "", append(append([]string{"build", "-q"}, tc.flags...), dir)...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("build %s: exit %d, want an error saying %q\n%s", strings.Join(tc.flags, " "), code, tc.want, errOut)
		}
	}

	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, "Dockerfile"), []byte("FROM scratch\nLABEL a=b\n\x1b]0;owned\x07LABEL c=d\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = ibuild(t, root, "", "build", "--progress", "plain", bad)
	if code == 0 || !strings.Contains(errOut, `:3: \x1b]0;owned\x07LABEL c=d: unknown instruction: \x1b]0;OWNED\x07LABEL`) || strings.ContainsAny(errOut, "\x1b\x07") {
		t.Errorf("error for a line with an escape sequence: exit %d\n%q", code, errOut)
	}
}

// TestInspectRemoteRegistryFlags checks inspect docker://REF takes the
// registry flags pull takes: --authfile for a registry that needs a login.
func TestInspectRemoteRegistryFlags(t *testing.T) {
	const user, pass = "carol", "inspect-Pa55"
	reg := registrytest.StartWith(t, registrytest.Config{Users: map[string]string{user: pass}})
	root := t.TempDir()
	af := filepath.Join(t.TempDir(), "auth.json")
	ctxDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("FROM scratch\nLABEL inspected=yes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustIbuild(t, root, "build", "-q", "-t", "local:1", ctxDir)
	if _, errOut, code := ibuild(t, root, pass+"\n", "login", "--authfile", af, "-u", user, "--password-stdin", reg.Host); code != 0 {
		t.Fatalf("login: exit %d\n%s", code, errOut)
	}
	ref := reg.Host + "/inspect/auth:1"
	mustIbuild(t, root, "push", "-q", "--authfile", af, "local:1", ref)

	out := mustIbuild(t, root, "inspect", "--authfile", af, "--tls-verify=false", "--cert-dir", t.TempDir(), "docker://"+ref)
	if !strings.Contains(out, `"inspected"`) {
		t.Fatalf("inspect --authfile docker://%s:\n%s", ref, out)
	}
	_, errOut, code := ibuild(t, root, "", "inspect", "--authfile", filepath.Join(t.TempDir(), "none.json"), "docker://"+ref)
	if code == 0 || strings.Contains(errOut, pass) {
		t.Fatalf("inspect without credentials: exit %d\n%s", code, errOut)
	}
}

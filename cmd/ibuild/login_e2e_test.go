package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ibuild/ibuild/registry/registrytest"
)

func TestLoginLogoutPush(t *testing.T) {
	const user, pass = "bob", "cli-Pa55-secret"
	reg := registrytest.StartWith(t, registrytest.Config{Users: map[string]string{user: pass}})
	root := t.TempDir()
	af := filepath.Join(t.TempDir(), "auth.json")
	ctxDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("FROM scratch\nCOPY hello /hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ctxDir, "hello"), []byte("auth\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustIbuild(t, root, "build", "-q", "-t", "local:1", ctxDir)
	ref := reg.Host + "/cli/auth:1"

	_, errOut, code := ibuild(t, root, "", "login", "--authfile", af, "-u", user, "-p", pass+"x", reg.Host)
	if code == 0 || !strings.Contains(errOut, "login "+reg.Host+": invalid username or password") || strings.Contains(errOut, pass) {
		t.Fatalf("bad login: exit %d\n%s", code, errOut)
	}
	if _, err := os.Stat(af); err == nil {
		t.Fatal("a failed login wrote the auth file")
	}
	_, errOut, code = ibuild(t, root, "", "push", "--authfile", af, "local:1", ref)
	if code == 0 || strings.Contains(errOut, pass) {
		t.Fatalf("push without login: exit %d\n%s", code, errOut)
	}
	_, errOut, code = ibuild(t, root, pass+"\n", "login", "--authfile", af, "-u", user, "--password-stdin", reg.Host)
	if code != 0 || strings.Contains(errOut, pass) {
		t.Fatalf("login: exit %d\n%s", code, errOut)
	}
	if fi, err := os.Stat(af); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("auth file: %v %v", fi, err)
	}
	out := mustIbuild(t, root, "push", "-q", "--authfile", af, "local:1", ref)
	if !strings.HasPrefix(out, "sha256:") {
		t.Fatalf("push printed %q", out)
	}
	mustIbuild(t, t.TempDir(), "pull", "-q", "--authfile", af, ref)
	mustIbuild(t, root, "logout", "--authfile", af, reg.Host)
	_, errOut, code = ibuild(t, t.TempDir(), "", "pull", "-q", "--authfile", af, ref)
	if code == 0 || strings.Contains(errOut, pass) {
		t.Fatalf("pull after logout: exit %d\n%s", code, errOut)
	}
	// A wrong password in the auth file: the push error must not show it.
	if err := os.WriteFile(af, []byte(`{"auths":{"`+reg.Host+`":{"username":"`+user+`","password":"`+pass+`-bad"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = ibuild(t, root, "", "push", "--authfile", af, "local:1", ref)
	if code == 0 || strings.Contains(errOut, pass) {
		t.Fatalf("push with a bad password: exit %d\n%s", code, errOut)
	}
}

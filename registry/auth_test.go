package registry_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ibuild/ibuild/registry"
	"github.com/ibuild/ibuild/registry/registrytest"
)

const (
	testUser = "alice"
	testPass = "s3cret-Pa55word"
	testName = "registry.ibuild.test"
)

// tlsRegistry starts a TLS + htpasswd registry reached as
// registry.ibuild.test:PORT (a name that go-containerregistry does not
// treat as loopback, so HTTPS is used) through a transport dialling
// 127.0.0.1, and a certs.d directory trusting its CA.
func tlsRegistry(t *testing.T) (host string, tr *http.Transport, certsD string) {
	reg := registrytest.StartWith(t, registrytest.Config{TLS: true, TLSNames: []string{testName}, Users: map[string]string{testUser: testPass}})
	_, port, _ := net.SplitHostPort(reg.Host)
	host = testName + ":" + port
	tr = http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, reg.Host)
	}
	certsD = t.TempDir()
	if err := os.MkdirAll(filepath.Join(certsD, host), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(reg.CACert)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(certsD, host, "ca.crt"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return host, tr, certsD
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestAuthAndTLS(t *testing.T) {
	host, tr, certsD := tlsRegistry(t)
	ctx := context.Background()
	st := newStore(t)
	buildLocal(t, st, "auth:1", "auth\n")
	conn := func(a registry.AuthConfig) registry.Conn {
		return registry.Conn{Auth: a, CertsDirs: []string{certsD}, Transport: tr}
	}
	push := func(t *testing.T, c registry.Conn, dest string) error {
		t.Helper()
		_, err := registry.Push(ctx, st, "auth:1", host+"/"+dest, registry.PushOptions{Conn: c})
		if err != nil && strings.Contains(err.Error(), testPass) {
			t.Fatalf("error shows the password: %v", err)
		}
		return err
	}
	good := base64.StdEncoding.EncodeToString([]byte(testUser + ":" + testPass))

	t.Run("anonymous fails", func(t *testing.T) {
		err := push(t, conn(registry.AuthConfig{}), "anon:1")
		if err == nil || !strings.Contains(err.Error(), host) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("bad password fails", func(t *testing.T) {
		dir := t.TempDir()
		writeJSON(t, filepath.Join(dir, "containers", "auth.json"), map[string]any{"auths": map[string]any{host: map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(testUser + ":" + testPass + "-wrong"))}}})
		err := push(t, conn(registry.AuthConfig{RuntimeDir: dir}), "bad:1")
		if err == nil || strings.Contains(err.Error(), testPass+"-wrong") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("auth.json", func(t *testing.T) {
		dir := t.TempDir()
		writeJSON(t, filepath.Join(dir, "containers", "auth.json"), map[string]any{"auths": map[string]any{host: map[string]string{"auth": good}}})
		c := conn(registry.AuthConfig{RuntimeDir: dir})
		if err := push(t, c, "a/json:1"); err != nil {
			t.Fatal(err)
		}
		if _, err := registry.Pull(ctx, newStore(t), host+"/a/json:1", registry.PullOptions{Conn: c}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("docker config.json", func(t *testing.T) {
		home := t.TempDir()
		writeJSON(t, filepath.Join(home, ".docker", "config.json"), map[string]any{"auths": map[string]any{"https://" + host: map[string]string{"username": testUser, "password": testPass}}})
		c := conn(registry.AuthConfig{Home: home})
		if err := push(t, c, "d/cfg:1"); err != nil {
			t.Fatal(err)
		}
		if _, err := registry.Pull(ctx, newStore(t), host+"/d/cfg:1", registry.PullOptions{Conn: c}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("credential helper", func(t *testing.T) {
		bin, cfg := t.TempDir(), t.TempDir()
		script := "#!/bin/sh\nread server\n[ \"$1\" = get ] && [ \"$server\" = \"" + host + "\" ] || { echo 'credentials not found in native keychain'; exit 1; }\n" +
			"echo '{\"ServerURL\":\"" + host + "\",\"Username\":\"" + testUser + "\",\"Secret\":\"" + testPass + "\"}'\n"
		if err := os.WriteFile(filepath.Join(bin, "docker-credential-test"), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"credHelpers", "credsStore"} {
			var v any = "test"
			if k == "credHelpers" {
				v = map[string]string{host: "test"}
			}
			writeJSON(t, filepath.Join(cfg, "config.json"), map[string]any{k: v})
			c := conn(registry.AuthConfig{DockerConfigDir: cfg, HelperPath: bin})
			if err := push(t, c, "h/"+strings.ToLower(k)+":1"); err != nil {
				t.Fatalf("%s: %v", k, err)
			}
		}
	})
	t.Run("untrusted CA", func(t *testing.T) {
		dir := t.TempDir()
		writeJSON(t, filepath.Join(dir, "auth.json"), map[string]any{"auths": map[string]any{host: map[string]string{"auth": good}}})
		c := conn(registry.AuthConfig{AuthFile: filepath.Join(dir, "auth.json")})
		c.CertsDirs = []string{t.TempDir()}
		err := push(t, c, "x/ca:1")
		if err == nil || !strings.Contains(err.Error(), "x509") || !strings.Contains(err.Error(), host) {
			t.Fatalf("err = %v", err)
		}
		f := false
		c.TLSVerify = &f
		if err := push(t, c, "x/ca:1"); err != nil {
			t.Fatalf("TLSVerify=false: %v", err)
		}
	})
	t.Run("login and logout", func(t *testing.T) {
		af := filepath.Join(t.TempDir(), "sub", "auth.json")
		c := conn(registry.AuthConfig{})
		err := registry.Login(ctx, host, testUser, testPass+"-wrong", af, c)
		if err == nil || err.Error() != "login "+host+": invalid username or password" {
			t.Fatalf("bad login: %v", err)
		}
		if _, err := os.Stat(af); err == nil {
			t.Fatal("a failed login wrote the auth file")
		}
		if err := registry.Login(ctx, host, testUser, testPass, af, c); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(af); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("auth file: %v %v", fi, err)
		}
		if err := push(t, conn(registry.AuthConfig{AuthFile: af}), "l/in:1"); err != nil {
			t.Fatal(err)
		}
		if err := registry.Logout(host, af); err != nil {
			t.Fatal(err)
		}
		if err := push(t, conn(registry.AuthConfig{AuthFile: af}), "l/out:1"); err == nil {
			t.Fatal("push after logout succeeded")
		}
		if err := registry.Logout(host, af); err == nil {
			t.Fatal("second logout succeeded")
		}
	})
}

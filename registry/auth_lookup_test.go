package registry

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// TestAuthFileWithoutRuntimeDir: without XDG_RUNTIME_DIR, credentials are
// read from ~/.config/containers/auth.json, where `ibuild login` stores
// them then.
func TestAuthFileWithoutRuntimeDir(t *testing.T) {
	home := t.TempDir()
	p := filepath.Join(home, ".config", "containers", "auth.json")
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	// "u:pw" in base64.
	if err := os.WriteFile(p, []byte(`{"auths":{"reg.example:5000":{"auth":"dTpwdw=="}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	reg, err := name.NewRegistry("reg.example:5000")
	if err != nil {
		t.Fatal(err)
	}
	a, err := AuthConfig{Home: home}.Keychain().Resolve(reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := a.Authorization()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Username != "u" || cfg.Password != "pw" {
		t.Fatalf("got %+v, want u/pw", cfg)
	}
	if a, _ := (AuthConfig{}).Keychain().Resolve(reg); a != authn.Anonymous {
		t.Fatalf("the zero AuthConfig found credentials: %v", a)
	}
}

// TestCredentialHelperStopsWithContext asks a credential helper that
// hangs (and has started a child holding its output open) for
// credentials through authn.Resolve, as go-containerregistry does with a
// request's context: cancelling the context must stop it, instead of the
// helper running out its minute.
func TestCredentialHelperStopsWithContext(t *testing.T) {
	dir := t.TempDir()
	helper := "#!/bin/sh\nsleep 5 &\nexec sleep 60\n"
	if err := os.WriteFile(filepath.Join(dir, "docker-credential-hangs"), []byte(helper), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"credHelpers":{"reg.example:5000":"hangs"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	reg, err := name.NewRegistry("reg.example:5000")
	if err != nil {
		t.Fatal(err)
	}
	kc := AuthConfig{DockerConfigDir: dir, HelperPath: dir}.Keychain()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	done := make(chan error, 1)
	go func() {
		_, err := authn.Resolve(ctx, kc, reg)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("resolve with a cancelled context: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the credential helper still runs 10s after the context was cancelled")
	}
}

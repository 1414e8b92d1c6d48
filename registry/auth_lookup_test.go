package registry

import (
	"os"
	"path/filepath"
	"testing"

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

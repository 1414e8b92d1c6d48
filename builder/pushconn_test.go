package builder

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// basicKeychain answers every registry with one user name and password.
type basicKeychain struct{ user, pass string }

func (k basicKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return &authn.Basic{Username: k.user, Password: k.pass}, nil
}

// TestPushUsesRegistryConn: Options.Registry (here with a keychain)
// serves a build's push when PushOptions.Conn is left zero.
func TestPushUsesRegistryConn(t *testing.T) {
	const user, pass = "dave", "pushconn-Pa55"
	reg := registrytest.StartWith(t, registrytest.Config{Users: map[string]string{user: pass}})
	ctx := context.Background()
	st, err := layers.OpenStore(ctx, filepath.Join(t.TempDir(), "root"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY a /a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "a"), []byte("a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dest := reg.Host + "/conn/app:1"
	res, err := Build(ctx, Options{Store: st, ContextDir: dir, Push: []string{dest},
		StepOptions: StepOptions{Registry: registry.Conn{Keychain: basicKeychain{user, pass}}}})
	if err != nil {
		t.Fatalf("build --push with Registry's keychain: %v", err)
	}
	if len(res.Pushed) != 1 || res.Pushed[0].Digest != res.Digest {
		t.Fatalf("pushed %v, built %s", res.Pushed, res.Digest)
	}
	// An explicit PushOptions.Conn still wins.
	_, err = Build(ctx, Options{Store: st, ContextDir: dir, Push: []string{dest},
		StepOptions: StepOptions{Registry: registry.Conn{Keychain: basicKeychain{user, pass}}},
		PushOptions: registry.PushOptions{Conn: registry.Conn{Keychain: basicKeychain{user, pass + "-bad"}}}})
	if err == nil {
		t.Fatal("push with PushOptions' bad password succeeded")
	}
}

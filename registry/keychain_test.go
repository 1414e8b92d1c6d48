package registry_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/ibuild/ibuild/registry"
)

// hostKeychain gives cfg for one registry host and is anonymous elsewhere.
type hostKeychain struct {
	host string
	cfg  authn.AuthConfig
}

func (k hostKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if r.RegistryStr() == k.host {
		return authn.FromConfig(k.cfg), nil
	}
	return authn.Anonymous, nil
}

// TestConnKeychain: a go-containerregistry keychain in Conn serves pull
// and push; registries it leaves anonymous fall back to Auth's files; a
// refusal is an AuthError that says whether credentials were found.
func TestConnKeychain(t *testing.T) {
	host, tr, certsD := tlsRegistry(t)
	ctx := context.Background()
	st := newStore(t)
	buildLocal(t, st, "kc:1", "keychain\n")
	conn := registry.Conn{CertsDirs: []string{certsD}, Transport: tr}

	good := conn
	good.Keychain = authn.NewMultiKeychain(hostKeychain{"elsewhere.example", authn.AuthConfig{}}, hostKeychain{host, authn.AuthConfig{Username: testUser, Password: testPass}})
	if _, err := registry.Push(ctx, st, "kc:1", host+"/k/chain:1", registry.PushOptions{Conn: good}); err != nil {
		t.Fatalf("push with a keychain: %v", err)
	}
	if _, err := registry.Pull(ctx, newStore(t), host+"/k/chain:1", registry.PullOptions{Conn: good}); err != nil {
		t.Fatalf("pull with a keychain: %v", err)
	}

	var ae *registry.AuthError
	_, err := registry.Push(ctx, st, "kc:1", host+"/k/anon:1", registry.PushOptions{Conn: conn})
	if !errors.As(err, &ae) || !ae.Anonymous || ae.Action != "push" || ae.Repository != "k/anon" || ae.Registry != host || ae.Status != 401 {
		t.Fatalf("anonymous push: %#v (%v)", ae, err)
	}

	bad := conn
	bad.Keychain = hostKeychain{host, authn.AuthConfig{Username: testUser, Password: testPass + "-bad"}}
	_, err = registry.Pull(ctx, newStore(t), host+"/k/chain:1", registry.PullOptions{Conn: bad})
	if !errors.As(err, &ae) || ae.Anonymous || ae.Action != "pull" {
		t.Fatalf("pull with a bad password: %#v (%v)", ae, err)
	}

	// A keychain with nothing for the host leaves it to Auth's files.
	dir := t.TempDir()
	writeJSON(t, dir+"/auth.json", map[string]any{"auths": map[string]any{host: map[string]string{"username": testUser, "password": testPass}}})
	both := conn
	both.Keychain = hostKeychain{"elsewhere.example", authn.AuthConfig{}}
	both.Auth = registry.AuthConfig{AuthFile: dir + "/auth.json"}
	if _, err := registry.Pull(ctx, newStore(t), host+"/k/chain:1", registry.PullOptions{Conn: both}); err != nil {
		t.Fatalf("pull with auth.json behind a keychain: %v", err)
	}
}

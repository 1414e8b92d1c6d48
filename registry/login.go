package registry

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/ibuild/ibuild/layers"
)

// ErrBadCredentials is wrapped by Login's error when the registry rejects
// the username or password.
var ErrBadCredentials = errors.New("invalid username or password")

// Login checks username and password against registry (host[:port], or
// docker.io) with a GET /v2/ through go-containerregistry's basic and
// bearer-token flows, then stores them in authFile (a containers
// auth.json; written atomically, mode 0600). Nothing is stored when the
// check fails. Errors never contain the password.
func Login(ctx context.Context, registry, username, password, authFile string, conn Conn) error {
	host := authHost(registry)
	fail := func(err error) error { return fmt.Errorf("login %s: %w", host, err) }
	if authFile == "" {
		return fail(errors.New("no auth file"))
	}
	if username == "" || password == "" {
		return fail(errors.New("username and password are required"))
	}
	if err := checkLogin(ctx, registry, username, password, conn); err != nil {
		return fail(err)
	}
	err := updateAuthFile(authFile, func(auths map[string]json.RawMessage) bool {
		e, _ := json.Marshal(authEntry{Auth: base64.StdEncoding.EncodeToString([]byte(username + ":" + password))})
		auths[host] = e
		return true
	})
	if err != nil {
		return fail(err)
	}
	return nil
}

// Logout removes registry's entry from authFile. It fails when there is
// none.
func Logout(registry, authFile string) error {
	host := authHost(registry)
	found := false
	err := updateAuthFile(authFile, func(auths map[string]json.RawMessage) bool {
		for k := range auths {
			if normalizeAuthKey(k) == host {
				delete(auths, k)
				found = true
			}
		}
		return found
	})
	if err != nil {
		return fmt.Errorf("logout %s: %w", host, err)
	}
	if !found {
		return fmt.Errorf("logout %s: not logged in (no entry in %s)", host, authFile)
	}
	return nil
}

func checkLogin(ctx context.Context, registry, username, password string, conn Conn) error {
	opts := []name.Option{name.WeakValidation}
	if containsHost(conn.Insecure, registry) {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(registry, opts...)
	if err != nil {
		return err
	}
	rt := conn.roundTripper()
	auth := authn.FromConfig(authn.AuthConfig{Username: username, Password: password})
	tr, err := transport.NewWithContext(ctx, reg, auth, rt, []string{reg.Scope(transport.PullScope)})
	if err != nil {
		return loginError(err)
	}
	schemes := []string{"https"}
	if reg.Scheme() == "http" {
		schemes = append(schemes, "http")
	}
	var last error
	for _, s := range schemes {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s+"://"+reg.RegistryStr()+"/v2/", nil)
		if err != nil {
			return err
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			last = err
			continue
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusOK:
			return nil
		case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
			return ErrBadCredentials
		default:
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
	}
	return last
}

func loginError(err error) error {
	var te *transport.Error
	if errors.As(err, &te) && (te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden) {
		return ErrBadCredentials
	}
	return err
}

func containsHost(list []string, registry string) bool {
	for _, h := range list {
		if h == registry || authHost(h) == authHost(registry) {
			return true
		}
	}
	return false
}

// updateAuthFile rewrites the auths object of path (keeping every other
// key) when edit says it changed something.
func updateAuthFile(path string, edit func(map[string]json.RawMessage) bool) error {
	top := map[string]json.RawMessage{}
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if len(b) > 0 {
		if err := json.Unmarshal(b, &top); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	auths := map[string]json.RawMessage{}
	if a, ok := top["auths"]; ok && string(a) != "null" {
		if err := json.Unmarshal(a, &auths); err != nil {
			return fmt.Errorf("%s: auths: %w", path, err)
		}
	}
	if !edit(auths) {
		return nil
	}
	if top["auths"], err = json.Marshal(auths); err != nil {
		return err
	}
	out, err := json.MarshalIndent(top, "", "\t")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return layers.WriteFileAtomic(path, 0o600, func(w io.Writer) error {
		_, err := w.Write(append(out, '\n'))
		return err
	})
}

package registry

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// AuthConfig says where registry credentials are looked up. The library
// reads no environment variables: the caller fills this in (the ibuild
// command from REGISTRY_AUTH_FILE, XDG_RUNTIME_DIR, DOCKER_CONFIG, HOME
// and PATH). The zero value finds no credentials: every registry is
// reached anonymously.
//
// Lookup order, first match wins:
//  1. the containers auth.json: AuthFile, else
//     RuntimeDir/containers/auth.json, else (no RuntimeDir)
//     Home/.config/containers/auth.json, where `ibuild login` writes then;
//  2. the docker config.json in DockerConfigDir, else Home/.docker: its
//     credHelpers entry for the registry, else its auths entry, else its
//     credsStore helper.
type AuthConfig struct {
	// AuthFile is the containers auth.json ("" means
	// RuntimeDir/containers/auth.json, or Home/.config/containers/auth.json
	// without a RuntimeDir).
	AuthFile string
	// DockerConfigDir holds config.json ("" means Home/.docker).
	DockerConfigDir string
	// Home is the user's home directory.
	Home string
	// RuntimeDir is $XDG_RUNTIME_DIR.
	RuntimeDir string
	// HelperPath is the PATH-style list of directories searched for
	// docker-credential-NAME helpers; "" disables helpers.
	HelperPath string
}

// Keychain returns the authn.Keychain that looks credentials up as
// AuthConfig describes.
func (a AuthConfig) Keychain() authn.Keychain { return keychain{a} }

// keychain is how c finds credentials: its Keychain first, then the
// files Auth names.
func (c Conn) keychain() authn.Keychain {
	if c.Keychain == nil {
		return c.Auth.Keychain()
	}
	return authn.NewMultiKeychain(c.Keychain, c.Auth.Keychain())
}

// containersAuthFile is the auth.json AuthConfig reads, or "".
func (a AuthConfig) containersAuthFile() string {
	if a.AuthFile != "" {
		return a.AuthFile
	}
	if a.RuntimeDir != "" {
		return filepath.Join(a.RuntimeDir, "containers", "auth.json")
	}
	if a.Home != "" {
		return filepath.Join(a.Home, ".config", "containers", "auth.json")
	}
	return ""
}

func (a AuthConfig) dockerConfigFile() string {
	if a.DockerConfigDir != "" {
		return filepath.Join(a.DockerConfigDir, "config.json")
	}
	if a.Home != "" {
		return filepath.Join(a.Home, ".docker", "config.json")
	}
	return ""
}

type keychain struct{ a AuthConfig }

// authEntry is one auths entry of auth.json or config.json.
type authEntry struct {
	Auth          string `json:"auth,omitempty"`
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	IdentityToken string `json:"identitytoken,omitempty"`
}

type authFile struct {
	Auths       map[string]authEntry `json:"auths"`
	CredHelpers map[string]string    `json:"credHelpers"`
	CredsStore  string               `json:"credsStore"`
}

func readAuthFile(path string) (*authFile, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var f authFile
	if len(bytes.TrimSpace(b)) == 0 {
		return &f, nil
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &f, nil
}

// normalizeAuthKey turns an auths key ("https://index.docker.io/v1/",
// "reg.io", "http://reg.io:5000/x") into host[/path] form.
func normalizeAuthKey(k string) string {
	k = strings.TrimPrefix(strings.TrimPrefix(k, "https://"), "http://")
	k = strings.TrimSuffix(k, "/")
	if h, p, ok := strings.Cut(k, "/"); ok && (p == "v1" || p == "v2") {
		k = h
	}
	if k == "index.docker.io" || k == "registry-1.docker.io" {
		k = "docker.io"
	}
	if strings.HasPrefix(k, "index.docker.io/") || strings.HasPrefix(k, "registry-1.docker.io/") {
		_, rest, _ := strings.Cut(k, "/")
		k = "docker.io/" + rest
	}
	return k
}

// authHost is the key a registry's credentials are stored under:
// docker.io for Docker Hub, else host[:port].
func authHost(reg string) string {
	return normalizeAuthKey(reg)
}

// lookupKeys are the keys tried for target, most specific first:
// host/repo/path, ..., host.
func lookupKeys(target authn.Resource) []string {
	host := authHost(target.RegistryStr())
	keys := []string{}
	if r, ok := target.(name.Repository); ok {
		p := r.RepositoryStr()
		for p != "" {
			keys = append(keys, host+"/"+p)
			i := strings.LastIndex(p, "/")
			if i < 0 {
				break
			}
			p = p[:i]
		}
	}
	return append(keys, host)
}

func (e authEntry) config(src string) (authn.AuthConfig, error) {
	c := authn.AuthConfig{Username: e.Username, Password: e.Password, IdentityToken: e.IdentityToken}
	if e.Auth != "" {
		b, err := base64.StdEncoding.DecodeString(e.Auth)
		if err != nil {
			return c, fmt.Errorf("%s: an auth entry is not valid base64", src)
		}
		u, p, ok := strings.Cut(string(b), ":")
		if !ok {
			return c, fmt.Errorf("%s: an auth entry is not user:password", src)
		}
		c.Username, c.Password = u, p
	}
	return c, nil
}

func findEntry(f *authFile, keys []string) (authEntry, bool) {
	if f == nil || len(f.Auths) == 0 {
		return authEntry{}, false
	}
	norm := make(map[string]authEntry, len(f.Auths))
	for k, e := range f.Auths {
		if _, dup := norm[normalizeAuthKey(k)]; !dup || k == normalizeAuthKey(k) {
			norm[normalizeAuthKey(k)] = e
		}
	}
	for _, k := range keys {
		if e, ok := norm[k]; ok {
			return e, true
		}
	}
	return authEntry{}, false
}

// Resolve implements authn.Keychain.
func (k keychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	return k.ResolveContext(context.Background(), target)
}

// ResolveContext implements authn.ContextKeychain: go-containerregistry
// passes the request's context, so a credential helper that hangs is
// stopped with the command.
func (k keychain) ResolveContext(ctx context.Context, target authn.Resource) (authn.Authenticator, error) {
	keys := lookupKeys(target)
	if p := k.a.containersAuthFile(); p != "" {
		f, err := readAuthFile(p)
		if err != nil {
			return nil, err
		}
		if e, ok := findEntry(f, keys); ok {
			c, err := e.config(p)
			if err != nil {
				return nil, err
			}
			return authn.FromConfig(c), nil
		}
	}
	p := k.a.dockerConfigFile()
	f, err := readAuthFile(p)
	if err != nil || f == nil {
		return authn.Anonymous, err
	}
	if h := helperFor(f.CredHelpers, keys); h != "" {
		return k.helper(ctx, h, target.RegistryStr())
	}
	if e, ok := findEntry(f, keys); ok {
		c, err := e.config(p)
		if err != nil {
			return nil, err
		}
		if c != (authn.AuthConfig{}) {
			return authn.FromConfig(c), nil
		}
	}
	if f.CredsStore != "" {
		return k.helper(ctx, f.CredsStore, target.RegistryStr())
	}
	return authn.Anonymous, nil
}

func helperFor(m map[string]string, keys []string) string {
	if len(m) == 0 {
		return ""
	}
	norm := map[string]string{}
	for k, v := range m {
		norm[normalizeAuthKey(k)] = v
	}
	for _, k := range keys {
		if v, ok := norm[k]; ok {
			return v
		}
	}
	return ""
}

// helperServer is what a credential helper is asked for: Docker Hub's
// credentials are stored under its v1 URL.
func helperServer(reg string) string {
	if authHost(reg) == "docker.io" {
		return "https://index.docker.io/v1/"
	}
	return reg
}

// helper runs docker-credential-NAME get for reg, for at most a minute,
// and kills it when ctx is done.
func (k keychain) helper(ctx context.Context, helperName, reg string) (authn.Authenticator, error) {
	bin := "docker-credential-" + helperName
	path := ""
	for _, d := range filepath.SplitList(k.a.HelperPath) {
		if d == "" {
			continue
		}
		p := filepath.Join(d, bin)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			path = p
			break
		}
	}
	if path == "" {
		return nil, fmt.Errorf("credential helper %s for %s: not found", bin, reg)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "get")
	// A process the helper started may hold its output open after it
	// was killed: do not wait for it.
	cmd.WaitDelay = time.Second
	cmd.Stdin = strings.NewReader(helperServer(reg))
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return nil, fmt.Errorf("credential helper %s for %s: %w", bin, reg, cerr)
		}
		msg := strings.TrimSpace(out.String() + " " + stderr.String())
		if strings.Contains(strings.ToLower(msg), "credentials not found") {
			return authn.Anonymous, nil
		}
		// The helper's output is not repeated: it may hold a secret.
		return nil, fmt.Errorf("credential helper %s for %s: %v", bin, reg, err)
	}
	var c struct{ Username, Secret string }
	if err := json.Unmarshal(out.Bytes(), &c); err != nil {
		return nil, fmt.Errorf("credential helper %s for %s: output is not the expected JSON", bin, reg)
	}
	if c.Username == "<token>" {
		return authn.FromConfig(authn.AuthConfig{IdentityToken: c.Secret}), nil
	}
	return authn.FromConfig(authn.AuthConfig{Username: c.Username, Password: c.Secret}), nil
}

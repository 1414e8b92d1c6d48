package registry

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

// DefaultCertsDirs are the per-registry certificate directories read when
// Conn.CertsDirs is nil: HOST[:PORT] subdirectories holding *.crt CA
// certificates and client.cert/client.key pairs.
var DefaultCertsDirs = []string{"/etc/containers/certs.d", "/etc/docker/certs.d"}

// Conn is how registries are reached: transport, TLS and credentials. It
// is shared by PullOptions, PushOptions and CacheOptions, and Login takes
// it.
type Conn struct {
	// Insecure lists registry hosts (host[:port]) reached over plain HTTP
	// (or HTTPS without verification). localhost and 127.0.0.1 always are.
	Insecure []string
	// TLSVerify, when false, skips TLS certificate verification for every
	// registry; nil means verify.
	TLSVerify *bool
	// Auth says where credentials are found; the zero value is anonymous.
	Auth AuthConfig
	// Keychain, when not nil, is asked for credentials before Auth: a
	// go-containerregistry keychain, such as authn.NewMultiKeychain of
	// the cloud providers' keychains (google.Keychain, the ECR and ACR
	// helpers). Auth answers for the registries it leaves anonymous.
	Keychain authn.Keychain
	// CertsDirs are the certs.d base directories searched for a HOST[:PORT]
	// subdirectory; nil means DefaultCertsDirs.
	CertsDirs []string
	// CertDir, when set, is used for every registry instead of CertsDirs:
	// its *.crt are trusted CAs, its *.cert/*.key pairs client
	// certificates.
	CertDir string
	// Transport is the HTTP transport; nil means http.DefaultTransport.
	// TLS settings are applied to a clone of it when it is an
	// *http.Transport, and not at all otherwise.
	Transport http.RoundTripper
	// Timeout is how long a request may move no data (no answer, no body
	// bytes received, no upload bytes taken) before it is abandoned with
	// a *StallError and retried; 0 means DefaultTimeout, a negative value
	// no limit. It bounds no request as a whole: a large blob that keeps
	// moving takes as long as it needs.
	Timeout time.Duration
}

// stallTimeout is c.Timeout with its default applied; 0 means none.
func (c Conn) stallTimeout() time.Duration {
	switch {
	case c.Timeout < 0:
		return 0
	case c.Timeout == 0:
		return DefaultTimeout
	}
	return c.Timeout
}

// roundTripper is the transport with the TLS settings of c applied per
// registry host, and the no-progress timeout.
func (c Conn) roundTripper() http.RoundTripper {
	rt := c.tlsRoundTripper()
	if d := c.stallTimeout(); d > 0 {
		return &stallTransport{base: rt, timeout: d}
	}
	return rt
}

// tlsRoundTripper is the transport with the TLS settings of c applied per
// registry host.
func (c Conn) tlsRoundTripper() http.RoundTripper {
	tr := c.Transport
	if tr == nil {
		tr = http.DefaultTransport
	}
	base, ok := tr.(*http.Transport)
	if !ok {
		return tr
	}
	dirs := c.CertsDirs
	if dirs == nil {
		dirs = DefaultCertsDirs
	}
	return &hostTransport{base: base, skipVerify: c.TLSVerify != nil && !*c.TLSVerify, dirs: dirs, certDir: c.CertDir, m: map[string]*http.Transport{}}
}

// hostTransport picks a transport per registry host, configured with that
// host's certificates.
type hostTransport struct {
	base       *http.Transport
	skipVerify bool
	dirs       []string
	certDir    string
	mu         sync.Mutex
	m          map[string]*http.Transport
}

func (h *hostTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		return h.base.RoundTrip(req)
	}
	host := req.URL.Host
	h.mu.Lock()
	t, ok := h.m[host]
	h.mu.Unlock()
	if !ok {
		cfg, err := h.tlsConfig(host)
		if err != nil {
			if req.Body != nil {
				req.Body.Close()
			}
			return nil, err
		}
		t = h.base
		if cfg != nil {
			t = h.base.Clone()
			t.TLSClientConfig = cfg
		}
		h.mu.Lock()
		if old, ok := h.m[host]; ok {
			t = old
		} else {
			h.m[host] = t
		}
		h.mu.Unlock()
	}
	return t.RoundTrip(req)
}

// tlsConfig is host's TLS configuration, nil when the base's will do.
func (h *hostTransport) tlsConfig(host string) (*tls.Config, error) {
	var dirs []string
	if h.certDir != "" {
		dirs = []string{h.certDir}
	} else {
		for _, d := range h.dirs {
			dirs = append(dirs, filepath.Join(d, host))
			if hn, port, ok := strings.Cut(host, ":"); ok && port == "443" {
				dirs = append(dirs, filepath.Join(d, hn))
			}
		}
	}
	var cfg *tls.Config
	if h.base.TLSClientConfig != nil {
		cfg = h.base.TLSClientConfig.Clone()
	} else {
		cfg = &tls.Config{}
	}
	changed := h.skipVerify
	if h.skipVerify {
		cfg.InsecureSkipVerify = true
	}
	for _, d := range dirs {
		ents, err := os.ReadDir(d)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("certificates for %s: %w", host, err)
		}
		for _, e := range ents {
			p := filepath.Join(d, e.Name())
			switch {
			case strings.HasSuffix(e.Name(), ".crt"):
				b, err := os.ReadFile(p)
				if err != nil {
					return nil, fmt.Errorf("certificates for %s: %w", host, err)
				}
				if cfg.RootCAs == nil {
					if cfg.RootCAs, err = x509.SystemCertPool(); err != nil || cfg.RootCAs == nil {
						cfg.RootCAs = x509.NewCertPool()
					}
				}
				if !cfg.RootCAs.AppendCertsFromPEM(b) {
					return nil, fmt.Errorf("certificates for %s: %s holds no PEM certificate", host, p)
				}
				changed = true
			case strings.HasSuffix(e.Name(), ".cert"):
				key := strings.TrimSuffix(p, ".cert") + ".key"
				kp, err := tls.LoadX509KeyPair(p, key)
				if err != nil {
					return nil, fmt.Errorf("client certificate for %s: %w", host, err)
				}
				cfg.Certificates = append(cfg.Certificates, kp)
				changed = true
			case strings.HasSuffix(e.Name(), ".key"):
				if _, err := os.Stat(strings.TrimSuffix(p, ".key") + ".cert"); err != nil {
					return nil, fmt.Errorf("client certificate for %s: %s has no matching .cert", host, p)
				}
			}
		}
	}
	if !changed {
		return nil, nil
	}
	return cfg, nil
}

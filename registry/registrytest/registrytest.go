// Package registrytest starts registries for tests: Debian's
// docker-registry (distribution v2) on a free 127.0.0.1 port, and a
// reverse proxy in front of one that counts requests and can corrupt,
// fail, drop or stall them, and slow blob transfers down. It is for tests
// only.
package registrytest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/ibuild/ibuild/layers/layertest"
)

// Registry is a running docker-registry.
type Registry struct {
	// Host is "127.0.0.1:PORT", for image references.
	Host string
	// Log is the registry's log file.
	Log string
	// CACert is the PEM file of the CA that signed the server
	// certificate (TLS mode only).
	CACert string
}

// Config selects StartWith's optional modes.
type Config struct {
	// TLS serves HTTPS with a certificate for 127.0.0.1, localhost and
	// TLSNames, signed by a fresh CA (Registry.CACert).
	TLS bool
	// TLSNames are extra DNS names in the server certificate.
	TLSNames []string
	// Users, when not empty, turns on htpasswd (bcrypt) authentication
	// with these user: password pairs.
	Users map[string]string
}

// Start runs docker-registry with its storage in a temporary directory,
// waits (at most 15s) until /v2/ answers and stops it when the test ends.
// A missing docker-registry skips the test, or fails it under CI=true.
func Start(t testing.TB) *Registry {
	t.Helper()
	return StartWith(t, Config{})
}

// StartWith is Start with TLS and/or htpasswd authentication.
func StartWith(t testing.TB, c Config) *Registry {
	t.Helper()
	bin := layertest.RequireTool(t, "docker-registry")
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n",
		filepath.Join(dir, "data"), host)
	client := http.DefaultClient
	scheme := "http"
	var caPath string
	if c.TLS {
		var pool *x509.CertPool
		var certPath, keyPath string
		caPath, certPath, keyPath, pool = makeCerts(t, dir, c.TLSNames)
		cfg += fmt.Sprintf("  tls:\n    certificate: %s\n    key: %s\n", certPath, keyPath)
		client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		scheme = "https"
	}
	if len(c.Users) > 0 {
		var hp strings.Builder
		for u, p := range c.Users {
			h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&hp, "%s:%s\n", u, h)
		}
		hpPath := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(hpPath, []byte(hp.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg += fmt.Sprintf("auth:\n  htpasswd:\n    realm: ibuild-test\n    path: %s\n", hpPath)
	}
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "registry.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none")
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := client.Get(scheme + "://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || (len(c.Users) > 0 && resp.StatusCode == http.StatusUnauthorized) {
				break
			}
		}
		select {
		case <-done:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("docker-registry exited: %s", b)
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("docker-registry on %s did not answer /v2/ within 15s: %v\n%s", host, err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &Registry{Host: host, Log: logPath, CACert: caPath}
}

// makeCerts writes a CA and a server certificate for 127.0.0.1,
// localhost and names into dir.
func makeCerts(t testing.TB, dir string, names []string) (caPath, certPath, keyPath string, pool *x509.CertPool) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ibuild test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	must(err)
	ca, err := x509.ParseCertificate(caDER)
	must(err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: append([]string{"localhost"}, names...),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	must(err)
	kb, err := x509.MarshalECPrivateKey(key)
	must(err)
	caPath, certPath, keyPath = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	must(os.WriteFile(caPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644))
	must(os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	must(os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600))
	pool = x509.NewCertPool()
	pool.AddCert(ca)
	return caPath, certPath, keyPath, pool
}

// Proxy is a reverse proxy in front of a registry.
type Proxy struct {
	// Host is the proxy's "127.0.0.1:PORT".
	Host string

	mu        sync.Mutex
	requests  []string
	corrupt   map[string]bool
	uploaded  int64
	failEvery int
	failMax   int
	blobReqs  int
	failed    int
	dropEvery int
	dropMax   int
	dropReqs  int
	dropped   int
	// rate, when above 0, is how many blob bytes a second one transfer
	// moves (Throttle); served counts the blob bytes sent to clients.
	rate   int64
	served int64
	// sent and received count every request and response body byte.
	sent, received int64
	// stall* select requests that get no answer (see StallEvery); stop
	// ends every stall when the test ends.
	stallMatch string
	stallEvery int
	stallMax   int
	stallReqs  int
	stalled    int
	stop       chan struct{}
}

// stallLimit bounds how long a stalled request hangs when neither its
// client nor the end of the test ends it.
const stallLimit = 2 * time.Minute

// NewProxy serves target (host:port, plain HTTP) on a new 127.0.0.1 port
// until the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	p := &Proxy{corrupt: map[string]bool{}, stop: make(chan struct{})}
	u := &url.URL{Scheme: "http", Host: target}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method != http.MethodGet || resp.StatusCode != http.StatusOK {
			return nil
		}
		p.mu.Lock()
		bad := false
		for d := range p.corrupt {
			if strings.HasSuffix(resp.Request.URL.Path, "/blobs/"+d) {
				bad = true
			}
		}
		p.mu.Unlock()
		if !bad {
			if strings.Contains(resp.Request.URL.Path, "/blobs/") {
				resp.Body = &proxyBody{ReadCloser: resp.Body, p: p, count: &p.served}
			}
			return nil
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if len(b) > 0 {
			b[len(b)/2] ^= 0xff
		}
		resp.Body = io.NopCloser(bytes.NewReader(b))
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		line := r.Method + " " + r.URL.Path
		if r.URL.RawQuery != "" {
			line += "?" + r.URL.RawQuery
		}
		upload := (r.Method == http.MethodPatch || r.Method == http.MethodPut) && strings.Contains(r.URL.Path, "/blobs/uploads/")
		p.mu.Lock()
		p.requests = append(p.requests, line)
		fail := false
		if strings.Contains(r.URL.Path, "/blobs/") {
			p.blobReqs++
			fail = p.failEvery > 0 && p.blobReqs%p.failEvery == 0 && p.failed < p.failMax
			if fail {
				p.failed++
			}
		}
		drop := false
		if (r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/")) || upload {
			p.dropReqs++
			drop = p.dropEvery > 0 && p.dropReqs%p.dropEvery == 0 && p.dropped < p.dropMax
			if drop {
				p.dropped++
			}
		}
		stall := false
		if p.stallEvery > 0 && strings.Contains(r.Method+" "+r.URL.Path, p.stallMatch) {
			p.stallReqs++
			stall = p.stallReqs%p.stallEvery == 0 && p.stalled < p.stallMax
			if stall {
				p.stalled++
			}
		}
		p.mu.Unlock()
		if stall {
			stallConn(w, r, u, p.stop)
			return
		}
		if drop && !fail {
			dropConn(w, r, u)
			return
		}
		if fail {
			io.Copy(io.Discard, r.Body)
			http.Error(w, "injected failure", http.StatusInternalServerError)
			return
		}
		if r.Body != nil {
			var count *int64
			if upload {
				count = &p.uploaded
				p.mu.Lock()
				slow := p.rate > 0
				p.mu.Unlock()
				if slow {
					// Take the whole body first, so that a client that goes
					// away is noticed (the request's context ends) rather
					// than its socket buffers drained at the slow rate.
					b, err := io.ReadAll(r.Body)
					if err != nil {
						return
					}
					r.Body = io.NopCloser(bytes.NewReader(b))
				}
			}
			r.Body = &proxyBody{ReadCloser: r.Body, p: p, count: count, request: true}
		}
		rp.ServeHTTP(&countingWriter{ResponseWriter: w, p: p}, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(p.stop) }) // runs first: no handler keeps srv.Close waiting
	p.Host = strings.TrimPrefix(srv.URL, "http://")
	return p
}

// stallConn serves r by going silent, as a registry that was stopped
// (SIGSTOP) or lost its network would: of a GET, the full headers and
// half of the body (at least one byte) are sent; of a request with a
// body, up to half of it is read; then nothing more is sent or read until
// the client gives up, the test ends or stallLimit passes.
func stallConn(w http.ResponseWriter, r *http.Request, target *url.URL, stop <-chan struct{}) {
	if r.Method == http.MethodGet {
		out := r.Clone(r.Context())
		out.RequestURI = ""
		out.URL.Scheme, out.URL.Host, out.Host = target.Scheme, target.Host, target.Host
		resp, err := http.DefaultTransport.RoundTrip(out)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusOK && resp.ContentLength >= 2 {
			for k, v := range resp.Header {
				w.Header()[k] = v
			}
			w.WriteHeader(http.StatusOK)
			io.CopyN(w, resp.Body, resp.ContentLength/2)
			w.(http.Flusher).Flush()
		}
	} else if r.Body != nil {
		n := r.ContentLength / 2
		if n <= 0 {
			n = 32 << 10
		}
		io.CopyN(io.Discard, r.Body, n)
	}
	t := time.NewTimer(stallLimit)
	defer t.Stop()
	select {
	case <-r.Context().Done():
	case <-stop:
	case <-t.C:
	}
}

// StallEvery makes the proxy stop responding to every nth request whose
// "METHOD /path" contains match (e.g. "PATCH /v2/app/blobs/uploads/",
// "GET /v2/app/blobs/"), until max requests have stalled; n = 0 stops
// it. A stalled GET gets its headers and half of its body, a stalled
// upload has half of its body read; then the proxy neither sends nor
// reads until the client gives up (see stallConn). It returns how many
// requests stalled since the previous call.
func (p *Proxy) StallEvery(match string, n, max int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	stalled := p.stalled
	p.stallMatch, p.stallEvery, p.stallMax, p.stallReqs, p.stalled = match, n, max, 0, 0
	return stalled
}

// dropConn serves r by breaking its connection: a GET is forwarded to
// target and half of the answer's body (at least one byte) is sent after
// the full headers; of an upload, up to half of the body is read. Then
// the connection is closed.
func dropConn(w http.ResponseWriter, r *http.Request, target *url.URL) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "cannot hijack", http.StatusInternalServerError)
		return
	}
	if r.Method == http.MethodGet {
		out := r.Clone(r.Context())
		out.RequestURI = ""
		out.URL.Scheme, out.URL.Host, out.Host = target.Scheme, target.Host, target.Host
		resp, err := http.DefaultTransport.RoundTrip(out)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.ContentLength < 2 {
			for k, v := range resp.Header {
				w.Header()[k] = v
			}
			w.WriteHeader(resp.StatusCode)
			io.Copy(w, resp.Body)
			return
		}
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(http.StatusOK)
		io.CopyN(w, resp.Body, resp.ContentLength/2)
		w.(http.Flusher).Flush()
	} else if r.Body != nil {
		n := r.ContentLength / 2
		if n <= 0 {
			n = 32 << 10
		}
		io.CopyN(io.Discard, r.Body, n)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0) // reset, not a clean close
	}
	conn.Close()
}

// proxyBody is a blob body passing through the proxy: it adds what is
// read to count and, while the proxy is throttled, moves at most 16 KiB a
// read at the proxy's rate.
type proxyBody struct {
	io.ReadCloser
	p     *Proxy
	count *int64 // nil: count nothing of its own
	// request: a client's request body, also counted as sent.
	request bool
}

func (b *proxyBody) Read(q []byte) (int, error) {
	b.p.mu.Lock()
	rate := b.p.rate
	b.p.mu.Unlock()
	throttled := rate > 0 && b.count != nil
	if throttled && len(q) > 16<<10 {
		q = q[:16<<10]
	}
	n, err := b.ReadCloser.Read(q)
	b.p.mu.Lock()
	if b.count != nil {
		*b.count += int64(n)
	}
	if b.request {
		b.p.sent += int64(n)
	}
	b.p.mu.Unlock()
	if throttled && n > 0 {
		time.Sleep(time.Duration(int64(n) * int64(time.Second) / rate))
	}
	return n, err
}

// countingWriter counts the response body bytes the proxy forwards.
type countingWriter struct {
	http.ResponseWriter
	p *Proxy
}

func (w *countingWriter) Write(q []byte) (int, error) {
	n, err := w.ResponseWriter.Write(q)
	w.p.mu.Lock()
	w.p.received += int64(n)
	w.p.mu.Unlock()
	return n, err
}

// Flush lets the reverse proxy stream.
func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Transferred returns how many body bytes clients sent (every request:
// blobs, manifests) and received (every response) through the proxy so
// far, and resets both counts.
func (p *Proxy) Transferred() (sent, received int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	sent, received = p.sent, p.received
	p.sent, p.received = 0, 0
	return sent, received
}

// Uploaded returns how many request body bytes were sent to blob upload
// URLs (PATCH and PUT of /blobs/uploads/) so far, and resets the count.
func (p *Proxy) Uploaded() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.uploaded
	p.uploaded = 0
	return n
}

// Throttle limits every blob transfer through the proxy (GET of a blob,
// PATCH or PUT of an upload) to bytesPerSecond, from the next read of its
// body on; 0 lifts the limit. A client that gives up ends the transfer at
// once.
func (p *Proxy) Throttle(bytesPerSecond int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rate = bytesPerSecond
}

// Served returns how many blob bytes GET responses carried to clients so
// far.
func (p *Proxy) Served() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.served
}

// FailEvery makes the proxy answer every nth blob request (HEAD, GET,
// POST, PATCH or PUT under /blobs/) with a 500 instead of forwarding it,
// until max requests have failed; n = 0 stops it. It returns how many
// requests failed since the previous call.
func (p *Proxy) FailEvery(n, max int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	failed := p.failed
	p.failEvery, p.failMax, p.blobReqs, p.failed = n, max, 0, 0
	return failed
}

// DropEvery makes the proxy break the connection of every nth blob GET
// (after sending half of the blob) and blob upload PATCH or PUT (after
// reading up to half of its body), until max connections were dropped;
// n = 0 stops it. It returns how many connections were dropped since the
// previous call.
func (p *Proxy) DropEvery(n, max int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	dropped := p.dropped
	p.dropEvery, p.dropMax, p.dropReqs, p.dropped = n, max, 0, 0
	return dropped
}

// Corrupt makes the proxy flip a byte of blob digest ("sha256:...") in
// every GET of it.
func (p *Proxy) Corrupt(digest string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.corrupt[digest] = true
}

// Requests returns "METHOD /path" of every request so far, and forgets
// them.
func (p *Proxy) Requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.requests
	p.requests = nil
	return r
}

// BlobGets counts the GET requests for blobs in reqs.
func BlobGets(reqs []string) int {
	n := 0
	for _, r := range reqs {
		if strings.HasPrefix(r, "GET ") && strings.Contains(r, "/blobs/") {
			n++
		}
	}
	return n
}

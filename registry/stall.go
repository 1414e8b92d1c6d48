package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// DefaultTimeout is how long a request may move no data before it is
// given up and retried, when Conn.Timeout is 0.
const DefaultTimeout = 60 * time.Second

// StallError says a registry moved no data for a request for the
// no-progress timeout: it did not answer, stopped sending a body, or
// stopped reading an upload. It is temporary: pushes and pulls retry the
// request (a bounded number of times, with backoff) before they fail
// with it.
type StallError struct {
	// Registry is the host[:port] the request went to.
	Registry string
	// Method and What say which request stalled: "blob sha256:…",
	// "manifest app:1", "upload of blob sha256:…".
	Method, What string
	// After is the no-progress timeout that expired.
	After time.Duration
	// inBody is set when the stall came after the answer's headers, while
	// its body streamed: a case the HTTP-level retries do not cover.
	inBody bool
}

func (e *StallError) Error() string {
	return fmt.Sprintf("registry %s stopped responding: no data moved for %s during %s of %s (the limit is --registry-timeout)",
		e.Registry, e.After, e.Method, e.What)
}

// Timeout and Temporary make a StallError a net.Error, which the retry
// logic of pushes and pulls (ours and go-containerregistry's) retries.
func (e *StallError) Timeout() bool   { return true }
func (e *StallError) Temporary() bool { return true }

// plainStall is err, or the *StallError in it when it is a *url.Error
// around one: the stall names the request better than the URL, which for
// an upload is a long opaque session path.
func plainStall(err error) error {
	var ue *url.Error
	var se *StallError
	if errors.As(err, &ue) && errors.As(ue.Err, &se) && ue == err {
		return se
	}
	return err
}

// stallTransport gives up a request when no data moves for timeout: while
// it connects, sends its headers and body or waits for the answer, and
// while the caller reads the answer's body. Time the caller spends
// producing the upload or consuming the download does not count, only
// time spent waiting on the registry. The request's context is cancelled
// with the error, which the request and its body then return.
type stallTransport struct {
	base    http.RoundTripper
	timeout time.Duration
	// uploads maps an upload session's path to the blob being uploaded
	// (from the POST that opened it), to name the blob when a PATCH of
	// it stalls.
	uploads sync.Map
}

func (s *stallTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancelCause(req.Context())
	stall := &StallError{Registry: req.URL.Host, Method: req.Method, What: s.describe(req), After: s.timeout}
	w := newWatchdog(s.timeout, func() { cancel(stall) })
	out := req.WithContext(ctx)
	if req.Body != nil && req.Body != http.NoBody {
		out.Body = &watchedBody{rc: req.Body, w: w, stall: stall, sending: true}
	}
	if req.GetBody != nil {
		get := req.GetBody
		out.GetBody = func() (io.ReadCloser, error) {
			rc, err := get()
			if err != nil || rc == nil || rc == http.NoBody {
				return rc, err
			}
			return &watchedBody{rc: rc, w: w, stall: stall, sending: true}, nil
		}
	}
	w.networkTurn()
	resp, err := s.base.RoundTrip(out)
	if err != nil {
		fired := w.stop()
		cancel(nil)
		if fired {
			return nil, stall
		}
		return nil, err
	}
	w.callerTurn()
	s.noteUpload(req, resp)
	resp.Body = &watchedBody{rc: resp.Body, w: w, stall: stall, done: func() { w.stop(); cancel(nil) }}
	return resp, nil
}

// noteUpload remembers which blob an upload session (POST
// /v2/NAME/blobs/uploads/?mount=DIGEST, answered with its Location) is for.
func (s *stallTransport) noteUpload(req *http.Request, resp *http.Response) {
	if req.Method != http.MethodPost || !strings.HasSuffix(req.URL.Path, "/blobs/uploads/") {
		return
	}
	d := req.URL.Query().Get("mount")
	loc := resp.Header.Get("Location")
	if d == "" || loc == "" {
		return
	}
	if u, err := req.URL.Parse(loc); err == nil {
		s.uploads.Store(u.Path, d)
	}
}

// describe names what req is for, as a user knows it.
func (s *stallTransport) describe(req *http.Request) string {
	p := req.URL.Path
	q := req.URL.Query()
	if p == "/v2/" || p == "/v2" {
		return "the API check (/v2/)"
	}
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return req.URL.Redacted()
	}
	if i := strings.LastIndex(rest, "/manifests/"); i >= 0 {
		ref := rest[i+len("/manifests/"):]
		sep := ":"
		if strings.Contains(ref, ":") {
			sep = "@"
		}
		return "manifest " + rest[:i] + sep + ref
	}
	if i := strings.Index(rest, "/blobs/uploads/"); i >= 0 {
		repo := rest[:i]
		d := q.Get("digest")
		if d == "" {
			d = q.Get("mount")
		}
		if b, ok := req.Body.(interface{ blobDigest() string }); ok && d == "" {
			d = b.blobDigest()
		}
		if d == "" {
			if v, ok := s.uploads.Load(p); ok {
				d = v.(string)
			}
		}
		if d == "" {
			return "a blob upload to " + repo
		}
		return "the upload of blob " + d + " to " + repo
	}
	if i := strings.LastIndex(rest, "/blobs/"); i >= 0 {
		return "blob " + rest[i+len("/blobs/"):] + " of " + rest[:i]
	}
	return (&url.URL{Path: p}).String()
}

// watchdog fires once when it has been armed for timeout without being
// reset. Armed means the registry has the turn: data is expected from it
// or is waiting to be taken by it.
type watchdog struct {
	mu      sync.Mutex
	timer   *time.Timer
	timeout time.Duration
	fired   bool
	stopped bool
}

func newWatchdog(timeout time.Duration, fire func()) *watchdog {
	w := &watchdog{timeout: timeout}
	w.timer = time.AfterFunc(timeout, func() {
		w.mu.Lock()
		if w.stopped {
			w.mu.Unlock()
			return
		}
		w.fired = true
		w.mu.Unlock()
		fire()
	})
	return w
}

// networkTurn (re)arms the watchdog for a full timeout: data just moved,
// and the registry's part comes next.
func (w *watchdog) networkTurn() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped && !w.fired {
		w.timer.Reset(w.timeout)
	}
}

// callerTurn disarms it while the caller works (produces an upload's
// bytes or consumes the answer's).
func (w *watchdog) callerTurn() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped && !w.fired {
		w.timer.Stop()
	}
}

// stop disarms it for good and reports whether it had fired.
func (w *watchdog) stop() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	w.timer.Stop()
	return w.fired
}

func (w *watchdog) hasFired() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fired
}

// watchedBody is a request body (sending: the transport reads it) or a
// response body (the caller reads it) under a watchdog.
type watchedBody struct {
	rc      io.ReadCloser
	w       *watchdog
	stall   *StallError
	sending bool
	done    func()
	once    sync.Once
}

func (b *watchedBody) Read(p []byte) (int, error) {
	if b.sending {
		// Producing the bytes is the caller's time; sending them, the
		// registry's.
		b.w.callerTurn()
		n, err := b.rc.Read(p)
		b.w.networkTurn()
		return n, err
	}
	b.w.networkTurn()
	n, err := b.rc.Read(p)
	b.w.callerTurn()
	if err != nil && !errors.Is(err, io.EOF) && b.w.hasFired() {
		stall := *b.stall
		stall.inBody = true
		return n, &stall
	}
	return n, err
}

func (b *watchedBody) Close() error {
	err := b.rc.Close()
	if b.done != nil {
		b.once.Do(b.done)
	}
	return err
}

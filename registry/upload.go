package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/ibuild/ibuild/layers"
)

// Upload is a blob upload that streams: the bytes written to it go to the
// registry as they come, in one chunked PATCH, and Close commits the blob
// with the digest known only at the end (the distribution spec's
// streamed upload, as go-containerregistry's stream layers use it). It is
// a layers.BlobSink: a layer streams into the destination repository
// while it is compressed, so the push that follows finds it there.
//
// An Upload is an optimization and never fails or holds up what feeds
// it: Write queues at most UploadQueue bytes, and when the registry does
// not take them within UploadPatience (a registry slower than the
// compressor, or stalled) the upload is abandoned and the rest dropped;
// Close waits as long for the queue to drain. An abandoned or failed
// upload is cancelled at Close, whose error says why. The push then
// uploads the blob the store committed and verified, never a partial one.
type Upload struct {
	ctx    context.Context
	cancel context.CancelFunc
	client *http.Client
	q      chan []byte   // chunks for the PATCH body; closed at Close
	abort  chan struct{} // closed when the upload is abandoned
	done   chan struct{} // closed when the PATCH has returned
	pool   sync.Pool

	mu       sync.Mutex
	err      error  // the first failure
	location string // where the upload continues (from the POST, then the PATCH)
	written  int64
}

// UploadQueue and UploadPatience bound what an Upload may hold and wait
// for (see Upload).
const (
	UploadQueue    = 8 << 20
	UploadPatience = 2 * time.Second
)

// uploadChunk is the size of the queue's chunks.
const uploadChunk = 512 << 10

// StartUpload starts a streamed blob upload to the repository of dest (an
// image reference; only its repository matters). It does not wait for
// the registry: the handshake and the upload run while Write queues.
func StartUpload(ctx context.Context, dest string, conn Conn) (*Upload, error) {
	ref, err := ParseReference(dest, conn.Insecure)
	if err != nil {
		return nil, err
	}
	repo := ref.Context()
	ctx, cancel := context.WithCancel(ctx)
	u := &Upload{
		ctx: ctx, cancel: cancel,
		q:     make(chan []byte, UploadQueue/uploadChunk),
		abort: make(chan struct{}),
		done:  make(chan struct{}),
	}
	go func() {
		defer close(u.done)
		err := u.run(ctx, repo, conn)
		if err != nil {
			u.mu.Lock()
			u.fail(fmt.Errorf("upload to %s: %w", repo, err))
			u.mu.Unlock()
		}
	}()
	return u, nil
}

// run authenticates, opens the upload session and sends the queue as its
// body.
func (u *Upload) run(ctx context.Context, repo name.Repository, conn Conn) error {
	auth, err := authn.Resolve(ctx, conn.keychain(), repo)
	if err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	tr, err := transport.NewWithContext(ctx, repo.Registry, auth, conn.roundTripper(), []string{repo.Scope(transport.PushScope)})
	if err != nil {
		return err
	}
	u.client = &http.Client{Transport: tr}
	start := fmt.Sprintf("%s://%s/v2/%s/blobs/uploads/", repo.Scheme(), repo.RegistryStr(), repo.RepositoryStr())
	loc, err := u.request(ctx, http.MethodPost, start, nil, http.StatusAccepted)
	if err != nil {
		return err
	}
	u.mu.Lock()
	u.location = loc
	u.mu.Unlock()
	next, err := u.request(ctx, http.MethodPatch, loc, &queueReader{u: u}, http.StatusAccepted, http.StatusNoContent, http.StatusCreated)
	if err != nil {
		return err
	}
	if next != "" {
		u.mu.Lock()
		u.location = next
		u.mu.Unlock()
	}
	return nil
}

// request sends one request of the upload protocol and returns the
// response's Location, resolved against the request's URL.
func (u *Upload) request(ctx context.Context, method, target string, body io.Reader, want ...int) (string, error) {
	req, err := http.NewRequestWithContext(ctx, method, target, body)
	if err != nil {
		return "", err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, want...); err != nil {
		return "", err
	}
	loc := resp.Header.Get("Location")
	if loc == "" {
		return "", nil
	}
	base, err := url.Parse(target)
	if err != nil {
		return "", err
	}
	next, err := base.Parse(loc)
	if err != nil {
		return "", fmt.Errorf("bad Location %q: %w", loc, err)
	}
	return next.String(), nil
}

// fail records the upload's first failure and abandons it; u.mu is held.
func (u *Upload) fail(err error) {
	if u.err == nil {
		u.err = err
		close(u.abort)
	}
}

// failed reports whether the upload was abandoned.
func (u *Upload) failed() bool {
	select {
	case <-u.abort:
		return true
	default:
		return false
	}
}

// Write queues p for the registry. It always reports success: once the
// registry falls behind or fails, the rest is dropped (see Upload).
func (u *Upload) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 && !u.failed() {
		k := min(len(p), uploadChunk)
		buf, _ := u.pool.Get().([]byte)
		buf = append(buf[:0], p[:k]...)
		p = p[k:]
		timer := time.NewTimer(UploadPatience)
		select {
		case u.q <- buf:
		case <-u.abort:
		case <-timer.C:
			u.mu.Lock()
			u.fail(fmt.Errorf("the registry took no data for %v", UploadPatience))
			u.mu.Unlock()
		}
		timer.Stop()
	}
	return n, nil
}

// queueReader is the PATCH body: the queued chunks, until the queue is
// closed (EOF) or the upload abandoned.
type queueReader struct {
	u   *Upload
	cur []byte
	buf []byte // cur's whole chunk, for the pool
}

func (r *queueReader) Read(p []byte) (int, error) {
	if len(r.cur) == 0 {
		if r.buf != nil {
			r.u.pool.Put(r.buf[:0])
			r.buf = nil
		}
		select {
		case b, ok := <-r.u.q:
			if !ok {
				return 0, io.EOF
			}
			r.cur, r.buf = b, b
		case <-r.u.abort:
			return 0, errors.New("upload abandoned")
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	r.u.mu.Lock()
	r.u.written += int64(n)
	r.u.mu.Unlock()
	return n, nil
}

// Close ends the upload: with the blob's descriptor d (its digest and
// size) and no error it waits (UploadPatience at most) for the registry
// to take the rest and commits the blob under d's digest; otherwise, or
// when the upload was abandoned, it cancels the upload. The error says
// why the blob is not in the repository; the caller's push uploads it
// then.
func (u *Upload) Close(d layers.Descriptor, cerr error) error {
	defer u.cancel()
	if cerr == nil && d.Digest.Hex == "" {
		cerr = errors.New("no digest")
	}
	u.mu.Lock()
	if cerr != nil {
		u.fail(cerr)
	}
	u.mu.Unlock()
	close(u.q)
	timer := time.NewTimer(UploadPatience)
	defer timer.Stop()
	select {
	case <-u.done:
	case <-timer.C:
		u.mu.Lock()
		u.fail(fmt.Errorf("the registry did not take the rest of the blob within %v", UploadPatience))
		u.mu.Unlock()
		u.cancel() // ends the PATCH even before it reads its body
		<-u.done
	}
	u.mu.Lock()
	err, loc, written := u.err, u.location, u.written
	u.mu.Unlock()
	if err == nil && written != d.Size {
		err = fmt.Errorf("the registry took %d of the blob's %d bytes", written, d.Size)
	}
	if err != nil {
		// Best effort, briefly: the registry drops the upload session
		// (it expires them anyway).
		if loc != "" && u.client != nil {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(u.ctx), UploadPatience)
			_, _ = u.request(dctx, http.MethodDelete, loc, nil, http.StatusNoContent, http.StatusAccepted, http.StatusOK, http.StatusNotFound)
			cancel()
		}
		return fmt.Errorf("streamed upload of %s: %w", d.Digest, err)
	}
	put, err := url.Parse(loc)
	if err != nil {
		return err
	}
	q := put.Query()
	q.Set("digest", d.Digest.String())
	put.RawQuery = q.Encode()
	if _, err := u.request(u.ctx, http.MethodPut, put.String(), nil, http.StatusCreated); err != nil {
		return fmt.Errorf("streamed upload of %s: commit: %w", d.Digest, err)
	}
	return nil
}

var _ layers.BlobSink = (*Upload)(nil)

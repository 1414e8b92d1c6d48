package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
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
// An Upload is an optimization and never fails what feeds it: a write
// the registry does not take marks the upload failed and drops the rest,
// and a failed upload is cancelled at Close, whose error says why. The
// push then uploads the blob the store committed and verified, never a
// partial one.
type Upload struct {
	ctx    context.Context
	cancel context.CancelFunc
	client *http.Client
	pw     *io.PipeWriter
	done   chan struct{} // closed when the PATCH has returned

	mu       sync.Mutex
	err      error  // the first failure
	location string // where the upload continues (from the POST, then the PATCH)
	written  int64
}

// StartUpload starts a streamed blob upload to the repository of dest (an
// image reference; only its repository matters).
func StartUpload(ctx context.Context, dest string, conn Conn) (*Upload, error) {
	ref, err := ParseReference(dest, conn.Insecure)
	if err != nil {
		return nil, err
	}
	repo := ref.Context()
	auth, err := authn.Resolve(ctx, conn.keychain(), repo)
	if err != nil {
		return nil, fmt.Errorf("upload to %s: credentials: %w", repo, err)
	}
	tr, err := transport.NewWithContext(ctx, repo.Registry, auth, conn.roundTripper(), []string{repo.Scope(transport.PushScope)})
	if err != nil {
		return nil, fmt.Errorf("upload to %s: %w", repo, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	u := &Upload{ctx: ctx, cancel: cancel, client: &http.Client{Transport: tr}, done: make(chan struct{})}
	start := fmt.Sprintf("%s://%s/v2/%s/blobs/uploads/", repo.Scheme(), repo.RegistryStr(), repo.RepositoryStr())
	loc, err := u.request(http.MethodPost, start, nil, http.StatusAccepted)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("upload to %s: %w", repo, err)
	}
	u.location = loc
	pr, pw := io.Pipe()
	u.pw = pw
	go func() {
		defer close(u.done)
		next, err := u.request(http.MethodPatch, loc, pr, http.StatusAccepted, http.StatusNoContent, http.StatusCreated)
		pr.CloseWithError(err) // unblock a writer when the registry stopped reading
		u.mu.Lock()
		defer u.mu.Unlock()
		if err != nil {
			u.fail(err)
			return
		}
		if next != "" {
			u.location = next
		}
	}()
	return u, nil
}

// request sends one request of the upload protocol and returns the
// response's Location, resolved against the request's URL.
func (u *Upload) request(method, target string, body io.Reader, want ...int) (string, error) {
	req, err := http.NewRequestWithContext(u.ctx, method, target, body)
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

// fail records the upload's first failure; u.mu is held.
func (u *Upload) fail(err error) {
	if u.err == nil {
		u.err = err
	}
}

// Write sends p to the registry. It always reports success: once the
// registry stops taking bytes, the rest are dropped (see Upload).
func (u *Upload) Write(p []byte) (int, error) {
	u.mu.Lock()
	failed := u.err != nil
	u.mu.Unlock()
	if failed {
		return len(p), nil
	}
	n, err := u.pw.Write(p)
	u.mu.Lock()
	u.written += int64(n)
	if err != nil {
		u.fail(err)
	}
	u.mu.Unlock()
	return len(p), nil
}

// Close ends the upload: with the blob's descriptor d (its digest and
// size) and no error it commits the blob under d's digest; otherwise, or
// when the upload failed before, it cancels the upload. The error says
// why the blob is not in the repository; the caller's push uploads it
// then.
func (u *Upload) Close(d layers.Descriptor, cerr error) error {
	defer u.cancel()
	if cerr == nil && d.Digest.Hex == "" {
		cerr = errors.New("no digest")
	}
	if cerr != nil {
		u.pw.CloseWithError(cerr)
	} else {
		u.pw.Close()
	}
	<-u.done
	u.mu.Lock()
	err, loc, written := u.err, u.location, u.written
	u.mu.Unlock()
	if err == nil && cerr == nil && written != d.Size {
		err = fmt.Errorf("the registry took %d of the blob's %d bytes", written, d.Size)
	}
	if err == nil {
		err = cerr
	}
	if err != nil {
		// Best effort: the registry drops the upload session.
		if loc != "" {
			_, _ = u.request(http.MethodDelete, loc, nil, http.StatusNoContent, http.StatusAccepted, http.StatusOK, http.StatusNotFound)
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
	if _, err := u.request(http.MethodPut, put.String(), nil, http.StatusCreated); err != nil {
		return fmt.Errorf("streamed upload of %s: commit: %w", d.Digest, err)
	}
	return nil
}

var _ layers.BlobSink = (*Upload)(nil)

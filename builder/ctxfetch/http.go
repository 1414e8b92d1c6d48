package ctxfetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
)

// HTTP downloads the context at rawURL: a tarball (gzip, bzip2, zstd or
// none) whose content is the context, or a plain Dockerfile with an empty
// context, as docker build does with a URL. The download is streamed into
// the extraction, bounded by opts.MaxDownload bytes as served and
// opts.MaxExtract bytes uncompressed. client nil means
// http.DefaultClient.
func HTTP(ctx context.Context, client *http.Client, rawURL string, opts Options) (*Fetched, error) {
	if client == nil {
		client = http.DefaultClient
	}
	shown := Redact(rawURL)
	fail := func(err error) (*Fetched, error) {
		return nil, fmt.Errorf("fetch context %s: %w", shown, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return fail(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		var ue interface{ Unwrap() error }
		if errors.As(err, &ue) && ue.Unwrap() != nil {
			err = ue.Unwrap() // the url.Error repeats the URL, with its secret
		}
		return fail(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fail(fmt.Errorf("the server answered %s", resp.Status))
	}
	max := opts.maxDownload()
	if resp.ContentLength > max {
		return fail(fmt.Errorf("%d bytes, over the limit of %d for a downloaded context", resp.ContentLength, max))
	}
	top, err := opts.newTop("context-")
	if err != nil {
		return nil, err
	}
	f := &Fetched{Dir: filepath.Join(top, "context"), top: top, ID: "url " + shown}
	body := &downloadLimit{r: resp.Body, left: max, max: max}
	opts.progress("fetching context %s", shown)
	if err := unpack(ctx, body, f, shown, &opts); err != nil {
		f.Close()
		var dl *downloadLimitError
		if errors.As(err, &dl) {
			return fail(dl)
		}
		return nil, fmt.Errorf("context %s: %w", shown, err)
	}
	return f, nil
}

// downloadLimit fails a body that goes past its limit.
type downloadLimit struct {
	r         io.Reader
	left, max int64
}

type downloadLimitError struct{ max int64 }

func (e *downloadLimitError) Error() string {
	return fmt.Sprintf("the download is over the limit of %d bytes for a context", e.max)
}

func (d *downloadLimit) Read(p []byte) (int, error) {
	if int64(len(p)) > d.left+1 {
		p = p[:d.left+1]
	}
	n, err := d.r.Read(p)
	d.left -= int64(n)
	if d.left < 0 {
		return 0, &downloadLimitError{d.max}
	}
	return n, err
}

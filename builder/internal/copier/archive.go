package copier

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/ibuild/ibuild/layers"
)

// openArchive opens a local file as a tar stream if it is a tar archive,
// plain or compressed with gzip, bzip2, xz or zstd (ADD's auto-extraction,
// judged by content as docker does, not by name). ok is false otherwise.
func openArchive(hostPath string) (rc io.ReadCloser, ok bool, err error) {
	f, err := os.Open(hostPath)
	if err != nil {
		return nil, false, err
	}
	br := bufio.NewReaderSize(f, 64<<10)
	magic, _ := br.Peek(6)
	var r io.Reader
	var closer func()
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		gz, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			return nil, false, nil
		}
		r, closer = gz, func() { gz.Close() }
	case bytes.HasPrefix(magic, []byte("BZh")):
		r = bzip2.NewReader(br)
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		x, err := xz.NewReader(br)
		if err != nil {
			f.Close()
			return nil, false, nil
		}
		r = x
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		z, err := zstd.NewReader(br)
		if err != nil {
			f.Close()
			return nil, false, nil
		}
		r, closer = z, z.Close
	default:
		r = br
	}
	tbr := bufio.NewReaderSize(r, 1024)
	hdr, err := tbr.Peek(512)
	if err != nil || !isTarHeader(hdr) {
		if closer != nil {
			closer()
		}
		f.Close()
		return nil, false, nil
	}
	return readCloser{tbr, func() error {
		if closer != nil {
			closer()
		}
		return f.Close()
	}}, true, nil
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r readCloser) Close() error { return r.close() }

// isTarHeader reports whether b (512 bytes) is a valid tar header block.
func isTarHeader(b []byte) bool {
	if len(b) < 512 {
		return false
	}
	_, err := tar.NewReader(bytes.NewReader(b)).Next()
	return err == nil || errors.Is(err, io.ErrUnexpectedEOF)
}

func isArchive(hostPath string) bool {
	rc, ok, err := openArchive(hostPath)
	if err == nil && ok {
		rc.Close()
	}
	return err == nil && ok
}

// ExtractArchive extracts the archive at hostPath into the resolved layer
// directory destDir, confined to that directory. With o set, every
// extracted entry is owned by it (ADD --chown).
func ExtractArchive(ctx context.Context, l *LayerDir, hostPath, destDir string, o *Owner, warn func(string)) error {
	rc, ok, err := openArchive(hostPath)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%s is not a tar archive", filepath.Base(hostPath))
	}
	defer rc.Close()
	root := l.host(destDir)
	err = layers.Extract(ctx, rc, root, layers.ExtractOptions{
		Whiteouts:   layers.RejectWhiteouts,
		Source:      filepath.Base(hostPath),
		Rootless:    !l.root,
		RecordOwner: true,
		Warn:        warn,
	})
	if err != nil {
		return err
	}
	if o == nil {
		return nil
	}
	// ADD --chown: every extracted entry gets the owner.
	want := *o
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		isLink := fi.Mode()&fs.ModeSymlink != 0
		if err := l.setMeta(p, fi.Mode(), want, isLink); err != nil {
			return err
		}
		if d.IsDir() {
			l.dirTimes[p] = fi.ModTime()
		} else if !isLink {
			return SetMtime(p, fi.ModTime())
		}
		return nil
	})
	return err
}

// Fetched is a downloaded ADD URL.
type Fetched struct {
	Path     string
	Name     string
	ModTime  time.Time
	Checksum string
	// ETag and LastModified are the server's validators; notModified is
	// set when a conditional request found the content unchanged.
	ETag, LastModified string
	NotModified        bool
}

// FetchURL downloads rawURL into dir, verifying checksum ("sha256:<hex>")
// when given. The file name is taken from Content-Disposition when present,
// else from the URL's last path element, as docker does.
func FetchURL(ctx context.Context, client *http.Client, rawURL, checksum, dir string) (*Fetched, error) {
	return FetchURLIf(ctx, client, rawURL, checksum, dir, nil)
}

// URLValidators are what a server said about a URL's content last time:
// its validators (ETag, Last-Modified) and what the content was.
type URLValidators struct {
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
	Digest       string `json:"digest"`
	Name         string `json:"name"`
	ModTime      int64  `json:"mtime"`
}

// FetchURLIf is FetchURL with a conditional request when prev has
// validators: a 304 answer gives a Fetched with NotModified set and no
// file.
func FetchURLIf(ctx context.Context, client *http.Client, rawURL, checksum, dir string, prev *URLValidators) (*Fetched, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("invalid URL %q: %w", rawURL, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, err
	}
	if prev != nil {
		if prev.ETag != "" {
			req.Header.Set("If-None-Match", prev.ETag)
		}
		if prev.LastModified != "" {
			req.Header.Set("If-Modified-Since", prev.LastModified)
		}
	}
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", RedactURL(u), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotModified && prev != nil {
		return &Fetched{NotModified: true, ETag: resp.Header.Get("ETag"), LastModified: resp.Header.Get("Last-Modified")}, nil
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("download %s: server answered %s", RedactURL(u), resp.Status)
	}
	f, err := os.CreateTemp(dir, "add-*")
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), resp.Body); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("download %s: %w", RedactURL(u), err)
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	sum := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if checksum != "" && checksum != sum {
		os.Remove(f.Name())
		return nil, fmt.Errorf("checksum mismatch for %s: want %s, got %s", RedactURL(u), checksum, sum)
	}
	out := &Fetched{Path: f.Name(), Checksum: sum, ModTime: time.Now(),
		ETag: resp.Header.Get("ETag"), LastModified: resp.Header.Get("Last-Modified")}
	if lm := resp.Header.Get("Last-Modified"); lm != "" {
		if t, err := http.ParseTime(lm); err == nil {
			out.ModTime = t
		}
	}
	out.Name = downloadName(u, resp.Header.Get("Content-Disposition"))
	return out, nil
}

// downloadName is the file name of a download: the filename of its
// Content-Disposition, else the last element of the URL's path,
// "__unnamed__" for a URL without a path (as docker names it), and ""
// when the path ends in "..": no name can be derived.
func downloadName(u *url.URL, contentDisposition string) string {
	if contentDisposition != "" {
		if _, params, err := mime.ParseMediaType(contentDisposition); err == nil && params["filename"] != "" {
			switch name := path.Base(params["filename"]); name {
			case "/", ".", "..":
			default:
				return name
			}
		}
	}
	switch name := path.Base(u.Path); name {
	case "..":
		return ""
	case "/", ".":
		return "__unnamed__"
	default:
		return name
	}
}

// RedactURL drops user info and query, which may hold credentials.
func RedactURL(u *url.URL) string {
	c := *u
	c.User = nil
	c.RawQuery = ""
	return c.String()
}

// IsURL reports whether an ADD source is an http(s) URL.
func IsURL(s string) bool {
	return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")
}

// IsGitURL reports whether an ADD source names a git repository.
func IsGitURL(s string) bool {
	return strings.HasPrefix(s, "git@") || strings.HasPrefix(s, "git://") ||
		(IsURL(s) && strings.Contains(s, ".git") && (strings.HasSuffix(s, ".git") || strings.Contains(s, ".git#")))
}

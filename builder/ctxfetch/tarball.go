package ctxfetch

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/ibuild/ibuild/layers"
)

// Limits on what is fetched. Both are far above real build contexts;
// Options override them.
const (
	// DefaultMaxDownload bounds the bytes of an http(s) context (the
	// tarball as served, compressed or not): 1 GiB.
	DefaultMaxDownload int64 = 1 << 30
	// DefaultMaxExtract bounds the uncompressed tar stream of a context
	// (a downloaded tarball or standard input): 8 GiB. It stops a small
	// compressed file that expands without end (a decompression bomb).
	DefaultMaxExtract int64 = 8 << 30
	// MaxDockerfileSize bounds a plain Dockerfile served instead of a
	// tarball, as the Dockerfile read from a file is bounded (16 MiB).
	MaxDockerfileSize = 16 << 20
)

// Options configure the fetches.
type Options struct {
	// TempDir is where fetched contexts are put (a directory of its own
	// is made in it for each); "" means os.TempDir().
	TempDir string
	// MaxDownload and MaxExtract bound a download and an uncompressed tar
	// stream; 0 means DefaultMaxDownload and DefaultMaxExtract.
	MaxDownload, MaxExtract int64
	// Progress receives one line per fetch; nil discards them.
	Progress func(string)
}

func (o *Options) maxDownload() int64 {
	if o.MaxDownload > 0 {
		return o.MaxDownload
	}
	return DefaultMaxDownload
}

func (o *Options) maxExtract() int64 {
	if o.MaxExtract > 0 {
		return o.MaxExtract
	}
	return DefaultMaxExtract
}

func (o *Options) progress(format string, args ...any) {
	if o.Progress != nil {
		o.Progress(fmt.Sprintf(format, args...))
	}
}

// Fetched is a context made local.
type Fetched struct {
	// Dir is the context's root directory.
	Dir string
	// Dockerfile, when not nil, is a plain Dockerfile that came instead of
	// an archive (Dir is then an empty directory), as docker build takes a
	// URL or standard input that is not an archive.
	Dockerfile []byte
	// ID names the context stably across fetches, for the build cache's
	// per-context state: a git remote and subdir (not the ref), a URL.
	ID string
	// Commit is the commit a git context was checked out at.
	Commit string
	// CommitTime is that commit's committer time (Unix seconds).
	CommitTime int64

	top string
}

// Close removes the fetched files.
func (f *Fetched) Close() error {
	if f == nil || f.top == "" {
		return nil
	}
	return removeAll(f.top)
}

// removeAll removes dir, first making its directories writable (a
// context may hold read-only directories).
func removeAll(dir string) error {
	if err := os.RemoveAll(dir); err == nil {
		return nil
	}
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(dir)
}

// newTop makes the directory a fetch works in.
func (o *Options) newTop(prefix string) (string, error) {
	dir := o.TempDir
	if dir == "" {
		dir = os.TempDir()
	}
	return os.MkdirTemp(dir, prefix)
}

// Tar reads a build context from r (standard input): a tar archive,
// possibly compressed with gzip, bzip2 or zstd, whose content becomes the
// context; or, when r is no archive, a plain Dockerfile with an empty
// context, as docker build - does. name names r in errors.
func Tar(ctx context.Context, r io.Reader, name string, opts Options) (*Fetched, error) {
	top, err := opts.newTop("context-")
	if err != nil {
		return nil, err
	}
	f := &Fetched{Dir: filepath.Join(top, "context"), top: top, ID: name}
	if err := unpack(ctx, r, f, name, &opts); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// unpack fills f.Dir from r: an archive, or a Dockerfile.
func unpack(ctx context.Context, r io.Reader, f *Fetched, name string, opts *Options) error {
	if err := os.Mkdir(f.Dir, 0o755); err != nil {
		return err
	}
	br := bufio.NewReaderSize(r, 64<<10)
	head, err := br.Peek(6)
	if err != nil && err != io.EOF {
		return fmt.Errorf("%s: %w", name, err)
	}
	var plain io.Reader
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}), bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		rc, err := layers.Decompress(br)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		defer rc.Close()
		plain = rc
	case bytes.HasPrefix(head, []byte("BZh")):
		plain = bzip2.NewReader(br)
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return fmt.Errorf("%s: xz-compressed archives are not supported: decompress it (xz -d) or use gzip, bzip2 or zstd", name)
	default:
		plain = br
	}
	limited := &limitReader{r: plain, left: opts.maxExtract(), name: name}
	pr := bufio.NewReaderSize(limited, 64<<10)
	block, err := pr.Peek(512)
	if err != nil && err != io.EOF {
		return fmt.Errorf("%s: %w", name, err)
	}
	if !isTarHeader(block) {
		if plain != io.Reader(br) {
			return fmt.Errorf("%s: compressed, but not a tar archive", name)
		}
		data, err := io.ReadAll(io.LimitReader(pr, MaxDockerfileSize+1))
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if len(data) > MaxDockerfileSize {
			return fmt.Errorf("%s is neither a tar archive nor a Dockerfile of at most %d bytes", name, MaxDockerfileSize)
		}
		f.Dockerfile = data
		return nil
	}
	err = layers.Extract(ctx, pr, f.Dir, layers.ExtractOptions{
		Whiteouts:   layers.KeepWhiteouts,
		Source:      name,
		Rootless:    true, // no device nodes from a context
		NoSameOwner: true, // files belong to whoever builds
		Warn:        opts.Progress,
	})
	if err != nil {
		var le *limitError
		if errors.As(err, &le) {
			return le
		}
		return err
	}
	return nil
}

// isTarHeader reports whether block starts a tar archive: a ustar or GNU
// magic, or a v7 header whose checksum is right.
func isTarHeader(block []byte) bool {
	if len(block) < 512 {
		return false
	}
	if bytes.Equal(block[257:262], []byte("ustar")) {
		return true
	}
	// v7: the checksum field holds the sum of the header's bytes with the
	// field itself counted as spaces.
	var sum int64
	for i, c := range block[:512] {
		if i >= 148 && i < 156 {
			c = ' '
		}
		sum += int64(c)
	}
	field := bytes.TrimRight(bytes.TrimLeft(block[148:156], " "), " \x00")
	var want int64
	if len(field) == 0 {
		return false
	}
	for _, c := range field {
		if c < '0' || c > '7' {
			return false
		}
		want = want*8 + int64(c-'0')
	}
	return want == sum && block[0] != 0
}

// limitReader fails once more than left bytes are read.
type limitReader struct {
	r    io.Reader
	left int64
	max  int64
	name string
}

// limitError is a stream over its limit.
type limitError struct {
	name  string
	limit int64
}

func (e *limitError) Error() string {
	return fmt.Sprintf("%s expands to more than %d bytes, the limit for a build context: send a smaller context (a .dockerignore'd directory, or a git URL)", e.name, e.limit)
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.max == 0 {
		l.max = l.left
	}
	if l.left <= 0 {
		// Anything past the limit is an error; EOF right at it is not.
		var one [1]byte
		if n, _ := l.r.Read(one[:]); n > 0 {
			return 0, &limitError{l.name, l.max}
		}
		return 0, io.EOF
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

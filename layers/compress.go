package layers

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"runtime"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// defaultGzipLevel is the gzip level used when CommitOptions.Level is 0.
//
// Every layer that leaves the machine (pushed, written, stored as an
// image, exported as a cache) is compressed once, on the build's path, so
// the default favours speed.
// Measured with BenchmarkCommitDir on 2 cores (64 MiB of semi-compressible
// files, best of 4-5 runs): klauspost/pgzip at level 2 commits ~175 MB/s
// against ~27 MB/s for `tar | gzip -6`, and its output is slightly smaller
// than gzip -6's; level 1 is no faster here and ~5% larger, levels 3-6 are
// slower and barely smaller. The single-stream klauspost/compress/gzip
// writer reached ~88 MB/s at level 2: on two cores pgzip's parallel blocks
// win, so pgzip is used. Its output depends only on the level and block size
// (not on the CPU count), so digests are reproducible.
const defaultGzipLevel = 2

// zstdFastWindow is the window for the fast zstd levels (the default one
// included). The encoder's parallel mode keeps several jobs of 4x the
// window in flight, so the window sets its memory: with 512 KiB a 1 GiB
// commit peaks at ~65 MB (2 MiB: ~180 MB, over the 150 MB budget), for
// ~3% larger blobs. See docs/performance.md.
const zstdFastWindow = 512 << 10

// defaultZstdLevel is the zstd level when CommitOptions.Level is 0: the
// library's fastest, which on 2 cores keeps up with `tar | zstd -3 -T0`
// (the Go encoder's default level does not: ~0.8x) at ~3% larger blobs.
const defaultZstdLevel = zstd.SpeedFastest

// CommitDir stores a layer made from dir (see WriteTar) in one streaming
// pass: the tar is hashed for the diffID, compressed, and the compressed
// bytes are hashed while they are written to the store. Nothing is held in
// memory whole. Committing the same content twice yields the same digest
// and stores the blob once.
func (s *BlobStore) CommitDir(ctx context.Context, dir string, opts CommitOptions) (Descriptor, error) {
	return s.CommitDirTo(ctx, dir, opts, nil)
}

// BlobSink is given a blob's compressed bytes while CommitDirTo makes
// them: a registry upload that streams the layer as it is compressed.
// Write never fails the commit: a sink that cannot take more bytes drops
// them and says so at Close. Close is called once: with the blob's
// descriptor as soon as its last byte is written (while the store syncs
// its own copy, so a registry's commit and the store's fsync overlap), or
// with the error that ended the stream.
type BlobSink interface {
	io.Writer
	Close(d Descriptor, err error) error
}

// CommitDirTo is CommitDir that also writes the compressed bytes to sink
// (when not nil) as they are made, and closes it. The blob is committed
// to the store whatever becomes of sink; sink's Close error is not the
// commit's.
func (s *BlobStore) CommitDirTo(ctx context.Context, dir string, opts CommitOptions, sink BlobSink) (d Descriptor, err error) {
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pw.CloseWithError(WriteTar(ctx, pw, dir, opts.TarOptions))
	}()
	d, err = s.commitTar(ctx, pr, opts, sink)
	// Unblock the tar writer if CommitTar stopped early, then wait for it.
	if err != nil {
		pr.CloseWithError(err)
	} else {
		pr.Close()
	}
	<-done
	if err != nil {
		return Descriptor{}, fmt.Errorf("commit %s: %w", dir, err)
	}
	return d, nil
}

// CommitTar stores the uncompressed layer tar read from tarStream,
// compressed as opts says, in one streaming pass (see CommitDir).
func (s *BlobStore) CommitTar(ctx context.Context, tarStream io.Reader, opts CommitOptions) (Descriptor, error) {
	return s.commitTar(ctx, tarStream, opts, nil)
}

// commitTar is CommitTar whose compressed bytes also go to sink, when
// not nil; it closes sink (see BlobSink).
func (s *BlobStore) commitTar(ctx context.Context, tarStream io.Reader, opts CommitOptions, sink BlobSink) (d Descriptor, err error) {
	sinkOpen := sink != nil
	defer func() {
		if sinkOpen {
			_ = sink.Close(Descriptor{}, err)
		}
	}()
	c := opts.Compression
	if c == "" {
		c = Gzip
	}
	bw, err := s.NewWriter(ctx)
	if err != nil {
		return Descriptor{}, err
	}
	defer bw.Close()
	var to io.Writer = bw
	if sink != nil {
		// The registry gets the bytes now; the store's copy is only
		// read again by a later push or output.
		bw.DropBehind()
		to = io.MultiWriter(bw, sink)
	}
	out := bufio.NewWriterSize(to, copyBufSize)
	zw, err := newCompressor(out, c, opts.Level)
	if err != nil {
		return Descriptor{}, err
	}
	diff := &hashCounter{h: sha256.New()}
	buf := make([]byte, copyBufSize)
	_, err = io.CopyBuffer(io.MultiWriter(diff, zw), ctxReader{ctx, tarStream}, buf)
	if cerr := zw.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("compress: %w", cerr)
	}
	if err == nil {
		err = out.Flush()
	}
	s.compressedIn.Add(diff.n)
	if err != nil {
		return Descriptor{}, err
	}
	d = Descriptor{
		MediaType:        c.MediaType(),
		Digest:           bw.Digest(),
		Size:             bw.Size(),
		DiffID:           v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(diff.h.Sum(nil))},
		UncompressedSize: diff.n,
	}
	// The sink has every byte: let it finish (a registry's commit) while
	// the store syncs its copy.
	var sinkDone chan struct{}
	if sinkOpen {
		sinkOpen = false
		sinkDone = make(chan struct{})
		go func() {
			defer close(sinkDone)
			_ = sink.Close(d, nil)
		}()
	}
	_, _, err = bw.Commit(&d.Digest)
	if sinkDone != nil {
		<-sinkDone
	}
	if err != nil {
		return Descriptor{}, err
	}
	return d, nil
}

// hashCounter hashes and counts what is written to it.
type hashCounter struct {
	h hash.Hash
	n int64
}

func (w *hashCounter) Write(p []byte) (int, error) {
	w.h.Write(p)
	w.n += int64(len(p))
	return len(p), nil
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// newCompressor returns a writer compressing into w. Closing it finishes the
// compressed stream but does not close w.
func newCompressor(w io.Writer, c Compression, level int) (io.WriteCloser, error) {
	switch c {
	case Gzip:
		if level == 0 {
			level = defaultGzipLevel
		}
		if level < 1 || level > 9 {
			return nil, fmt.Errorf("gzip level %d out of range 1-9", level)
		}
		return newGzipWriter(w, level, runtime.GOMAXPROCS(0)), nil
	case Zstd:
		el := defaultZstdLevel
		switch {
		case level > 22:
			return nil, fmt.Errorf("zstd level %d out of range 1-22", level)
		case level != 0:
			el = zstd.EncoderLevelFromZstd(level)
		}
		return newZstdWriter(w, el, runtime.GOMAXPROCS(0))
	case Uncompressed:
		return nopWriteCloser{w}, nil
	}
	return nil, fmt.Errorf("unknown compression %q", c)
}

// newZstdWriter compresses with up to concurrency goroutines. Parallel
// block compression makes the output depend on whether it is enabled (not on
// how many goroutines run), so at least two are always used: the same tar
// gives the same blob on a one-CPU machine as on a many-core one.
func newZstdWriter(w io.Writer, level zstd.EncoderLevel, concurrency int) (*zstd.Encoder, error) {
	opts := []zstd.EOption{
		zstd.WithEncoderLevel(level),
		zstd.WithEncoderConcurrency(max(concurrency, 2)),
		zstd.WithConcurrentBlocks(true),
	}
	if level <= zstd.SpeedDefault {
		opts = append(opts, zstd.WithWindowSize(zstdFastWindow))
	}
	return zstd.NewWriter(w, opts...)
}

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// Decompress returns the uncompressed form of a layer blob read from r,
// recognising gzip and zstd by their magic bytes; anything else is passed
// through as it is (an uncompressed tar). Closing the result releases the
// decompressor; it does not close r.
func Decompress(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, err := br.Peek(len(zstdMagic))
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("decompress: %w", err)
	}
	switch {
	case bytes.HasPrefix(magic, gzipMagic):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("decompress gzip: %w", err)
		}
		return zr, nil
	case bytes.Equal(magic, zstdMagic):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("decompress zstd: %w", err)
		}
		return zr.IOReadCloser(), nil
	}
	return io.NopCloser(br), nil
}

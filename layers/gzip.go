package layers

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"sync"

	"github.com/klauspost/compress/flate"
)

// gzipWriter compresses a layer tar into one gzip member in blocks of
// gzipBlockSize, GOMAXPROCS-many at once, exactly as pgzip v1.3.0 does
// (which ibuild used before, so layers keep their digests): each block is
// a deflate stream primed with the last gzipTailSize bytes of the block
// before (none after a block no longer than that), ended with a sync
// flush, and the last one closed. It differs in one way: a block that
// does not compress is stored as it is, without running the compressor
// over it. Already-compressed files (archives, images, media, model
// weights) otherwise cost as much CPU as text, only to be stored anyway,
// and on a small machine that CPU is what an upload running alongside
// needs. The choice depends on the block's bytes only, so the blob is
// still the same for the same tar on any machine.
type gzipWriter struct {
	w     io.Writer
	level int
	procs int

	cur         []byte // the block being filled
	tail        []byte // what primes the next block
	crc         uint32
	size        uint32
	wroteHeader bool
	closed      bool

	queue   chan *gzipBlock // compressed blocks in order, to the output goroutine
	outDone chan struct{}

	mu     sync.Mutex
	err    error
	stored int // blocks stored without compression (for tests)

	bufs    sync.Pool // *[]byte of gzipBlockSize capacity
	outs    sync.Pool // *bytes.Buffer for compressed blocks
	flaters sync.Pool // *flate.Writer of level
	probes  sync.Pool // *flate.Writer of flate.BestSpeed, for incompressible
}

// gzipBlock is one block's compressed bytes, ready when done is closed.
type gzipBlock struct {
	out  *bytes.Buffer
	done chan struct{}
}

const (
	gzipBlockSize = 1 << 20 // pgzip's default block size
	gzipTailSize  = 16384   // pgzip's dictionary size
)

// newGzipWriter compresses into w at level (1-9) with up to procs blocks
// at once (the output does not depend on it).
func newGzipWriter(w io.Writer, level, procs int) *gzipWriter {
	z := &gzipWriter{w: w, level: level, procs: max(procs, 1)}
	z.bufs.New = func() any { b := make([]byte, 0, gzipBlockSize); return &b }
	return z
}

func (z *gzipWriter) fail(err error) {
	z.mu.Lock()
	if z.err == nil {
		z.err = err
	}
	z.mu.Unlock()
}

func (z *gzipWriter) failed() error {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.err
}

// writeHeader writes the gzip header pgzip writes with no name, comment
// or extra field and a zero modification time, and starts the output.
func (z *gzipWriter) writeHeader() error {
	z.wroteHeader = true
	h := [10]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255}
	switch z.level {
	case flate.BestCompression:
		h[8] = 2
	case flate.BestSpeed:
		h[8] = 4
	}
	z.queue = make(chan *gzipBlock, z.procs)
	z.outDone = make(chan struct{})
	go z.output()
	z.cur = z.getBuf()
	if _, err := z.w.Write(h[:]); err != nil {
		z.fail(err)
		return err
	}
	return nil
}

// output writes the blocks in order; after a failed write it only waits
// for the rest, so nothing blocks.
func (z *gzipWriter) output() {
	defer close(z.outDone)
	for b := range z.queue {
		<-b.done
		if z.failed() == nil {
			if _, err := z.w.Write(b.out.Bytes()); err != nil {
				z.fail(err)
			}
		}
		if b.out != nil {
			b.out.Reset()
			z.outs.Put(b.out)
		}
	}
}

func (z *gzipWriter) getBuf() []byte { return (*z.bufs.Get().(*[]byte))[:0] }

func (z *gzipWriter) putBuf(b []byte) {
	if cap(b) == gzipBlockSize {
		z.bufs.Put(&b)
	}
}

// Write implements io.Writer.
func (z *gzipWriter) Write(p []byte) (int, error) {
	if z.closed {
		return 0, errors.New("gzip: write after close")
	}
	if err := z.failed(); err != nil {
		return 0, err
	}
	if !z.wroteHeader {
		if err := z.writeHeader(); err != nil {
			return 0, err
		}
	}
	n := len(p)
	z.crc = crc32.Update(z.crc, crc32.IEEETable, p)
	z.size += uint32(n)
	for len(p) > 0 {
		k := min(len(p), gzipBlockSize-len(z.cur))
		z.cur = append(z.cur, p[:k]...)
		p = p[k:]
		if len(z.cur) == gzipBlockSize {
			z.dispatch(false)
		}
	}
	return n, z.failed()
}

// dispatch hands the current block to a compressing goroutine, waiting
// while procs blocks are in flight.
func (z *gzipWriter) dispatch(last bool) {
	c := z.cur
	tail := z.tail
	if len(c) > gzipTailSize {
		z.tail = append(make([]byte, 0, gzipTailSize), c[len(c)-gzipTailSize:]...)
	} else {
		z.tail = nil
	}
	b := &gzipBlock{done: make(chan struct{})}
	z.queue <- b
	go z.compress(b, c, tail, last)
	if !last {
		z.cur = z.getBuf()
	}
}

// compress makes block b of data, primed with dict; the last block is
// always run through the compressor, which closes the stream.
func (z *gzipWriter) compress(b *gzipBlock, data, dict []byte, last bool) {
	defer close(b.done)
	defer z.putBuf(data)
	b.out, _ = z.outs.Get().(*bytes.Buffer)
	if b.out == nil {
		b.out = bytes.NewBuffer(make([]byte, 0, gzipBlockSize+gzipBlockSize>>4))
	}
	if !last && z.incompressible(data) {
		z.mu.Lock()
		z.stored++
		z.mu.Unlock()
		writeStored(b.out, data)
		return
	}
	fw, _ := z.flaters.Get().(*flate.Writer)
	if fw == nil {
		var err error
		if fw, err = flate.NewWriterDict(b.out, z.level, nil); err != nil {
			z.fail(err)
			return
		}
	}
	defer z.flaters.Put(fw)
	fw.ResetDict(b.out, dict)
	_, err := fw.Write(data)
	if err == nil {
		err = fw.Flush()
	}
	if err == nil && last {
		err = fw.Close()
	}
	if err != nil {
		z.fail(err)
	}
}

// Probes of incompressible: probeCount slices of probeSize bytes spread
// over the block, compressed at the fastest level, must together shrink
// by less than 1/probeGain: a sample of what compressing the block would
// save. Probes stop as soon as they have saved that much, which for most
// blocks of most layers is after the first (0.4% of the block). Sixteen
// probes 64 KiB apart see any compressible stretch of 64 KiB or more; a
// block of small files that are incompressible, such as compressed
// assets, is stored even though its tar headers would compress (by well
// under 1/64 of the block).
const (
	probeSize  = 4096
	probeCount = 16
	probeGain  = 64
)

// incompressible reports whether the block data is not worth running
// the compressor over.
func (z *gzipWriter) incompressible(data []byte) bool {
	if len(data) < probeSize*probeCount {
		return false
	}
	fw, _ := z.probes.Get().(*flate.Writer)
	if fw == nil {
		fw, _ = flate.NewWriter(io.Discard, flate.BestSpeed)
	}
	defer z.probes.Put(fw)
	step := len(data) / probeCount
	need := probeCount * probeSize / probeGain
	saved := 0
	var n countWriter
	for i := range probeCount {
		n = 0
		fw.Reset(&n)
		_, _ = fw.Write(data[i*step : i*step+probeSize])
		_ = fw.Close()
		if saved += probeSize - int(n); saved >= need {
			return false
		}
	}
	return true
}

// countWriter counts what is written to it.
type countWriter int

func (c *countWriter) Write(p []byte) (int, error) {
	*c += countWriter(len(p))
	return len(p), nil
}

// writeStored writes data as non-final stored deflate blocks; the stream
// is byte-aligned before and after.
func writeStored(out *bytes.Buffer, data []byte) {
	for len(data) > 0 {
		k := min(len(data), 65535)
		var h [5]byte
		binary.LittleEndian.PutUint16(h[1:], uint16(k))
		binary.LittleEndian.PutUint16(h[3:], ^uint16(k))
		out.Write(h[:])
		out.Write(data[:k])
		data = data[k:]
	}
}

// Close compresses what is left, ends the stream with its trailer and
// waits for every block to be written; it does not close the writer
// beneath.
func (z *gzipWriter) Close() error {
	if z.closed {
		return z.failed()
	}
	if !z.wroteHeader {
		_ = z.writeHeader() // a failure is z.failed(), reported below
	}
	z.closed = true
	z.dispatch(true)
	close(z.queue)
	<-z.outDone
	z.tail = nil
	if err := z.failed(); err != nil {
		return err
	}
	var t [8]byte
	binary.LittleEndian.PutUint32(t[:4], z.crc)
	binary.LittleEndian.PutUint32(t[4:], z.size)
	if _, err := z.w.Write(t[:]); err != nil {
		z.fail(err)
		return err
	}
	return nil
}

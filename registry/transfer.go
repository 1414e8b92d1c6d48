package registry

import (
	"io"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Transfer is the progress of one layer moving from a registry (Pull) or
// to one (Push), as PullOptions.Transfers and PushOptions.Transfers
// receive it: updates while its bytes flow (at most every
// TransferInterval), then one with Finished set once the layer is stored
// (pull) or sent (push). Layers the destination already has are not
// reported.
type Transfer struct {
	// Ref is the reference pulled or pushed, in full (CanonicalName).
	Ref string
	// Action is "pull" or "push".
	Action string
	// Digest is the layer's digest; Size its compressed size (0 when not
	// known) and Done the bytes moved so far.
	Digest     v1.Hash
	Size, Done int64
	// Elapsed is the time since the layer's first byte was asked for.
	Elapsed time.Duration
	// Finished is set on the last update of a layer that arrived.
	Finished bool
}

// TransferInterval is how often a layer's progress is reported at most.
const TransferInterval = 200 * time.Millisecond

// transferReader counts the bytes read through it and reports them.
type transferReader struct {
	rc     io.ReadCloser
	report func(Transfer)
	mu     sync.Mutex
	t      Transfer
	start  time.Time
	last   time.Time
}

func newTransferReader(rc io.ReadCloser, t Transfer, report func(Transfer)) *transferReader {
	now := time.Now()
	return &transferReader{rc: rc, report: report, t: t, start: now, last: now}
}

func (r *transferReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.mu.Lock()
	r.t.Done += int64(n)
	now := time.Now()
	var send *Transfer
	if now.Sub(r.last) >= TransferInterval {
		r.last = now
		t := r.t
		t.Elapsed = now.Sub(r.start)
		send = &t
	}
	r.mu.Unlock()
	if send != nil {
		r.report(*send)
	}
	return n, err
}

func (r *transferReader) Close() error { return r.rc.Close() }

// finish reports the transfer as finished, with n bytes.
func (r *transferReader) finish(n int64) {
	r.mu.Lock()
	t := r.t
	r.mu.Unlock()
	t.Done, t.Finished, t.Elapsed = n, true, time.Since(r.start)
	if t.Size == 0 {
		t.Size = n
	}
	r.report(t)
}

// transferLayer reports the upload of its layer's bytes: when all of them
// were read, the layer counts as sent.
type transferLayer struct {
	v1.Layer
	ref    string
	report func(Transfer)
}

// Unwrap gives the layer for layerSource.
func (l *transferLayer) Unwrap() v1.Layer { return l.Layer }

func (l *transferLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Compressed()
	if err != nil {
		return nil, err
	}
	d, err := l.Digest()
	if err != nil {
		rc.Close()
		return nil, err
	}
	size, _ := l.Size()
	return &sentReader{transferReader: newTransferReader(rc, Transfer{Ref: l.ref, Action: "push", Digest: d, Size: size}, l.report)}, nil
}

// blobDigest names the blob being sent, for a stalled upload's error
// (see stallTransport).
func (r *sentReader) blobDigest() string { return r.t.Digest.String() }

// sentReader is a transferReader that reports a push finished when its
// last byte was read.
type sentReader struct {
	*transferReader
	once sync.Once
}

func (r *sentReader) Read(p []byte) (int, error) {
	n, err := r.transferReader.Read(p)
	if err == io.EOF {
		r.once.Do(func() {
			r.mu.Lock()
			done := r.t.Done
			r.mu.Unlock()
			r.finish(done)
		})
	}
	return n, err
}

// withTransfers makes l report its upload to report; a mountable layer
// stays mountable (its fallback upload is reported).
func withTransfers(l v1.Layer, ref string, report func(Transfer)) v1.Layer {
	if report == nil {
		return l
	}
	if ml, ok := l.(*remote.MountableLayer); ok {
		return &remote.MountableLayer{Layer: &transferLayer{Layer: ml.Layer, ref: ref, report: report}, Reference: ml.Reference}
	}
	return &transferLayer{Layer: l, ref: ref, report: report}
}

package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand"
	"net/http"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// TestUpload streams blobs into a registry through Upload: a complete one
// lands under its digest with its bytes sent once; one whose commit
// failed, whose digest is wrong, or whose registry is too slow or failing
// is cancelled, never lands, and never fails or holds up the writer
// beyond UploadPatience.
func TestUpload(t *testing.T) {
	if testing.Short() {
		t.Skip("needs docker-registry")
	}
	reg := registrytest.Start(t)
	px := registrytest.NewProxy(t, reg.Host)
	ctx := context.Background()

	blob := func(seed int64, n int) ([]byte, layers.Descriptor) {
		b := make([]byte, n)
		rand.New(rand.NewSource(seed)).Read(b)
		sum := sha256.Sum256(b)
		return b, layers.Descriptor{Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, Size: int64(n)}
	}
	// stream writes b in uneven pieces, as a compressor does, and
	// returns how long the writes took.
	stream := func(t *testing.T, u *Upload, b []byte) time.Duration {
		t.Helper()
		start := time.Now()
		for len(b) > 0 {
			k := min(len(b), 100<<10+len(b)%7919)
			if n, err := u.Write(b[:k]); n != k || err != nil {
				t.Fatalf("Write = %d, %v; want %d, nil", n, err, k)
			}
			b = b[k:]
		}
		return time.Since(start)
	}
	has := func(t *testing.T, repo string, d v1.Hash) []byte {
		t.Helper()
		resp, err := http.Get("http://" + reg.Host + "/v2/" + repo + "/blobs/" + d.String())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil
		}
		got, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}

	t.Run("complete", func(t *testing.T) {
		b, d := blob(1, 3<<20+17)
		px.Uploaded()
		u, err := StartUpload(ctx, px.Host+"/up/app:1", Conn{})
		if err != nil {
			t.Fatal(err)
		}
		stream(t, u, b)
		if err := u.Close(d, nil); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if got := has(t, "up/app", d.Digest); !bytes.Equal(got, b) {
			t.Fatalf("the registry holds %d bytes under %s, want the %d streamed", len(got), d.Digest, len(b))
		}
		if n := px.Uploaded(); n != d.Size {
			t.Errorf("%d bytes uploaded, want the blob's %d once", n, d.Size)
		}
	})

	t.Run("commit failed", func(t *testing.T) {
		b, d := blob(2, 1<<20)
		u, err := StartUpload(ctx, px.Host+"/up/app:1", Conn{})
		if err != nil {
			t.Fatal(err)
		}
		stream(t, u, b[:len(b)/2])
		if err := u.Close(layers.Descriptor{}, errors.New("tar: disk on fire")); err == nil || !strings.Contains(err.Error(), "disk on fire") {
			t.Fatalf("Close after a failed commit: %v", err)
		}
		if has(t, "up/app", d.Digest) != nil {
			t.Fatal("a blob whose commit failed landed")
		}
	})

	t.Run("wrong digest", func(t *testing.T) {
		b, _ := blob(3, 1<<20)
		_, other := blob(4, 1<<20)
		u, err := StartUpload(ctx, px.Host+"/up/app:1", Conn{})
		if err != nil {
			t.Fatal(err)
		}
		stream(t, u, b)
		if err := u.Close(other, nil); err == nil {
			t.Fatal("Close with another blob's digest succeeded")
		}
		if has(t, "up/app", other.Digest) != nil {
			t.Fatal("the registry holds the streamed bytes under another digest")
		}
	})

	t.Run("slow registry abandoned", func(t *testing.T) {
		px.Throttle(64 << 10)
		defer px.Throttle(0)
		b, d := blob(5, UploadQueue+4<<20)
		u, err := StartUpload(ctx, px.Host+"/up/slow:1", Conn{})
		if err != nil {
			t.Fatal(err)
		}
		took := stream(t, u, b)
		if took > UploadPatience+5*time.Second {
			t.Errorf("writing %d bytes to a slow registry took %v: the writer was held up", len(b), took)
		}
		start := time.Now()
		// Either the queue filled (Write gave up) or the rest was not
		// taken in time (Close gave up): both within UploadPatience.
		if err := u.Close(d, nil); err == nil || !strings.Contains(err.Error(), "took no data") && !strings.Contains(err.Error(), "did not take the rest") {
			t.Fatalf("Close after the registry fell behind: %v", err)
		}
		if waited := time.Since(start); waited > UploadPatience+5*time.Second {
			t.Errorf("Close waited %v", waited)
		}
		px.Throttle(0)
		if has(t, "up/slow", d.Digest) != nil {
			t.Fatal("an abandoned upload landed")
		}
	})

	t.Run("failing registry", func(t *testing.T) {
		px.FailEvery(1, 100)
		defer px.FailEvery(0, 0)
		b, d := blob(6, 2<<20)
		u, err := StartUpload(ctx, px.Host+"/up/fail:1", Conn{})
		if err != nil {
			t.Fatal(err)
		}
		if took := stream(t, u, b); took > UploadPatience+5*time.Second {
			t.Errorf("writing to a failing registry took %v", took)
		}
		if err := u.Close(d, nil); err == nil {
			t.Fatal("Close succeeded against a registry failing every blob request")
		}
		px.FailEvery(0, 0)
		if has(t, "up/fail", d.Digest) != nil {
			t.Fatal("a failed upload landed")
		}
	})
}

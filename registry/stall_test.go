package registry_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/registry"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// stallTimeout is the no-progress timeout of the stall tests: short, so a
// stalled request is given up quickly; a request slowed by a busy machine
// only costs a retry.
const stallTimeout = time.Second

// stallDeadline bounds each operation of the stall tests. Without a
// no-progress timeout a stalled push or pull would hang until it.
const stallDeadline = 90 * time.Second

// blobDigests are the digests of img's layers and config.
func blobDigests(t *testing.T, img v1.Image) []string {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	out := []string{m.Config.Digest.String()}
	for _, l := range m.Layers {
		out = append(out, l.Digest.String())
	}
	return out
}

// wantStall checks that err is a *registry.StallError naming the registry
// host and one of names, and that between 2 and 15 requests stalled: the
// request was retried, a bounded number of times (at most 5 tries for
// each of the image's 3 blobs).
func wantStall(t *testing.T, err error, host string, stalled int, names ...string) {
	t.Helper()
	var se *registry.StallError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v, want a *registry.StallError", err)
	}
	msg := err.Error()
	t.Logf("%d stalled requests; %s", stalled, msg)
	if !strings.Contains(msg, "registry "+host+" stopped responding") {
		t.Errorf("error %q does not name the registry %s", msg, host)
	}
	named := false
	for _, n := range names {
		named = named || strings.Contains(msg, n)
	}
	if !named {
		t.Errorf("error %q names none of %q", msg, names)
	}
	if stalled < 2 || stalled > 15 {
		t.Errorf("%d requests stalled: want the request retried, a bounded number of times", stalled)
	}
}

// TestPushStalledRegistry pushes through a proxy that stops responding in
// the middle of a blob upload or of the manifest upload: once, and the
// push retries and succeeds; every time, and the push gives up after a
// few tries with an error naming the registry and the blob or manifest.
func TestPushStalledRegistry(t *testing.T) {
	reg := registrytest.Start(t)
	px := registrytest.NewProxy(t, reg.Host)
	st := newStore(t)
	res := buildLocal(t, st, "stall:1", "stall\n")
	opts := registry.PushOptions{Conn: registry.Conn{Timeout: stallTimeout}}
	push := func(repo string) (v1.Hash, error) {
		ctx, cancel := context.WithTimeout(context.Background(), stallDeadline)
		defer cancel()
		return registry.Push(ctx, st, "stall:1", px.Host+"/"+repo+":1", opts)
	}

	t.Run("stalls once", func(t *testing.T) {
		px.StallEvery("PATCH /v2/once/blobs/uploads/", 1, 1)
		d, err := push("once")
		if err != nil {
			t.Fatalf("push after one stalled upload: %v", err)
		}
		if d != res.Digest {
			t.Errorf("pushed %s, want %s", d, res.Digest)
		}
		if n := px.StallEvery("", 0, 0); n != 1 {
			t.Errorf("%d uploads stalled, want 1", n)
		}
	})
	if testing.Short() {
		t.Skip("the push that gives up takes several timeouts")
	}
	t.Run("blob upload always stalls", func(t *testing.T) {
		px.StallEvery("PATCH /v2/blob/blobs/uploads/", 1, 100)
		_, err := push("blob")
		wantStall(t, err, px.Host, px.StallEvery("", 0, 0), blobDigests(t, res.Image)...)
		if !strings.Contains(err.Error(), "upload of blob sha256:") {
			t.Errorf("error %q does not say a blob upload stalled", err)
		}
	})
	t.Run("manifest upload always stalls", func(t *testing.T) {
		px.StallEvery("PUT /v2/manifest/manifests/", 1, 100)
		_, err := push("manifest")
		wantStall(t, err, px.Host, px.StallEvery("", 0, 0), "manifest manifest:1")
	})
}

// TestPullStalledRegistry pulls through a proxy that stops sending a blob
// or a manifest halfway: once, and the pull retries and succeeds; every
// time, and it gives up with an error naming the registry and the blob or
// manifest.
func TestPullStalledRegistry(t *testing.T) {
	reg := registrytest.Start(t)
	px := registrytest.NewProxy(t, reg.Host)
	src := newStore(t)
	res := buildLocal(t, src, "stall:1", "pull stall\n")
	for _, repo := range []string{"once", "blob", "manifest"} {
		if _, err := registry.Push(context.Background(), src, "stall:1", reg.Host+"/"+repo+":1", registry.PushOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pull := func(repo string) (v1.Descriptor, error) {
		ctx, cancel := context.WithTimeout(context.Background(), stallDeadline)
		defer cancel()
		return registry.Pull(ctx, newStore(t), px.Host+"/"+repo+":1", registry.PullOptions{Conn: registry.Conn{Timeout: stallTimeout}})
	}

	t.Run("stalls once", func(t *testing.T) {
		px.StallEvery("GET /v2/once/blobs/", 1, 1)
		d, err := pull("once")
		if err != nil {
			t.Fatalf("pull after one stalled download: %v", err)
		}
		if d.Digest != res.Digest {
			t.Errorf("pulled %s, want %s", d.Digest, res.Digest)
		}
		if n := px.StallEvery("", 0, 0); n != 1 {
			t.Errorf("%d downloads stalled, want 1", n)
		}
	})
	if testing.Short() {
		t.Skip("the pull that gives up takes several timeouts")
	}
	t.Run("blob always stalls", func(t *testing.T) {
		px.StallEvery("GET /v2/blob/blobs/", 1, 100)
		_, err := pull("blob")
		wantStall(t, err, px.Host, px.StallEvery("", 0, 0), blobDigests(t, res.Image)...)
	})
	t.Run("manifest always stalls", func(t *testing.T) {
		px.StallEvery("GET /v2/manifest/manifests/", 1, 100)
		_, err := pull("manifest")
		wantStall(t, err, px.Host, px.StallEvery("", 0, 0), "manifest manifest:1")
	})
}

package registry_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// TestDroppedConnections pushes and pulls through a proxy that breaks
// connections mid-body (and, for a pull, answers 500s): bounded failures
// are retried and both succeed, with complete blobs.
func TestDroppedConnections(t *testing.T) {
	reg := registrytest.Start(t)
	px := registrytest.NewProxy(t, reg.Host)
	ctx := context.Background()
	st := newStore(t)
	dir := t.TempDir()
	for i, n := range []string{"a", "b", "c"} {
		b := make([]byte, 256<<10)
		for j := range b {
			b[j] = byte((j*7 + i) % 251)
		}
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	res, err := builder.Build(ctx, builder.Options{Store: st, ContextDir: dir, Tags: []string{"drop:1"},
		DockerfileContent: []byte("FROM scratch\nCOPY a /a\nCOPY b /b\nCOPY c /c\n")})
	if err != nil {
		t.Fatal(err)
	}
	ref := px.Host + "/drop:1"

	px.DropEvery(2, 3)
	d, err := registry.Push(ctx, st, "drop:1", ref, registry.PushOptions{})
	if n := px.DropEvery(0, 0); n == 0 {
		t.Fatal("the proxy dropped no push connection")
	} else {
		t.Logf("push: %d connections dropped", n)
	}
	if err != nil {
		t.Fatal(err)
	}
	if d != res.Digest {
		t.Fatalf("pushed %s, local %s", d, res.Digest)
	}

	pull := func(t *testing.T, set func(n, max int) int) {
		st2 := newStore(t)
		set(2, 2)
		got, err := registry.Pull(ctx, st2, ref, registry.PullOptions{})
		n := set(0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatal("the proxy broke no pull request")
		}
		t.Logf("%d requests broken", n)
		if got.Digest != res.Digest {
			t.Fatalf("pulled %s, pushed %s", got.Digest, res.Digest)
		}
		layertest.CheckBlobs(t, st2.Blobs().Dir())
		img, err := st2.Image(ctx, got.Digest)
		if err != nil {
			t.Fatal(err)
		}
		dirs, err := st2.Snapshots(ctx, img, nil)
		if err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(filepath.Join(dirs[len(dirs)-1], "c")); err != nil || fi.Size() != 256<<10 {
			t.Fatalf("c: %v %v", fi, err)
		}
	}
	t.Run("pull with dropped connections", func(t *testing.T) { pull(t, px.DropEvery) })
	t.Run("pull with 500s", func(t *testing.T) { pull(t, px.FailEvery) })
}

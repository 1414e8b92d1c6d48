package registry_test

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
	"github.com/ibuild/ibuild/registry/registrytest"
)

func TestParseCacheSpec(t *testing.T) {
	cases := []struct {
		in      string
		want    registry.CacheSpec
		wantErr string
	}{
		{in: "type=registry,ref=reg.io/app:cache", want: registry.CacheSpec{Type: "registry", Ref: "reg.io/app:cache", Mode: "min"}},
		{in: "type=registry,ref=reg.io/app:cache,mode=max", want: registry.CacheSpec{Type: "registry", Ref: "reg.io/app:cache", Mode: "max"}},
		{in: "ref=127.0.0.1:5000/c:1,mode=min,type=registry", want: registry.CacheSpec{Type: "registry", Ref: "127.0.0.1:5000/c:1", Mode: "min"}},
		{in: "reg.io/app:cache", want: registry.CacheSpec{Type: "registry", Ref: "reg.io/app:cache", Mode: "min"}},
		{in: "type=registry,ref=r.io/a:c,image-manifest=true,oci-mediatypes=true", want: registry.CacheSpec{Type: "registry", Ref: "r.io/a:c", Mode: "min"}},
		{in: "", wantErr: "empty cache spec"},
		{in: "type=local,src=/tmp/x", want: registry.CacheSpec{Type: "local", Src: "/tmp/x", Tag: "latest", Mode: "min"}},
		{in: "type=local,dest=/tmp/x,tag=main,mode=max,mounts=true", want: registry.CacheSpec{Type: "local", Dest: "/tmp/x", Tag: "main", Mode: "max", Mounts: true}},
		{in: "type=registry,ref=r.io/a:c,mode=max,mounts=true", want: registry.CacheSpec{Type: "registry", Ref: "r.io/a:c", Mode: "max", Mounts: true}},
		{in: "type=local,ref=r.io/a:c", wantErr: "ref is type=registry's"},
		{in: "type=local", wantErr: "type=local needs src=DIR"},
		{in: "type=registry,ref=r.io/a:c,dest=/x", wantErr: "type=local's"},
		{in: "type=registry,ref=r.io/a:c,mounts=yes", wantErr: "mounts=yes"},
		{in: "type=gha", wantErr: "type=gha: want registry or local"},
		{in: "type=registry", wantErr: "missing ref=REF"},
		{in: "type=registry,ref=r.io/a:c,mode=all", wantErr: "mode=all: want min or max"},
		{in: "type=registry,ref=r.io/a:c,image-manifest=false", wantErr: "image-manifest=false"},
		{in: "type=registry,ref=UPPER/a:c", wantErr: "ref=UPPER/a:c"},
		{in: "type=registry,,ref=r.io/a:c", wantErr: "want key=value"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := registry.ParseCacheSpec(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseCacheSpec(%q) = %+v, %v; want an error with %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseCacheSpec(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
		})
	}
}

// captureCache is a builder.CacheExporter that keeps the entries.
type captureCache struct{ entries []layers.CacheEntry }

func (c *captureCache) ExportCache(_ context.Context, e []layers.CacheEntry) error {
	c.entries = e
	return nil
}

// countingRegistry is go-containerregistry's in-process registry,
// recording "METHOD path" of each request.
type countingRegistry struct {
	host string
	mu   sync.Mutex
	reqs []string
}

func startMemRegistry(t *testing.T) *countingRegistry {
	t.Helper()
	cr := &countingRegistry{}
	h := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cr.mu.Lock()
		cr.reqs = append(cr.reqs, r.Method+" "+r.URL.Path)
		cr.mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	cr.host = strings.TrimPrefix(srv.URL, "http://")
	return cr
}

func (c *countingRegistry) takeRequests() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.reqs
	c.reqs = nil
	return r
}

// TestCacheExportImportRoundTrip exports a build's cache records, reads
// the manifest back as a registry sees it, and imports it: records and
// layer descriptors survive, the import reads no layer, and a lazy layer's
// bytes are the stored blob's.
func TestCacheExportImportRoundTrip(t *testing.T) {
	ctx := context.Background()
	reg := startMemRegistry(t)
	st, err := layers.OpenStore(ctx, filepath.Join(t.TempDir(), "root"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	dir := t.TempDir()
	for n, c := range map[string]string{"a": "aaa", "b": strings.Repeat("b", 10000)} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	capture := &captureCache{}
	if _, err := builder.Build(ctx, builder.Options{Store: st, ContextDir: dir, CacheTo: []builder.CacheExporter{capture},
		DockerfileContent: []byte("FROM scratch AS one\nCOPY a /a\nCOPY b /b1\nFROM scratch\nCOPY a /a\nENV X=1\nCOPY b /b\nCOPY --from=one /b1 /b2\n")}); err != nil {
		t.Fatal(err)
	}
	var final int
	for _, e := range capture.entries {
		if e.Final {
			final++
		}
	}
	// COPY a /a has the same key in both stages: one entry, final.
	if len(capture.entries) != 5 || final != 4 {
		t.Fatalf("captured %d entries, %d final; want 5 and 4", len(capture.entries), final)
	}

	for _, mode := range []string{"max", "min"} {
		t.Run(mode, func(t *testing.T) {
			ref := reg.host + "/cache/app:" + mode
			spec, err := registry.ParseCacheSpec("type=registry,ref=" + ref + ",mode=" + mode)
			if err != nil {
				t.Fatal(err)
			}
			exp, err := registry.NewCacheExport(spec, registry.CacheOptions{Store: st})
			if err != nil {
				t.Fatal(err)
			}
			if err := exp.ExportCache(ctx, capture.entries); err != nil {
				t.Fatal(err)
			}
			r, _ := name.ParseReference(ref)
			desc, err := remote.Get(r)
			if err != nil {
				t.Fatal(err)
			}
			m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
			if err != nil {
				t.Fatal(err)
			}
			if m.ArtifactType != registry.CacheArtifactType || m.Config.MediaType != registry.CacheConfigType {
				t.Fatalf("manifest artifactType %q config %q", m.ArtifactType, m.Config.MediaType)
			}
			want := capture.entries
			if mode == "min" {
				want = nil
				for _, e := range capture.entries {
					if e.Final {
						want = append(want, e)
					}
				}
			}
			// COPY a is one layer of both stages: listed once.
			wantLayers := map[string]int{"max": 4, "min": 3}[mode]
			if n := len(m.Layers); n != wantLayers {
				t.Fatalf("cache manifest lists %d layers, want %d", n, wantLayers)
			}
			reg.takeRequests()
			c, err := registry.ImportCache(ctx, ref, registry.CacheOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range reg.takeRequests() {
				if strings.HasPrefix(q, "GET ") && strings.Contains(q, "/blobs/") && !strings.Contains(q, m.Config.Digest.String()) {
					t.Errorf("ImportCache fetched a layer: %s", q)
				}
			}
			if c.Warning != "" || c.Len() != len(want) {
				t.Fatalf("imported %d records (warning %q), want %d", c.Len(), c.Warning, len(want))
			}
			for _, e := range want {
				rec, l, ok := c.Lookup(e.Key)
				if !ok {
					t.Fatalf("record %s missing", e.Key)
				}
				if !bytes.Equal(rec.Config, e.Record.Config) {
					t.Errorf("record %s: config differs", e.Key)
				}
				if (rec.Layer == nil) != (e.Record.Layer == nil) || (l == nil) != (e.Layer == nil) {
					t.Fatalf("record %s: layer %v, want %v", e.Key, rec.Layer, e.Record.Layer)
				}
				if rec.Layer == nil {
					continue
				}
				// The build's layers were snapshots only (no blob yet);
				// the export made their blobs.
				wantLayer := *e.Record.Layer
				if wantLayer.Lazy() {
					var err error
					if wantLayer.Digest, err = e.Layer.Digest(); err != nil {
						t.Fatal(err)
					}
					wantLayer.Size, _ = e.Layer.Size()
					wantLayer.MediaType, _ = e.Layer.MediaType()
					wantLayer.TarEpoch = nil
				}
				if *rec.Layer != wantLayer {
					t.Errorf("record %s: layer %+v, want %+v", e.Key, *rec.Layer, wantLayer)
				}
				if d, _ := l.Digest(); d != wantLayer.Digest {
					t.Errorf("lazy layer digest %s, want %s", d, wantLayer.Digest)
				}
				if _, ok := l.(*remote.MountableLayer); !ok {
					t.Errorf("lazy layer is a %T, want a *remote.MountableLayer", l)
				}
			}
			if got := reg.takeRequests(); len(got) != 0 {
				t.Fatalf("Lookup and layer metadata made requests: %v", got)
			}
			// Reading a lazy layer fetches it once and checks its digest.
			for _, e := range want {
				if e.Layer == nil {
					continue
				}
				_, l, _ := c.Lookup(e.Key)
				rc, err := l.Uncompressed()
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil {
					t.Fatal(err)
				}
				wrc, _ := e.Layer.Uncompressed()
				wantb, _ := io.ReadAll(wrc)
				wrc.Close()
				if !bytes.Equal(got, wantb) {
					t.Fatalf("layer %s: uncompressed bytes differ", e.Record.Layer.Digest)
				}
				break
			}
			if n := blobGets(reg.takeRequests()); n != 1 {
				t.Fatalf("reading one lazy layer made %d blob GETs, want 1", n)
			}
		})
	}

	t.Run("missing-ref-is-a-warning", func(t *testing.T) {
		c, err := registry.ImportCache(ctx, reg.host+"/nothing/here:cache", registry.CacheOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if c.Len() != 0 || !strings.Contains(c.Warning, "does not exist yet") {
			t.Fatalf("missing cache: %d records, warning %q", c.Len(), c.Warning)
		}
	})
	t.Run("an-image-is-not-a-cache", func(t *testing.T) {
		res := buildLocal(t, st, "img:1", "x")
		if _, err := registry.PushImage(ctx, res.Image, reg.host+"/img/plain:1", registry.PushOptions{}); err != nil {
			t.Fatal(err)
		}
		_, err := registry.ImportCache(ctx, reg.host+"/img/plain:1", registry.CacheOptions{})
		if err == nil || !strings.Contains(err.Error(), "not an ibuild cache") || !strings.Contains(err.Error(), "img/plain:1") {
			t.Fatalf("import of an image: %v", err)
		}
	})
}

func blobGets(reqs []string) int {
	n := 0
	for _, r := range reqs {
		if strings.HasPrefix(r, "GET ") && strings.Contains(r, "/blobs/sha256:") {
			n++
		}
	}
	return n
}

// TestImportCacheUnauthorized: a cache the credentials cannot read is an
// error naming it, not an empty cache.
func TestImportCacheUnauthorized(t *testing.T) {
	reg := registrytest.StartWith(t, registrytest.Config{Users: map[string]string{"ci": "secret"}})
	ref := reg.Host + "/cache/app:buildcache"
	c, err := registry.ImportCache(context.Background(), ref, registry.CacheOptions{})
	if err == nil {
		t.Fatalf("import without credentials: %d records, warning %q; want an error", c.Len(), c.Warning)
	}
	if !strings.Contains(err.Error(), ref) || !strings.Contains(strings.ToLower(err.Error()), "unauthorized") {
		t.Fatalf("error %q should name %s and say unauthorized", err, ref)
	}
}

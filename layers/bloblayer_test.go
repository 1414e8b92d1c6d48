package layers_test

import (
	"bytes"
	"context"
	"io"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ibuild/ibuild/layers"
)

func TestBlobLayer(t *testing.T) {
	raw := fixtureTar(t, []fixtureFile{{Name: "hello", Body: "hello, layer"}})
	wantDiffID, _, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		c      layers.Compression
		wantMT types.MediaType
	}{
		{"gzip", layers.Gzip, types.OCILayer},
		{"zstd", layers.Zstd, types.OCILayerZStd},
		{"uncompressed", layers.Uncompressed, types.OCIUncompressedLayer},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := fixtureStore(t)
			d, err := s.Blobs().CommitTar(context.Background(), bytes.NewReader(raw), layers.CommitOptions{Compression: tc.c})
			if err != nil {
				t.Fatal(err)
			}
			l := s.Blobs().Layer(d)
			if got, _ := l.Digest(); got != d.Digest {
				t.Errorf("Digest = %s, want %s", got, d.Digest)
			}
			if got, _ := l.DiffID(); got != wantDiffID {
				t.Errorf("DiffID = %s, want %s", got, wantDiffID)
			}
			if got, _ := l.MediaType(); got != tc.wantMT {
				t.Errorf("MediaType = %s, want %s", got, tc.wantMT)
			}
			if got, _ := l.Size(); got != d.Size {
				t.Errorf("Size = %d, want %d", got, d.Size)
			}
			rc, err := l.Uncompressed()
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(rc)
			if err != nil || rc.Close() != nil || !bytes.Equal(got, raw) {
				t.Errorf("Uncompressed gave %d bytes (err %v), want the original %d", len(got), err, len(raw))
			}
			crc, err := l.Compressed()
			if err != nil {
				t.Fatal(err)
			}
			h, n, err := v1.SHA256(crc)
			crc.Close()
			if err != nil || h != d.Digest || n != d.Size {
				t.Errorf("Compressed hashes to %s, %d bytes (err %v); want %s, %d", h, n, err, d.Digest, d.Size)
			}
			// validate.Layer reads every layer as gzip.
			if tc.c == layers.Gzip {
				if err := validate.Layer(l); err != nil {
					t.Errorf("validate.Layer: %v", err)
				}
			}
		})
	}
}

func TestBlobLayerMissingBlob(t *testing.T) {
	s := fixtureStore(t)
	h := v1.Hash{Algorithm: "sha256", Hex: "0000000000000000000000000000000000000000000000000000000000000000"}
	l := s.Blobs().Layer(layers.Descriptor{Digest: h, DiffID: h, MediaType: types.OCILayer})
	if got, err := l.Digest(); err != nil || got != h {
		t.Fatalf("Digest = %s, %v: metadata must not need the blob", got, err)
	}
	if _, err := l.Compressed(); err == nil {
		t.Error("Compressed of a missing blob succeeded")
	}
	if _, err := l.Uncompressed(); err == nil {
		t.Error("Uncompressed of a missing blob succeeded")
	}
}

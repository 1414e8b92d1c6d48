package layers

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

func sha256Hash(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

func openTestStore(t testing.TB) *BlobStore {
	t.Helper()
	s, err := OpenBlobStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// checkBlob verifies d against the stored blob and its decompressed form
// and returns the decompressed bytes.
func checkBlob(t testing.TB, s *BlobStore, d Descriptor, want types.MediaType) []byte {
	t.Helper()
	blob, err := s.ReadAll(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if got := sha256Hash(blob); got != d.Digest {
		t.Errorf("stored blob hashes to %s, descriptor says %s", got, d.Digest)
	}
	if int64(len(blob)) != d.Size {
		t.Errorf("stored blob has %d bytes, descriptor says %d", len(blob), d.Size)
	}
	if d.MediaType != want {
		t.Errorf("media type %s, want %s", d.MediaType, want)
	}
	rc, err := Decompress(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tarBytes, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("decompress: %v", err)
	}
	if got := sha256Hash(tarBytes); got != d.DiffID {
		t.Errorf("decompressed blob hashes to %s, diffID is %s", got, d.DiffID)
	}
	if int64(len(tarBytes)) != d.UncompressedSize {
		t.Errorf("decompressed blob has %d bytes, descriptor says %d", len(tarBytes), d.UncompressedSize)
	}
	return tarBytes
}

func TestCommitDir(t *testing.T) {
	dir := t.TempDir()
	genTree(t, dir, 3<<20, 7)
	makeSampleTree(t, filepath.Join(dir, "sample"), false)
	epoch := time.Unix(1700000000, 0)
	tarOpts := TarOptions{SourceDateEpoch: &epoch}
	wantTar := writeTarBytes(t, dir, tarOpts)
	tests := []struct {
		name  string
		opts  CommitOptions
		media types.MediaType
		magic []byte
	}{
		{"default is gzip", CommitOptions{}, types.OCILayer, gzipMagic},
		{"gzip", CommitOptions{Compression: Gzip}, types.OCILayer, gzipMagic},
		{"gzip level 9", CommitOptions{Compression: Gzip, Level: 9}, types.OCILayer, gzipMagic},
		{"zstd", CommitOptions{Compression: Zstd}, types.OCILayerZStd, zstdMagic},
		{"zstd level 19", CommitOptions{Compression: Zstd, Level: 19}, types.OCILayerZStd, zstdMagic},
		{"none", CommitOptions{Compression: Uncompressed}, types.OCIUncompressedLayer, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := openTestStore(t)
			tc.opts.TarOptions = tarOpts
			d, err := s.CommitDir(context.Background(), dir, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			got := checkBlob(t, s, d, tc.media)
			if !bytes.Equal(got, wantTar) {
				t.Error("decompressed blob is not WriteTar's output")
			}
			blob, _ := s.ReadAll(d.Digest)
			if !bytes.HasPrefix(blob, tc.magic) {
				t.Errorf("blob starts with %x, want %x", blob[:4], tc.magic)
			}
			if tc.magic == nil && d.Digest != d.DiffID {
				t.Errorf("uncompressed: digest %s != diffID %s", d.Digest, d.DiffID)
			}
			if bytes.Equal(tc.magic, gzipMagic) {
				// RFC 1952: flags (no name, comment or extra) 0, mtime 0.
				if !bytes.Equal(blob[3:8], []byte{0, 0, 0, 0, 0}) {
					t.Errorf("gzip header flags and mtime are %x, want zeros", blob[3:8])
				}
			}

			// Again, through CommitTar: same blob, stored once.
			d2, err := s.CommitTar(context.Background(), bytes.NewReader(wantTar), tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if d2 != d {
				t.Errorf("second commit gave %+v, first %+v", d2, d)
			}
			blobs, err := s.List()
			if err != nil {
				t.Fatal(err)
			}
			if len(blobs) != 1 {
				t.Errorf("store holds %d blobs, want 1", len(blobs))
			}
			tmp, _ := os.ReadDir(filepath.Join(s.Dir(), "tmp"))
			if len(tmp) != 0 {
				t.Errorf("temporary files left: %v", tmp)
			}
		})
	}
}

func TestCommitErrors(t *testing.T) {
	dir := t.TempDir()
	genTree(t, dir, 1<<20, 3)
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		dir  string
		opts CommitOptions
		want string
	}{
		{"missing dir", context.Background(), filepath.Join(dir, "nope"), CommitOptions{}, "no such file"},
		{"canceled", canceled, dir, CommitOptions{Compression: Zstd}, "context canceled"},
		{"bad gzip level", context.Background(), dir, CommitOptions{Level: 10}, "gzip level"},
		{"bad zstd level", context.Background(), dir, CommitOptions{Compression: Zstd, Level: 23}, "zstd level"},
		{"bad compression", context.Background(), dir, CommitOptions{Compression: "lz4"}, "unknown compression"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := openTestStore(t)
			_, err := s.CommitDir(tc.ctx, tc.dir, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
			if blobs, _ := s.List(); len(blobs) != 0 {
				t.Errorf("failed commit stored %v", blobs)
			}
			if tmp, _ := os.ReadDir(filepath.Join(s.Dir(), "tmp")); len(tmp) != 0 {
				t.Errorf("temporary files left: %v", tmp)
			}
		})
	}
}

// TestCompressionDeterministic checks that blobs do not depend on the number
// of CPUs or on how the tar arrives in writes.
func TestCompressionDeterministic(t *testing.T) {
	dir := t.TempDir()
	genTree(t, dir, 6<<20, 5)
	data := writeTarBytes(t, dir, TarOptions{})
	writers := []struct {
		name string
		new  func(w io.Writer, concurrency int) (io.WriteCloser, error)
	}{
		{"gzip", func(w io.Writer, n int) (io.WriteCloser, error) {
			return newGzipWriter(w, defaultGzipLevel, n), nil
		}},
		{"zstd", func(w io.Writer, n int) (io.WriteCloser, error) {
			return newZstdWriter(w, zstd.SpeedDefault, n)
		}},
	}
	for _, wr := range writers {
		t.Run(wr.name, func(t *testing.T) {
			var want []byte
			for _, conc := range []int{1, 2, 3, 8} {
				for _, chunk := range []int{1000, 1 << 20} {
					var buf bytes.Buffer
					zw, err := wr.new(&buf, conc)
					if err != nil {
						t.Fatal(err)
					}
					for off := 0; off < len(data); off += chunk {
						if _, err := zw.Write(data[off:min(off+chunk, len(data))]); err != nil {
							t.Fatal(err)
						}
					}
					if err := zw.Close(); err != nil {
						t.Fatal(err)
					}
					if want == nil {
						want = buf.Bytes()
					} else if !bytes.Equal(buf.Bytes(), want) {
						t.Errorf("concurrency %d, writes of %d: output differs", conc, chunk)
					}
				}
			}
		})
	}
}

func TestDecompress(t *testing.T) {
	plain := []byte("plain tar bytes, or anything else")
	var gz, zs bytes.Buffer
	gw := gzip.NewWriter(&gz)
	gw.Write(plain)
	gw.Close()
	zw, _ := zstd.NewWriter(&zs)
	zw.Write(plain)
	zw.Close()
	tests := []struct {
		name    string
		in      []byte
		want    []byte
		wantErr bool
	}{
		{"plain", plain, plain, false},
		{"gzip", gz.Bytes(), plain, false},
		{"zstd", zs.Bytes(), plain, false},
		{"empty", nil, nil, false},
		{"short", []byte{0x1f}, []byte{0x1f}, false},
		{"corrupt gzip", append([]byte{0x1f, 0x8b}, bytes.Repeat([]byte{9}, 40)...), nil, true},
		{"truncated zstd", zs.Bytes()[:len(zs.Bytes())-3], nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc, err := Decompress(bytes.NewReader(tc.in))
			var got []byte
			if err == nil {
				got, err = io.ReadAll(rc)
				rc.Close()
			}
			if tc.wantErr {
				if err == nil {
					t.Fatal("no error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

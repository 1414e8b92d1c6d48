package layers

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Compression names a layer compression.
type Compression string

// The supported layer compressions.
const (
	Gzip         Compression = "gzip"
	Zstd         Compression = "zstd"
	Uncompressed Compression = "none"
)

// ParseCompression parses a --compression value. The empty string means gzip.
func ParseCompression(s string) (Compression, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "gzip":
		return Gzip, nil
	case "zstd":
		return Zstd, nil
	case "none", "uncompressed":
		return Uncompressed, nil
	}
	return "", fmt.Errorf("unknown compression %q (want gzip, zstd or none)", s)
}

// MediaType is the OCI layer media type for c.
func (c Compression) MediaType() types.MediaType {
	switch c {
	case Zstd:
		return types.OCILayerZStd
	case Uncompressed:
		return types.OCIUncompressedLayer
	}
	return types.OCILayer
}

// Descriptor describes one layer blob stored in a BlobStore.
type Descriptor struct {
	MediaType types.MediaType
	// Digest and Size are those of the stored (compressed) bytes.
	Digest v1.Hash
	Size   int64
	// DiffID and UncompressedSize are those of the uncompressed tar.
	DiffID           v1.Hash
	UncompressedSize int64
	// TarEpoch is, for a lazy layer (no Digest yet: see CommitSnapshot),
	// the SourceDateEpoch its tar was made with, which making the blob
	// must use again.
	TarEpoch *time.Time `json:",omitempty"`
}

// descriptorJSON is a Descriptor as stored: the digest and size of a lazy
// one are left out (a zero v1.Hash does not round-trip through JSON).
type descriptorJSON struct {
	MediaType        types.MediaType `json:"MediaType,omitempty"`
	Digest           *v1.Hash        `json:"Digest,omitempty"`
	Size             int64           `json:"Size,omitempty"`
	DiffID           v1.Hash
	UncompressedSize int64
	TarEpoch         *time.Time `json:",omitempty"`
}

// MarshalJSON writes d; a lazy d has no Digest field.
func (d Descriptor) MarshalJSON() ([]byte, error) {
	j := descriptorJSON{MediaType: d.MediaType, Size: d.Size, DiffID: d.DiffID, UncompressedSize: d.UncompressedSize, TarEpoch: d.TarEpoch}
	if !d.Lazy() {
		j.Digest = &d.Digest
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads what MarshalJSON wrote (and the older form, which
// always had a Digest).
func (d *Descriptor) UnmarshalJSON(b []byte) error {
	var j descriptorJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*d = Descriptor{MediaType: j.MediaType, Size: j.Size, DiffID: j.DiffID, UncompressedSize: j.UncompressedSize, TarEpoch: j.TarEpoch}
	if j.Digest != nil {
		d.Digest = *j.Digest
	}
	return nil
}

// ReportedSize is the layer's size as progress reports it: the
// compressed size once the blob is made, else the tar's.
func (d Descriptor) ReportedSize() int64 {
	if d.Lazy() {
		return d.UncompressedSize
	}
	return d.Size
}

// TarOptions controls how a directory becomes a layer tar.
type TarOptions struct {
	// SourceDateEpoch, when set, clamps every mtime to it (entries newer
	// than it get it; older ones keep theirs).
	SourceDateEpoch *time.Time
}

// CommitOptions controls how a layer is compressed and stored.
type CommitOptions struct {
	Compression Compression
	// Level is the compression level; 0 means the compressor's default.
	Level int
	TarOptions
}

// OwnerXattr is the extended attribute in which an unprivileged process
// records a file's in-image owner ("uid:gid") when it cannot chown the file.
// WriteTar uses it instead of the file's owner and never writes it into a
// layer.
const OwnerXattr = "user.ibuild.owner"

package layers

import (
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

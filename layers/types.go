package layers

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"strconv"
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
// records a file's in-image owner ("uid:gid") when it cannot chown the file,
// and, as "uid:gid:MODE" (octal permission bits), its in-image mode when
// the file's own mode had to differ (a directory its owner could not
// search). WriteTar uses it instead of the file's owner and mode and never
// writes it into a layer. ParseOwnerXattr reads it.
const OwnerXattr = "user.ibuild.owner"

// OwnerMode is what an OwnerXattr value records.
type OwnerMode struct {
	UID, GID int
	// Mode, when HasMode, replaces the file's permission bits (with
	// setuid, setgid and sticky) in the layer.
	Mode    fs.FileMode
	HasMode bool
}

// ParseOwnerXattr parses an OwnerXattr value, "uid:gid" or
// "uid:gid:MODE".
func ParseOwnerXattr(v string) (OwnerMode, error) {
	parts := strings.Split(v, ":")
	var om OwnerMode
	if len(parts) != 2 && len(parts) != 3 {
		return om, fmt.Errorf("invalid owner %q", v)
	}
	uid, err1 := strconv.Atoi(parts[0])
	gid, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil || uid < 0 || gid < 0 {
		return om, fmt.Errorf("invalid owner %q", v)
	}
	om.UID, om.GID = uid, gid
	if len(parts) == 3 {
		m, err := strconv.ParseUint(parts[2], 8, 32)
		if err != nil || m > 0o7777 {
			return om, fmt.Errorf("invalid owner %q: bad mode", v)
		}
		om.Mode, om.HasMode = fs.FileMode(m), true
	}
	return om, nil
}

// FormatOwnerXattr is the OwnerXattr value of om.
func FormatOwnerXattr(om OwnerMode) string {
	v := strconv.Itoa(om.UID) + ":" + strconv.Itoa(om.GID)
	if om.HasMode {
		v += ":" + strconv.FormatUint(uint64(om.Mode&0o7777), 8)
	}
	return v
}

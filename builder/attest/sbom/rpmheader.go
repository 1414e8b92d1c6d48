package sbom

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"
)

// RPM header tags the cataloger reads (rpmtag.h).
const (
	rpmTagName      = 1000
	rpmTagVersion   = 1001
	rpmTagRelease   = 1002
	rpmTagEpoch     = 1003
	rpmTagSummary   = 1004
	rpmTagSize      = 1009
	rpmTagVendor    = 1011
	rpmTagLicense   = 1014
	rpmTagArch      = 1022
	rpmTagSourceRPM = 1044
)

// RPM header data types.
const (
	rpmInt32       = 4
	rpmString      = 6
	rpmStringArray = 8
	rpmI18NString  = 9
)

// Bounds rpm itself puts on a header (hdrchkTags, hdrchkData).
const (
	rpmMaxIndex = 0xffff
	rpmMaxData  = 0x0fffffff
)

// rpmHeader is what the SBOM takes from an installed package's header.
type rpmHeader struct {
	Name, Version, Release string
	// Epoch is the package's epoch; HasEpoch says whether it has one.
	Epoch     int64
	HasEpoch  bool
	Summary   string
	Size      int64
	Vendor    string
	License   string
	Arch      string
	SourceRPM string
}

// EVR is the version as rpm writes it: [EPOCH:]VERSION-RELEASE.
func (h rpmHeader) EVR() string {
	v := h.Version
	if h.Release != "" {
		v += "-" + h.Release
	}
	if h.HasEpoch {
		v = strconv.FormatInt(h.Epoch, 10) + ":" + v
	}
	return v
}

// parseRPMHeader reads an RPM header as rpm stores it in its database
// (without the 8-byte magic of a package file): a big-endian index count
// il and data length dl, il 16-byte entries (tag, type, offset, count),
// then dl bytes of data the entries point into. Every offset is checked
// against the data; tags not needed are skipped, the first of a repeated
// tag wins.
func parseRPMHeader(blob []byte) (rpmHeader, error) {
	var h rpmHeader
	if len(blob) < 8 {
		return h, fmt.Errorf("RPM header of %d bytes is truncated", len(blob))
	}
	il := binary.BigEndian.Uint32(blob)
	dl := binary.BigEndian.Uint32(blob[4:])
	if il == 0 || il > rpmMaxIndex || dl > rpmMaxData {
		return h, fmt.Errorf("RPM header has an invalid size (%d entries, %d data bytes)", il, dl)
	}
	if need := 8 + 16*uint64(il) + uint64(dl); need > uint64(len(blob)) {
		return h, fmt.Errorf("RPM header needs %d bytes, has %d", need, len(blob))
	}
	index := blob[8 : 8+16*il]
	data := blob[8+16*il : 8+16*il+dl]
	seen := map[uint32]bool{}
	for i := 0; i < int(il); i++ {
		e := index[16*i:]
		tag := binary.BigEndian.Uint32(e)
		typ := binary.BigEndian.Uint32(e[4:])
		off := binary.BigEndian.Uint32(e[8:])
		count := binary.BigEndian.Uint32(e[12:])
		var dst *string
		switch tag {
		case rpmTagName:
			dst = &h.Name
		case rpmTagVersion:
			dst = &h.Version
		case rpmTagRelease:
			dst = &h.Release
		case rpmTagSummary:
			dst = &h.Summary
		case rpmTagVendor:
			dst = &h.Vendor
		case rpmTagLicense:
			dst = &h.License
		case rpmTagArch:
			dst = &h.Arch
		case rpmTagSourceRPM:
			dst = &h.SourceRPM
		case rpmTagEpoch, rpmTagSize:
		default:
			continue
		}
		if seen[tag] {
			continue
		}
		seen[tag] = true
		if dst != nil {
			s, err := rpmStringAt(data, tag, typ, off, count)
			if err != nil {
				return h, err
			}
			*dst = s
			continue
		}
		n, err := rpmIntAt(data, tag, typ, off, count)
		if err != nil {
			return h, err
		}
		if tag == rpmTagEpoch {
			h.Epoch, h.HasEpoch = n, true
		} else {
			h.Size = n
		}
	}
	if h.Name == "" || h.Version == "" {
		return h, fmt.Errorf("RPM header has no name or version")
	}
	return h, nil
}

// rpmStringAt reads the string entry tag of type typ at off in data: a
// STRING, or the first of a STRING_ARRAY or I18NSTRING.
func rpmStringAt(data []byte, tag, typ, off, count uint32) (string, error) {
	switch typ {
	case rpmString, rpmStringArray, rpmI18NString:
	default:
		return "", fmt.Errorf("RPM header tag %d has type %d, not a string", tag, typ)
	}
	if count == 0 || uint64(off) >= uint64(len(data)) {
		return "", fmt.Errorf("RPM header tag %d: offset %d is outside the %d data bytes", tag, off, len(data))
	}
	s := data[off:]
	end := bytes.IndexByte(s, 0)
	if end < 0 {
		return "", fmt.Errorf("RPM header tag %d: string runs past the data", tag)
	}
	return string(s[:end]), nil
}

// rpmIntAt reads the first value of the INT32 entry tag at off in data,
// unsigned as rpm prints it.
func rpmIntAt(data []byte, tag, typ, off, count uint32) (int64, error) {
	if typ != rpmInt32 {
		return 0, fmt.Errorf("RPM header tag %d has type %d, not INT32", tag, typ)
	}
	if count == 0 || uint64(off)+4 > uint64(len(data)) {
		return 0, fmt.Errorf("RPM header tag %d: offset %d is outside the %d data bytes", tag, off, len(data))
	}
	return int64(binary.BigEndian.Uint32(data[off:])), nil
}

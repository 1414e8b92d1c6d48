package sbom

import (
	"encoding/binary"
	"fmt"
	"io"
)

// This file reads the values of a Berkeley DB hash database, the format
// of rpm's Packages file before rpm 4.16 (CentOS 7 and 8, RHEL and UBI 8,
// Amazon Linux 2). It reads what db_page.h and hash.h describe: a
// metadata page (page 0) giving the byte order and page size, then every
// hash page in file order, whose items alternate key and data; data is
// on the page (H_KEYDATA) or in a chain of overflow pages (H_OFFPAGE).
// Like the SQLite reader it trusts nothing: page numbers are checked
// against the file, an overflow page is read at most once, values are
// capped. Encrypted or checksummed databases (which rpm does not make)
// and duplicate items are reported, not read.

// Berkeley DB constants (db_page.h, hash.h).
const (
	bdbHashMagic    = 0x061561
	bdbPageHeader   = 26 // lsn, pgno, prev, next, entries, hf_offset, level, type
	bdbHashUnsorted = 2  // P_HASH_UNSORTED
	bdbOverflow     = 7  // P_OVERFLOW
	bdbHashMeta     = 8  // P_HASHMETA
	bdbHash         = 13 // P_HASH
	bdbKeyData      = 1  // H_KEYDATA
	bdbOffPage      = 3  // H_OFFPAGE
)

// bdbDB is an open Berkeley DB hash database.
type bdbDB struct {
	r        io.ReaderAt
	name     string
	order    binary.ByteOrder
	pageSize int
	pages    uint32
	maxValue int
	seen     []bool // overflow pages read so far
}

// bdbHashValues calls fn with each key and value of the Berkeley DB hash
// database in r (size bytes, named name), in file order. Values larger
// than maxValue bytes are errors; fn's error stops the walk.
func bdbHashValues(r io.ReaderAt, size int64, name string, maxValue int, fn func(key, val []byte) error) error {
	var m [72]byte
	if size < 512 {
		return fmt.Errorf("%s: %d bytes is too short for a Berkeley DB database", name, size)
	}
	if _, err := r.ReadAt(m[:], 0); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	db := &bdbDB{r: r, name: name, maxValue: maxValue}
	switch {
	case binary.LittleEndian.Uint32(m[12:]) == bdbHashMagic:
		db.order = binary.LittleEndian
	case binary.BigEndian.Uint32(m[12:]) == bdbHashMagic:
		db.order = binary.BigEndian
	default:
		return fmt.Errorf("%s: not a Berkeley DB hash database", name)
	}
	if m[25] != bdbHashMeta {
		return fmt.Errorf("%s: Berkeley DB page 0 has type %d, not hash metadata", name, m[25])
	}
	if m[24] != 0 || m[26]&1 != 0 {
		return fmt.Errorf("%s: encrypted or checksummed Berkeley DB databases are not read", name)
	}
	ps := db.order.Uint32(m[20:])
	if ps < 512 || ps > 65536 || ps&(ps-1) != 0 {
		return fmt.Errorf("%s: invalid Berkeley DB page size %d", name, ps)
	}
	db.pageSize = int(ps)
	n := size / int64(ps)
	if n > 1<<32-1 {
		n = 1<<32 - 1
	}
	db.pages = uint32(n)
	db.seen = make([]bool, n)
	page := make([]byte, ps)
	for pgno := uint32(1); pgno < db.pages; pgno++ {
		if _, err := r.ReadAt(page, int64(pgno)*int64(ps)); err != nil {
			return fmt.Errorf("%s: read Berkeley DB page %d: %w", name, pgno, err)
		}
		if t := page[25]; t != bdbHash && t != bdbHashUnsorted {
			continue
		}
		if err := db.hashPage(page, pgno, fn); err != nil {
			return err
		}
	}
	return nil
}

// hashPage calls fn with the key and value pairs of hash page p.
func (db *bdbDB) hashPage(p []byte, pgno uint32, fn func(key, val []byte) error) error {
	entries := int(db.order.Uint16(p[20:]))
	if bdbPageHeader+2*entries > len(p) {
		return fmt.Errorf("%s: Berkeley DB page %d has %d entries, more than fit", db.name, pgno, entries)
	}
	// Items are stored from the page's end down: item i ends where item
	// i-1 starts.
	item := func(i int) ([]byte, error) {
		start := int(db.order.Uint16(p[bdbPageHeader+2*i:]))
		end := len(p)
		if i > 0 {
			end = int(db.order.Uint16(p[bdbPageHeader+2*(i-1):]))
		}
		if start < bdbPageHeader+2*entries || start >= end || end > len(p) {
			return nil, fmt.Errorf("%s: Berkeley DB page %d: item %d at %d-%d is outside the page", db.name, pgno, i, start, end)
		}
		return p[start:end], nil
	}
	for i := 0; i+1 < entries; i += 2 {
		k, err := item(i)
		if err != nil {
			return err
		}
		d, err := item(i + 1)
		if err != nil {
			return err
		}
		if k[0] != bdbKeyData {
			return fmt.Errorf("%s: Berkeley DB page %d: key item of type %d is not read", db.name, pgno, k[0])
		}
		var val []byte
		switch d[0] {
		case bdbKeyData:
			val = d[1:]
		case bdbOffPage:
			if len(d) < 12 {
				return fmt.Errorf("%s: Berkeley DB page %d: truncated off-page item", db.name, pgno)
			}
			if val, err = db.overflow(db.order.Uint32(d[4:]), db.order.Uint32(d[8:])); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: Berkeley DB page %d: data item of type %d is not read", db.name, pgno, d[0])
		}
		if err := fn(k[1:], val); err != nil {
			return err
		}
	}
	return nil
}

// overflow reads the value of length total stored in the overflow chain
// that starts on page first.
func (db *bdbDB) overflow(first, total uint32) ([]byte, error) {
	if int64(total) > int64(db.maxValue) || int64(total) > int64(db.pages)*int64(db.pageSize) {
		return nil, fmt.Errorf("%s: Berkeley DB value of %d bytes is larger than accepted", db.name, total)
	}
	out := make([]byte, 0, total)
	page := make([]byte, db.pageSize)
	for pg := first; uint32(len(out)) < total; {
		if pg == 0 || pg >= db.pages {
			return nil, fmt.Errorf("%s: Berkeley DB overflow page %d is outside the file's %d pages", db.name, pg, db.pages)
		}
		if db.seen[pg] {
			return nil, fmt.Errorf("%s: Berkeley DB overflow page %d is used twice (a loop or a corrupt chain)", db.name, pg)
		}
		db.seen[pg] = true
		if _, err := db.r.ReadAt(page, int64(pg)*int64(db.pageSize)); err != nil {
			return nil, fmt.Errorf("%s: read Berkeley DB page %d: %w", db.name, pg, err)
		}
		if page[25] != bdbOverflow {
			return nil, fmt.Errorf("%s: Berkeley DB page %d has type %d, not overflow", db.name, pg, page[25])
		}
		n := int(db.order.Uint16(page[22:])) // hf_offset holds the bytes on an overflow page
		if n > db.pageSize-bdbPageHeader || uint32(len(out)+n) > total {
			return nil, fmt.Errorf("%s: Berkeley DB overflow page %d holds %d bytes, more than fit or were announced", db.name, pg, n)
		}
		if n == 0 {
			return nil, fmt.Errorf("%s: Berkeley DB overflow page %d is empty", db.name, pg)
		}
		out = append(out, page[bdbPageHeader:bdbPageHeader+n]...)
		pg = db.order.Uint32(page[16:])
	}
	return out, nil
}

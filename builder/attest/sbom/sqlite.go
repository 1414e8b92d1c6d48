package sbom

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
)

// This file is a small, read-only reader of the SQLite 3 database file
// format (https://www.sqlite.org/fileformat2.html), enough to list the
// rows of one rowid table: rpm's rpmdb.sqlite keeps each installed
// package's header in the Packages table. It follows the table b-tree
// from the root page sqlite_schema names, reads records and overflow
// chains, and trusts nothing: every page number is checked against the
// file, no page is read twice (which bounds the work by the file's size
// and breaks any cycle), the tree is at most sqliteMaxDepth deep and
// payloads are capped. It does not read a write-ahead log.

// sqliteMaxDepth bounds the depth of a table b-tree; a real one of a few
// gigabytes is 5 or 6 levels deep.
const sqliteMaxDepth = 20

// sqliteMagic opens every SQLite 3 database file.
const sqliteMagic = "SQLite format 3\x00"

// sqliteDB is an open database file.
type sqliteDB struct {
	r        io.ReaderAt
	name     string // the file's name, for errors
	pageSize int    // bytes a page
	usable   int    // bytes a page minus the reserved bytes at its end
	pages    uint32 // pages in the file
	maxRow   int    // largest payload accepted
	seen     []bool // pages read so far, by page number
}

// openSQLite reads the database header of r, a file of size bytes named
// name. Payloads larger than maxPayload bytes are errors.
func openSQLite(r io.ReaderAt, size int64, name string, maxPayload int) (*sqliteDB, error) {
	var h [100]byte
	if size < int64(len(h)) {
		return nil, fmt.Errorf("%s: %d bytes is too short for an SQLite database", name, size)
	}
	if _, err := r.ReadAt(h[:], 0); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if string(h[:16]) != sqliteMagic {
		return nil, fmt.Errorf("%s: not an SQLite 3 database", name)
	}
	ps := int(binary.BigEndian.Uint16(h[16:]))
	if ps == 1 {
		ps = 65536
	}
	if ps < 512 || ps&(ps-1) != 0 {
		return nil, fmt.Errorf("%s: invalid SQLite page size %d", name, ps)
	}
	usable := ps - int(h[20])
	if usable < 480 {
		return nil, fmt.Errorf("%s: SQLite pages of %d bytes with %d reserved are too small", name, ps, h[20])
	}
	if enc := binary.BigEndian.Uint32(h[56:]); enc > 1 {
		return nil, fmt.Errorf("%s: SQLite text encoding %d is not UTF-8", name, enc)
	}
	n := size / int64(ps)
	if n < 1 {
		return nil, fmt.Errorf("%s: shorter than one SQLite page (%d bytes)", name, ps)
	}
	if n > math.MaxUint32 {
		n = math.MaxUint32
	}
	return &sqliteDB{r: r, name: name, pageSize: ps, usable: usable, pages: uint32(n), maxRow: maxPayload,
		seen: make([]bool, n+1)}, nil
}

// page reads page number n (1-based), which must not have been read before.
func (db *sqliteDB) page(n uint32) ([]byte, error) {
	if n == 0 || n > db.pages {
		return nil, fmt.Errorf("%s: SQLite page %d is outside the file's %d pages", db.name, n, db.pages)
	}
	if db.seen[n] {
		return nil, fmt.Errorf("%s: SQLite page %d is used twice (a loop or a corrupt tree)", db.name, n)
	}
	db.seen[n] = true
	b := make([]byte, db.pageSize)
	if _, err := db.r.ReadAt(b, int64(n-1)*int64(db.pageSize)); err != nil {
		return nil, fmt.Errorf("%s: read SQLite page %d: %w", db.name, n, err)
	}
	return b[:db.usable], nil
}

// sqliteRow is one row of a rowid table: its rowid and record.
type sqliteRow struct {
	RowID  int64
	Record []byte
	// Overflow is the first page of the record's overflow chain, 0 if
	// the record is all on its leaf page.
	Overflow uint32
}

// table calls fn with each row of the rowid table whose b-tree has its
// root on page root, in rowid order. fn's error stops the walk and is
// returned as is.
func (db *sqliteDB) table(root uint32, fn func(sqliteRow) error) error {
	return db.walk(root, 0, fn)
}

func (db *sqliteDB) walk(pgno uint32, depth int, fn func(sqliteRow) error) error {
	if depth > sqliteMaxDepth {
		return fmt.Errorf("%s: SQLite b-tree deeper than %d levels", db.name, sqliteMaxDepth)
	}
	p, err := db.page(pgno)
	if err != nil {
		return err
	}
	hdr := 0
	if pgno == 1 {
		hdr = 100 // the database header comes first on page 1
	}
	if len(p) < hdr+12 {
		return fmt.Errorf("%s: SQLite page %d is too short", db.name, pgno)
	}
	kind := p[hdr]
	ncells := int(binary.BigEndian.Uint16(p[hdr+3:]))
	ptrs := hdr + 8
	if kind == 0x05 {
		ptrs = hdr + 12
	}
	if ptrs+2*ncells > len(p) {
		return fmt.Errorf("%s: SQLite page %d has %d cells, more than fit", db.name, pgno, ncells)
	}
	cell := func(i int) (int, error) {
		off := int(binary.BigEndian.Uint16(p[ptrs+2*i:]))
		if off < ptrs+2*ncells || off >= len(p) {
			return 0, fmt.Errorf("%s: SQLite page %d: cell %d at offset %d is outside the page", db.name, pgno, i, off)
		}
		return off, nil
	}
	switch kind {
	case 0x05: // table interior: (left child, key) cells, then the right-most child
		for i := 0; i < ncells; i++ {
			off, err := cell(i)
			if err != nil {
				return err
			}
			if off+4 > len(p) {
				return fmt.Errorf("%s: SQLite page %d: cell %d is truncated", db.name, pgno, i)
			}
			if err := db.walk(binary.BigEndian.Uint32(p[off:]), depth+1, fn); err != nil {
				return err
			}
		}
		return db.walk(binary.BigEndian.Uint32(p[hdr+8:]), depth+1, fn)
	case 0x0d: // table leaf: (payload size, rowid, payload[, first overflow page]) cells
		for i := 0; i < ncells; i++ {
			off, err := cell(i)
			if err != nil {
				return err
			}
			row, err := db.leafCell(p, pgno, off)
			if err != nil {
				return err
			}
			if err := fn(row); err != nil {
				return err
			}
		}
		return nil
	default:
		return fmt.Errorf("%s: SQLite page %d has type %#x, not a table b-tree page", db.name, pgno, kind)
	}
}

// leafCell reads the table leaf cell at offset off of page p (number
// pgno), following its overflow chain.
func (db *sqliteDB) leafCell(p []byte, pgno uint32, off int) (sqliteRow, error) {
	size, n := sqliteVarint(p[off:])
	if n == 0 {
		return sqliteRow{}, fmt.Errorf("%s: SQLite page %d: truncated cell", db.name, pgno)
	}
	off += n
	rowid, n := sqliteVarint(p[off:])
	if n == 0 {
		return sqliteRow{}, fmt.Errorf("%s: SQLite page %d: truncated cell", db.name, pgno)
	}
	off += n
	if size > uint64(db.maxRow) {
		return sqliteRow{}, fmt.Errorf("%s: SQLite row %d has a payload of %d bytes, more than the %d accepted", db.name, int64(rowid), size, db.maxRow)
	}
	total := int(size)
	// How much of the payload is on the leaf page (the file format's
	// X, M and K for table leaves).
	u := db.usable
	local := total
	if x := u - 35; total > x {
		m := (u-12)*32/255 - 23
		k := m + (total-m)%(u-4)
		local = m
		if k <= x {
			local = k
		}
	}
	end := off + local
	if end > len(p) || (local < total && end+4 > len(p)) {
		return sqliteRow{}, fmt.Errorf("%s: SQLite page %d: cell payload runs past the page", db.name, pgno)
	}
	if uint64(total) > uint64(db.pages)*uint64(db.usable) {
		return sqliteRow{}, fmt.Errorf("%s: SQLite row %d has a payload of %d bytes, more than the file holds", db.name, int64(rowid), total)
	}
	payload := make([]byte, 0, total)
	payload = append(payload, p[off:end]...)
	var first uint32
	if local < total {
		first = binary.BigEndian.Uint32(p[end:])
		next := first
		for len(payload) < total {
			if next == 0 {
				return sqliteRow{}, fmt.Errorf("%s: SQLite row %d: overflow chain ends %d bytes short", db.name, int64(rowid), total-len(payload))
			}
			ov, err := db.page(next)
			if err != nil {
				return sqliteRow{}, fmt.Errorf("%w, in the overflow chain of row %d", err, int64(rowid))
			}
			next = binary.BigEndian.Uint32(ov)
			payload = append(payload, ov[4:min(len(ov), 4+total-len(payload))]...)
		}
	}
	return sqliteRow{RowID: int64(rowid), Record: payload, Overflow: first}, nil
}

// sqliteVarint decodes a SQLite variable-length integer: up to 8 bytes of
// 7 bits, most significant first, each with its high bit set if more
// follow, then a ninth byte of 8 bits. n is 0 if b is too short.
func sqliteVarint(b []byte) (v uint64, n int) {
	for i := 0; i < 9; i++ {
		if i >= len(b) {
			return 0, 0
		}
		if i == 8 {
			return v<<8 | uint64(b[i]), 9
		}
		v = v<<7 | uint64(b[i]&0x7f)
		if b[i]&0x80 == 0 {
			return v, i + 1
		}
	}
	return v, 9 // not reached
}

// sqliteValue is one column of a record: nil for NULL, int64, float64,
// string (TEXT) or []byte (BLOB).
type sqliteValue = any

// errSQLiteRecord reports a malformed record.
var errSQLiteRecord = errors.New("malformed SQLite record")

// sqliteRecord decodes a record: a header (its own size, then one serial
// type a column) and the column values. The values share rec's memory.
func sqliteRecord(rec []byte) ([]sqliteValue, error) {
	hsize, n := sqliteVarint(rec)
	if n == 0 || hsize < uint64(n) || hsize > uint64(len(rec)) {
		return nil, errSQLiteRecord
	}
	types := rec[n:hsize]
	body := rec[hsize:]
	var out []sqliteValue
	for len(types) > 0 {
		st, n := sqliteVarint(types)
		if n == 0 {
			return nil, errSQLiteRecord
		}
		types = types[n:]
		var size uint64
		switch {
		case st == 0, st == 8, st == 9:
		case st <= 4:
			size = st
		case st == 5:
			size = 6
		case st == 6, st == 7:
			size = 8
		case st >= 12:
			size = (st - 12) / 2
		default:
			return nil, errSQLiteRecord // 10 and 11 are reserved
		}
		if size > uint64(len(body)) {
			return nil, errSQLiteRecord
		}
		v := body[:size]
		body = body[size:]
		switch {
		case st == 0:
			out = append(out, nil)
		case st == 8:
			out = append(out, int64(0))
		case st == 9:
			out = append(out, int64(1))
		case st == 7:
			out = append(out, math.Float64frombits(binary.BigEndian.Uint64(v)))
		case st <= 6:
			var x int64
			if len(v) > 0 && v[0]&0x80 != 0 {
				x = -1 // sign-extend
			}
			for _, c := range v {
				x = x<<8 | int64(c)
			}
			out = append(out, x)
		case st%2 == 0:
			out = append(out, v)
		default:
			out = append(out, string(v))
		}
	}
	return out, nil
}

// rootPage finds the root page of the rowid table named name in
// sqlite_schema (the b-tree on page 1). Table names compare without
// regard to ASCII case, as SQLite's do.
func (db *sqliteDB) rootPage(name string) (uint32, error) {
	var root uint32
	err := db.table(1, func(r sqliteRow) error {
		cols, err := sqliteRecord(r.Record)
		if err != nil {
			return fmt.Errorf("%s: sqlite_schema row %d: %w", db.name, r.RowID, err)
		}
		// type, name, tbl_name, rootpage, sql
		if len(cols) < 5 || cols[0] != "table" {
			return nil
		}
		if n, _ := cols[1].(string); !strings.EqualFold(n, name) {
			return nil
		}
		pg, ok := cols[3].(int64)
		if !ok || pg < 1 || pg > math.MaxUint32 {
			return fmt.Errorf("%s: table %s has an invalid root page %v", db.name, name, cols[3])
		}
		if sql, _ := cols[4].(string); strings.Contains(strings.ToUpper(sql), "WITHOUT ROWID") {
			return fmt.Errorf("%s: table %s is a WITHOUT ROWID table", db.name, name)
		}
		root = uint32(pg)
		return errStop
	})
	if err != nil && !errors.Is(err, errStop) {
		return 0, err
	}
	if root == 0 {
		return 0, fmt.Errorf("%s: no table %s", db.name, name)
	}
	return root, nil
}

// errStop ends a walk early without an error.
var errStop = errors.New("stop")

// sqliteTableRows opens the database in r and calls fn with the columns
// of each row of table name, in rowid order. A column declared INTEGER
// PRIMARY KEY (the rowid's alias) reads as NULL, as SQLite stores it.
func sqliteTableRows(r io.ReaderAt, size int64, name, table string, maxPayload int, fn func(rowid int64, cols []sqliteValue) error) error {
	db, err := openSQLite(r, size, name, maxPayload)
	if err != nil {
		return err
	}
	root, err := db.rootPage(table)
	if err != nil {
		return err
	}
	return db.table(root, func(row sqliteRow) error {
		cols, err := sqliteRecord(row.Record)
		if err != nil {
			return fmt.Errorf("%s: table %s row %d: %w", name, table, row.RowID, err)
		}
		return fn(row.RowID, cols)
	})
}

// sqliteBytes is b as an io.ReaderAt and its size.
func sqliteBytes(b []byte) (io.ReaderAt, int64) {
	return bytes.NewReader(b), int64(len(b))
}

package sbom

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibuild/ibuild/layers"
)

// The RPM fixtures (testdata/rpm, rpm-small, rpm-bdb, rpm-bdb-be) were
// made by testdata/rpm-fixtures/make.sh with Debian 12's rpm 4.18,
// sqlite3 and db5.3_load: three noarch packages built from the .spec
// files there (hello-tiny; epochal, Epoch 2; bigdesc, a 21 KB header)
// and an imported gpg-pubkey. The tests need none of those tools.

func scanRoot(t *testing.T, root string) *Inventory {
	t.Helper()
	inv, err := Scan(context.Background(), layers.NewRootFS([]string{root}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	return inv
}

// TestRPMPackages checks every field of the packages read from each
// backend, and that the documents carry them.
func TestRPMPackages(t *testing.T) {
	cases := []struct {
		root, location, distro string
	}{
		{"rpm", "/var/lib/rpm/rpmdb.sqlite", "fedora"},
		{"rpm-small", "/usr/lib/sysimage/rpm/rpmdb.sqlite", "amzn"},
		{"rpm-bdb", "/var/lib/rpm/Packages", "centos"},
		{"rpm-bdb-be", "/var/lib/rpm/Packages", "rhel"},
	}
	for _, tc := range cases {
		t.Run(tc.root, func(t *testing.T) {
			inv := scanRoot(t, filepath.Join("testdata", tc.root))
			if len(inv.Warnings) != 0 {
				t.Errorf("warnings %q", inv.Warnings)
			}
			want := []Package{
				{Name: "bigdesc", Version: "0.9.1-3.fc39", License: "BSD-3-Clause", Source: "bigdesc-0.9.1-3.fc39.src.rpm"},
				{Name: "epochal", Version: "2:3.4.5-7.fc39", License: "Apache-2.0 OR GPL-2.0-or-later", Source: "epochal-3.4.5-7.fc39.src.rpm"},
				{Name: "hello-tiny", Version: "1.0-1.fc39", License: "MIT", Source: "hello-tiny-1.0-1.fc39.src.rpm"},
			}
			if len(inv.Packages) != len(want) {
				t.Fatalf("packages %+v, want %d", inv.Packages, len(want))
			}
			for i, w := range want {
				got := inv.Packages[i]
				w.Type, w.Arch, w.Supplier, w.Location, w.PURL = Rpm, "noarch", "ibuild tests", tc.location, got.PURL
				if got != w {
					t.Errorf("package %d:\n got %+v\nwant %+v", i, got, w)
				}
				if !strings.HasPrefix(got.PURL, "pkg:rpm/"+tc.distro+"/"+w.Name+"@") {
					t.Errorf("purl %s", got.PURL)
				}
			}
			o := DocOptions{Subject: Subject{Name: "app"}, Created: time.Unix(0, 0), Tool: "ibuild-v1"}
			spdx, err := inv.SPDX(o)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(spdx, []byte(`"licenseDeclared": "BSD-3-Clause"`)) || !bytes.Contains(spdx, []byte(`"versionInfo": "2:3.4.5-7.fc39"`)) ||
				!bytes.Contains(spdx, []byte(`SPDXRef-Package-rpm-epochal-`)) || !bytes.Contains(spdx, []byte(`"supplier": "Organization: ibuild tests"`)) {
				t.Errorf("SPDX document lacks the rpm packages:\n%s", spdx)
			}
			cdx, err := inv.CycloneDX(o)
			if err != nil {
				t.Fatal(err)
			}
			var bom struct {
				Components []struct {
					Name, PURL string
					Licenses   []struct{ Expression string }
					Properties []struct{ Name, Value string }
				}
			}
			if err := json.Unmarshal(cdx, &bom); err != nil {
				t.Fatal(err)
			}
			if len(bom.Components) != 3 || bom.Components[1].Licenses[0].Expression != "Apache-2.0 OR GPL-2.0-or-later" ||
				bom.Components[1].Properties[0].Value != "rpm" {
				t.Errorf("CycloneDX BOM:\n%s", cdx)
			}
		})
	}
}

// copyRoot copies testdata/name to a temporary root and rewrites its file
// db with mutate.
func copyRoot(t *testing.T, name, db string, mutate func(t *testing.T, data []byte) []byte) string {
	t.Helper()
	root := t.TempDir()
	src := filepath.Join("testdata", name)
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		dst := filepath.Join(root, rel)
		if fi.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if "/"+filepath.ToSlash(rel) == db {
			data = mutate(t, bytes.Clone(data))
		}
		return os.WriteFile(dst, data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// sqliteRows lists the rows of the Packages table of the SQLite file data.
func sqliteRows(t *testing.T, data []byte) (*sqliteDB, uint32, []sqliteRow) {
	t.Helper()
	r, size := sqliteBytes(data)
	db, err := openSQLite(r, size, "test", rpmMaxBlob)
	if err != nil {
		t.Fatal(err)
	}
	root, err := db.rootPage("Packages")
	if err != nil {
		t.Fatal(err)
	}
	var rows []sqliteRow
	if err := db.table(root, func(r sqliteRow) error { rows = append(rows, r); return nil }); err != nil {
		t.Fatal(err)
	}
	return db, root, rows
}

// overflowRow is the first row of data's Packages table with an overflow
// chain, and the page size.
func overflowRow(t *testing.T, data []byte) (sqliteRow, int) {
	db, _, rows := sqliteRows(t, data)
	for _, r := range rows {
		if r.Overflow != 0 {
			return r, db.pageSize
		}
	}
	t.Fatal("no row overflows")
	return sqliteRow{}, 0
}

// patchBlob makes the index entry of tag in the RPM header of package
// name (a header stored whole on its page) point past the data.
func patchBlob(t *testing.T, data []byte, name string) {
	_, _, rows := sqliteRows(t, data)
	for _, r := range rows {
		cols, err := sqliteRecord(r.Record)
		if err != nil {
			t.Fatal(err)
		}
		blob := cols[1].([]byte)
		if h, err := parseRPMHeader(blob); err != nil || h.Name != name || r.Overflow != 0 {
			continue
		}
		// The file may hold stale copies too (freed pages): patch all.
		blob = bytes.Clone(blob)
		il := int(binary.BigEndian.Uint32(blob))
		found := false
		for from := 0; ; from++ {
			at := bytes.Index(data[from:], blob)
			if at < 0 {
				break
			}
			from += at
			for i := 0; i < il; i++ {
				if e := data[from+8+16*i:]; binary.BigEndian.Uint32(e) == rpmTagName {
					binary.BigEndian.PutUint32(e[8:], 0xffffff00)
					found = true
				}
			}
		}
		if found {
			return
		}
	}
	t.Fatalf("no whole header of %s", name)
}

// bdbOverflowPage is the first overflow page, not the last of its
// chain, of the little-endian Berkeley DB file data, 4096-byte pages.
func bdbOverflowPage(t *testing.T, data []byte) int {
	for pg := 1; (pg+1)*4096 <= len(data); pg++ {
		if data[pg*4096+25] == bdbOverflow && binary.LittleEndian.Uint32(data[pg*4096+16:]) != 0 {
			return pg
		}
	}
	t.Fatal("no overflow page")
	return 0
}

// TestRPMCorrupt scans damaged copies of the fixtures: each gives a
// warning naming the database (or an error naming it), never a panic,
// and keeps the packages read before the damage.
func TestRPMCorrupt(t *testing.T) {
	const sqlitePath, bdbPath = "/var/lib/rpm/rpmdb.sqlite", "/var/lib/rpm/Packages"
	cases := []struct {
		name, root, db string
		mutate         func(t *testing.T, data []byte) []byte
		packages       int      // listed despite the damage
		warnings       []string // substrings of the one warning, besides the path
	}{
		{
			name: "sqlite truncated", root: "rpm", db: sqlitePath,
			mutate:   func(t *testing.T, d []byte) []byte { return d[:5*4096+100] },
			warnings: []string{"malformed", "outside the file's 5 pages"},
		},
		{
			name: "sqlite not a database", root: "rpm", db: sqlitePath,
			mutate:   func(t *testing.T, d []byte) []byte { return d[100:] },
			warnings: []string{"malformed", "not an SQLite 3 database"},
		},
		{
			name: "sqlite overflow chain loops", root: "rpm", db: sqlitePath,
			mutate: func(t *testing.T, d []byte) []byte {
				r, ps := overflowRow(t, d)
				// The second overflow page points back to the first.
				second := binary.BigEndian.Uint32(d[int(r.Overflow-1)*ps:])
				binary.BigEndian.PutUint32(d[int(second-1)*ps:], r.Overflow)
				return d
			},
			packages: 2, warnings: []string{"malformed", "is used twice"},
		},
		{
			name: "sqlite overflow page past the end", root: "rpm", db: sqlitePath,
			mutate: func(t *testing.T, d []byte) []byte {
				r, ps := overflowRow(t, d)
				binary.BigEndian.PutUint32(d[int(r.Overflow-1)*ps:], 0x7fffffff)
				return d
			},
			packages: 2, warnings: []string{"malformed", "page 2147483647 is outside the file"},
		},
		{
			name: "sqlite interior page points at itself", root: "rpm-small", db: "/usr/lib/sysimage/rpm/rpmdb.sqlite",
			mutate: func(t *testing.T, d []byte) []byte {
				db, root, _ := sqliteRows(t, d)
				p := d[int(root-1)*db.pageSize:]
				if p[0] != 0x05 {
					t.Fatalf("root page %d has type %#x, want an interior page", root, p[0])
				}
				binary.BigEndian.PutUint32(p[8:], root)
				return d
			},
			packages: -1, warnings: []string{"malformed", "is used twice"},
		},
		{
			name: "rpm header offset outside the blob", root: "rpm", db: sqlitePath,
			mutate: func(t *testing.T, d []byte) []byte {
				patchBlob(t, d, "hello-tiny")
				return d
			},
			packages: 2, warnings: []string{"1 package headers could not be read", "tag 1000: offset 4294967040 is outside"},
		},
		{
			name: "bdb truncated", root: "rpm-bdb", db: bdbPath,
			mutate:   func(t *testing.T, d []byte) []byte { return d[:len(d)-4096] },
			packages: -1, warnings: []string{"malformed", "outside the file's"},
		},
		{
			name: "bdb overflow chain loops", root: "rpm-bdb", db: bdbPath,
			mutate: func(t *testing.T, d []byte) []byte {
				pg := bdbOverflowPage(t, d)
				binary.LittleEndian.PutUint32(d[pg*4096+16:], uint32(pg))
				return d
			},
			packages: -1, warnings: []string{"malformed", "is used twice"},
		},
		{
			name: "bdb not a database", root: "rpm-bdb", db: bdbPath,
			mutate:   func(t *testing.T, d []byte) []byte { return bytes.Repeat([]byte{0xff}, 8192) },
			warnings: []string{"malformed", "not a Berkeley DB hash database"},
		},
		{
			name: "ndb is reported, not read", root: "rpm", db: sqlitePath,
			mutate:   nil, // replaced by a Packages.db below
			warnings: []string{"/var/lib/rpm/Packages.db (ndb) is not read"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var root string
			if tc.mutate == nil {
				root = t.TempDir()
				if err := os.MkdirAll(filepath.Join(root, "var/lib/rpm"), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(root, "var/lib/rpm/Packages.db"), []byte("RpmP"), 0o644); err != nil {
					t.Fatal(err)
				}
			} else {
				root = copyRoot(t, tc.root, tc.db, tc.mutate)
			}
			inv := scanRoot(t, root)
			if tc.packages >= 0 && len(inv.Packages) != tc.packages {
				t.Errorf("%d packages %v, want %d", len(inv.Packages), purls(inv), tc.packages)
			}
			if len(inv.Warnings) != 1 {
				t.Fatalf("warnings %q, want 1", inv.Warnings)
			}
			t.Log(inv.Warnings[0])
			for _, w := range append(tc.warnings, tc.db) {
				if tc.mutate == nil && w == tc.db {
					continue
				}
				if !strings.Contains(inv.Warnings[0], w) {
					t.Errorf("warning %q, want it to contain %q", inv.Warnings[0], w)
				}
			}
		})
	}
}

// TestRPMWriteAheadLog warns about a write-ahead log that is not empty.
func TestRPMWriteAheadLog(t *testing.T) {
	root := copyRoot(t, "rpm", "/var/lib/rpm/rpmdb.sqlite", func(t *testing.T, d []byte) []byte { return d })
	if err := os.WriteFile(filepath.Join(root, "var/lib/rpm/rpmdb.sqlite-wal"), make([]byte, 4096+32), 0o644); err != nil {
		t.Fatal(err)
	}
	inv := scanRoot(t, root)
	if len(inv.Packages) != 3 || len(inv.Warnings) != 1 || !strings.Contains(inv.Warnings[0], "rpmdb.sqlite-wal, 4128 bytes") {
		t.Errorf("packages %v, warnings %q", purls(inv), inv.Warnings)
	}
}

// TestSQLiteReader reads the fixtures' SQLite files directly: the
// sqlite_schema of each, and the Packages rows in rowid order.
func TestSQLiteReader(t *testing.T) {
	for _, f := range []string{"testdata/rpm/var/lib/rpm/rpmdb.sqlite", "testdata/rpm-small/usr/lib/sysimage/rpm/rpmdb.sqlite"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		db, _, rows := sqliteRows(t, data)
		if len(rows) != 4 {
			t.Fatalf("%s: %d rows, want 4", f, len(rows))
		}
		var names []string
		for i, r := range rows {
			if r.RowID != int64(i+1) {
				t.Errorf("%s: row %d has rowid %d", f, i, r.RowID)
			}
			cols, err := sqliteRecord(r.Record)
			if err != nil || len(cols) != 2 || cols[0] != nil {
				t.Fatalf("%s: row %d: %v %v", f, r.RowID, cols, err)
			}
			h, err := parseRPMHeader(cols[1].([]byte))
			if err != nil {
				t.Fatal(err)
			}
			names = append(names, h.Name+" "+h.EVR())
		}
		if got := strings.Join(names, ", "); got != "gpg-pubkey 65d383ea-6b14d038, hello-tiny 1.0-1.fc39, epochal 2:3.4.5-7.fc39, bigdesc 0.9.1-3.fc39" {
			t.Errorf("%s: %s", f, got)
		}
		r, size := sqliteBytes(data)
		if db, err = openSQLite(r, size, "test", rpmMaxBlob); err != nil {
			t.Fatal(err)
		}
		if _, err := db.rootPage("NoSuchTable"); err == nil || !strings.Contains(err.Error(), "no table NoSuchTable") {
			t.Errorf("%s: missing table: %v", f, err)
		}
	}
}

// TestSQLiteHeader checks the database header's checks, including the
// page size 1 that stands for 65536.
func TestSQLiteHeader(t *testing.T) {
	hdr := func(pageSize uint16, reserved byte) []byte {
		b := make([]byte, 65536)
		copy(b, sqliteMagic)
		binary.BigEndian.PutUint16(b[16:], pageSize)
		b[20] = reserved
		b[56+3] = 1 // UTF-8
		return b
	}
	cases := []struct {
		data             []byte
		pageSize, usable int
		pages            uint32
		err              string
	}{
		{data: hdr(1, 0), pageSize: 65536, usable: 65536, pages: 1},
		{data: hdr(4096, 8), pageSize: 4096, usable: 4088, pages: 16},
		{data: hdr(512, 33), err: "too small"},
		{data: hdr(1000, 0), err: "invalid SQLite page size 1000"},
		{data: hdr(4096, 0)[:99], err: "too short"},
		{data: hdr(1, 0)[:4096], err: "shorter than one SQLite page"},
	}
	for _, tc := range cases {
		r, size := sqliteBytes(tc.data)
		db, err := openSQLite(r, size, "x.sqlite", 1<<20)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.HasPrefix(err.Error(), "x.sqlite: ") {
				t.Errorf("error %v, want %q", err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if db.pageSize != tc.pageSize || db.usable != tc.usable || db.pages != tc.pages {
			t.Errorf("page size %d usable %d pages %d, want %d %d %d", db.pageSize, db.usable, db.pages, tc.pageSize, tc.usable, tc.pages)
		}
	}
}

func TestSQLiteVarintRecord(t *testing.T) {
	varints := []struct {
		in []byte
		v  uint64
		n  int
	}{
		{[]byte{0x00}, 0, 1},
		{[]byte{0x7f}, 127, 1},
		{[]byte{0x81, 0x00}, 128, 2},
		{[]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 1<<64 - 1, 9},
		{[]byte{0x81}, 0, 0},
		{nil, 0, 0},
	}
	for _, tc := range varints {
		if v, n := sqliteVarint(tc.in); v != tc.v || n != tc.n {
			t.Errorf("varint % x = %d, %d; want %d, %d", tc.in, v, n, tc.v, tc.n)
		}
	}
	// header size 8; NULL, int8 -2, int16 300, 0, 1, blob(2), text(3)
	cols, err := sqliteRecord([]byte{8, 0, 1, 2, 8, 9, 16, 19, 0xfe, 0x01, 0x2c, 0xaa, 0xbb, 'a', 'b', 'c'})
	if err != nil {
		t.Fatal(err)
	}
	want := []any{nil, int64(-2), int64(300), int64(0), int64(1), []byte{0xaa, 0xbb}, "abc"}
	if len(cols) != len(want) {
		t.Fatalf("cols %v", cols)
	}
	for i := range want {
		if b, ok := want[i].([]byte); ok {
			if !bytes.Equal(cols[i].([]byte), b) {
				t.Errorf("col %d = %v", i, cols[i])
			}
		} else if cols[i] != want[i] {
			t.Errorf("col %d = %#v, want %#v", i, cols[i], want[i])
		}
	}
	for _, bad := range [][]byte{{}, {9, 0}, {2, 10}, {2, 16, 0xaa}, {3, 0x81}} {
		if _, err := sqliteRecord(bad); err == nil {
			t.Errorf("record % x: no error", bad)
		}
	}
}

// TestRPMHeaderBounds feeds parseRPMHeader damaged copies of a real header.
func TestRPMHeaderBounds(t *testing.T) {
	data, err := os.ReadFile("testdata/rpm/var/lib/rpm/rpmdb.sqlite")
	if err != nil {
		t.Fatal(err)
	}
	_, _, rows := sqliteRows(t, data)
	cols, _ := sqliteRecord(rows[2].Record) // epochal
	blob := cols[1].([]byte)
	h, err := parseRPMHeader(blob)
	if err != nil || h.Name != "epochal" || h.EVR() != "2:3.4.5-7.fc39" || h.Arch != "noarch" || h.Vendor != "ibuild tests" ||
		h.Summary != "A test package with an Epoch" || h.Size == 0 {
		t.Fatalf("%+v %v", h, err)
	}
	entry := func(tag uint32) int {
		for i := 0; i < int(binary.BigEndian.Uint32(blob)); i++ {
			if binary.BigEndian.Uint32(blob[8+16*i:]) == tag {
				return 8 + 16*i
			}
		}
		t.Fatalf("no tag %d", tag)
		return 0
	}
	cases := []struct {
		name   string
		mutate func(b []byte) []byte
		err    string
	}{
		{"truncated", func(b []byte) []byte { return b[:len(b)-1] }, "needs"},
		{"short", func(b []byte) []byte { return b[:7] }, "truncated"},
		{"huge index", func(b []byte) []byte { binary.BigEndian.PutUint32(b, 0x10000); return b }, "invalid size"},
		{"index past the blob", func(b []byte) []byte { binary.BigEndian.PutUint32(b, 0xffff); return b }, "needs"},
		{"data past the blob", func(b []byte) []byte { binary.BigEndian.PutUint32(b[4:], 0x0fffffff); return b }, "needs"},
		{"string offset", func(b []byte) []byte { binary.BigEndian.PutUint32(b[entry(rpmTagVersion)+8:], 1<<31); return b }, "tag 1001: offset"},
		{"epoch offset", func(b []byte) []byte { binary.BigEndian.PutUint32(b[entry(rpmTagEpoch)+8:], 0xfffffffe); return b }, "tag 1003: offset"},
		{"epoch type", func(b []byte) []byte { binary.BigEndian.PutUint32(b[entry(rpmTagEpoch)+4:], rpmString); return b }, "not INT32"},
		{"name type", func(b []byte) []byte { binary.BigEndian.PutUint32(b[entry(rpmTagName)+4:], rpmInt32); return b }, "not a string"},
		{"unterminated", func(b []byte) []byte {
			il := binary.BigEndian.Uint32(b)
			binary.BigEndian.PutUint32(b[entry(rpmTagName)+8:], uint32(len(b))-8-16*il-1)
			b[len(b)-1] = 'x'
			return b
		}, "runs past"},
	}
	for _, tc := range cases {
		_, err := parseRPMHeader(tc.mutate(bytes.Clone(blob)))
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.err)
		}
	}
}

// TestRPMTooLarge leaves a database larger than rpmMaxFile unread (a
// sparse file from a hostile image would otherwise cost its size).
func TestRPMTooLarge(t *testing.T) {
	root := t.TempDir()
	db := filepath.Join(root, "var/lib/rpm/rpmdb.sqlite")
	if err := os.MkdirAll(filepath.Dir(db), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(db, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(db, rpmMaxFile+1); err != nil {
		t.Fatalf("make a sparse file past the size bound: %v", err)
	}
	inv := scanRoot(t, root)
	if len(inv.Packages) != 0 || len(inv.Warnings) != 1 || !strings.Contains(inv.Warnings[0], "/var/lib/rpm/rpmdb.sqlite is larger than") {
		t.Errorf("packages %v, warnings %q", purls(inv), inv.Warnings)
	}
}

package sbom

import (
	"os"
	"testing"
)

// The seeds are whole database files (tens of KB): run the fuzzers with
// a short -fuzzminimizetime, as in
//
//	go test -tags exclude_graphdriver_btrfs -run '^$' -fuzz '^FuzzRPMSQLite$' -fuzztime 30s -fuzzminimizetime 2s
//
// or the default minutes-long minimization of each new input takes the
// whole run.

// fuzzSeeds adds the fixture files to f's corpus.
func fuzzSeeds(f *testing.F, files ...string) {
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
}

// FuzzRPMSQLite reads arbitrary bytes as rpmdb.sqlite: the SQLite
// reader and the header parser must return, without a panic, whatever
// the bytes.
func FuzzRPMSQLite(f *testing.F) {
	fuzzSeeds(f, "testdata/rpm-small/usr/lib/sysimage/rpm/rpmdb.sqlite", "testdata/rpm/var/lib/rpm/rpmdb.sqlite")
	f.Fuzz(func(t *testing.T, data []byte) {
		r, size := sqliteBytes(data)
		_ = sqliteTableRows(r, size, "rpmdb.sqlite", "Packages", 1<<20, func(_ int64, cols []sqliteValue) error {
			for _, c := range cols {
				if b, ok := c.([]byte); ok {
					_, _ = parseRPMHeader(b)
				}
			}
			return nil
		})
	})
}

// FuzzRPMBDB reads arbitrary bytes as a Berkeley DB Packages file.
func FuzzRPMBDB(f *testing.F) {
	fuzzSeeds(f, "testdata/rpm-bdb/var/lib/rpm/Packages")
	f.Fuzz(func(t *testing.T, data []byte) {
		r, size := sqliteBytes(data)
		_ = bdbHashValues(r, size, "Packages", 1<<20, func(_, val []byte) error {
			_, _ = parseRPMHeader(val)
			return nil
		})
	})
}

// FuzzRPMHeader parses arbitrary bytes as an RPM header blob, seeded
// with the fixture's real headers.
func FuzzRPMHeader(f *testing.F) {
	data, err := os.ReadFile("testdata/rpm/var/lib/rpm/rpmdb.sqlite")
	if err != nil {
		f.Fatal(err)
	}
	r, size := sqliteBytes(data)
	err = sqliteTableRows(r, size, "rpmdb.sqlite", "Packages", rpmMaxBlob, func(_ int64, cols []sqliteValue) error {
		f.Add(cols[1].([]byte))
		return nil
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, blob []byte) {
		h, err := parseRPMHeader(blob)
		if err == nil && (h.Name == "" || h.Version == "") {
			t.Errorf("header without name or version accepted: %+v", h)
		}
	})
}

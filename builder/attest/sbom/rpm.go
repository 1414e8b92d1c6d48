package sbom

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
)

// Bounds on what an RPM database from an untrusted image may cost.
const (
	// rpmMaxPackages caps the packages read from one database; a full
	// Fedora workstation has about 3,000.
	rpmMaxPackages = 200_000
	// rpmMaxBlob caps one package header; the largest real ones (kernel
	// modules, texlive) are a few megabytes.
	rpmMaxBlob = 32 << 20
	// rpmMaxFile caps the database file; a full Fedora workstation's is
	// about 200 MB.
	rpmMaxFile = 2 << 30
)

// rpmDatabases are where rpm keeps its database, in the order they are
// looked for: only the first one found is read (/var/lib/rpm is often a
// symbolic link to /usr/lib/sysimage/rpm, and a converted database can
// leave the old one behind).
var rpmDatabases = []string{
	"/var/lib/rpm/rpmdb.sqlite", "/usr/lib/sysimage/rpm/rpmdb.sqlite",
	"/var/lib/rpm/Packages", "/usr/lib/sysimage/rpm/Packages",
	"/var/lib/rpm/Packages.db", "/usr/lib/sysimage/rpm/Packages.db",
}

// catalogRPM adds the packages of the image's RPM database: sqlite
// (rpmdb.sqlite) or Berkeley DB hash (Packages). An ndb database
// (Packages.db) is not read: a warning says so. A malformed database is
// a warning too, and the packages read before the damage stay listed;
// only a database that cannot be opened or read fails the scan.
func catalogRPM(fsys FS, inv *Inventory) error {
	for _, p := range rpmDatabases {
		fi, host, err := fsys.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		if path.Base(p) == "Packages.db" {
			inv.Warnings = append(inv.Warnings, fmt.Sprintf("RPM database %s (ndb) is not read by this version: its packages are missing from the SBOM", p))
			return nil
		}
		// Checked before opening: a view without a host file reads the
		// whole database into memory.
		if fi.Size() > rpmMaxFile {
			inv.Warnings = append(inv.Warnings, fmt.Sprintf("RPM database %s is larger than %d bytes and is not read: its packages are missing from the SBOM", p, int64(rpmMaxFile)))
			return nil
		}
		r, size, closeFn, err := openDB(fsys, p, host)
		if err != nil {
			return fmt.Errorf("sbom: %s: %w", p, err)
		}
		defer closeFn()
		c := rpmCatalog{inv: inv, location: p}
		if path.Base(p) == "rpmdb.sqlite" {
			err = sqliteTableRows(r, size, p, "Packages", rpmMaxBlob, func(rowid int64, cols []sqliteValue) error {
				var blob []byte
				if len(cols) == 2 {
					blob, _ = cols[1].([]byte)
				}
				if blob == nil {
					c.bad(fmt.Errorf("row %d is not (hnum, blob)", rowid))
					return nil
				}
				return c.add(blob)
			})
			c.walWarning(fsys)
		} else {
			err = bdbHashValues(r, size, p, rpmMaxBlob, func(key, val []byte) error {
				if len(key) == 4 && bytes.Equal(key, []byte{0, 0, 0, 0}) {
					return nil // rpm's record of the last header number used
				}
				return c.add(val)
			})
		}
		var rerr *readError
		switch {
		case errors.As(err, &rerr):
			return fmt.Errorf("sbom: %w", err)
		case errors.Is(err, errRPMTooMany):
			inv.Warnings = append(inv.Warnings, fmt.Sprintf("RPM database %s lists more than %d packages: the rest are missing from the SBOM", p, rpmMaxPackages))
		case err != nil:
			// err names the file.
			inv.Warnings = append(inv.Warnings, fmt.Sprintf("RPM database malformed, %d packages read before the damage: %v", c.n, err))
		}
		if c.nbad > 0 {
			inv.Warnings = append(inv.Warnings, fmt.Sprintf("RPM database %s: %d package headers could not be read (the first: %v)", p, c.nbad, c.firstBad))
		}
		return nil
	}
	return nil
}

// errRPMTooMany stops a database walk at rpmMaxPackages.
var errRPMTooMany = errors.New("too many RPM packages")

// readError is an I/O error reading a database file, as opposed to a
// malformed one.
type readError struct{ err error }

func (e *readError) Error() string { return e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// ioReader turns the read errors of r into readErrors; short reads past
// the file's end stay io.EOF for the format readers to report.
type ioReader struct{ r io.ReaderAt }

func (r ioReader) ReadAt(b []byte, off int64) (int, error) {
	n, err := r.r.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return n, &readError{err}
	}
	return n, err
}

// openDB opens the database at in-image path p: its host file when the
// view gives one (no copy in memory), else its bytes.
func openDB(fsys FS, p, host string) (io.ReaderAt, int64, func(), error) {
	if host != "" {
		f, err := os.Open(host)
		if err != nil {
			return nil, 0, nil, err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, 0, nil, err
		}
		return ioReader{f}, st.Size(), func() { f.Close() }, nil
	}
	data, err := fsys.ReadFile(p)
	if err != nil {
		return nil, 0, nil, err
	}
	r, size := sqliteBytes(data)
	return r, size, func() {}, nil
}

// rpmCatalog turns the headers of one database into packages.
type rpmCatalog struct {
	inv      *Inventory
	location string
	n        int // packages read
	nbad     int // headers that could not be parsed
	firstBad error
}

// add lists the package whose header is blob. A header that does not
// parse is counted, not fatal. gpg-pubkey entries are skipped: they are
// the signing keys rpm imported, not installed software.
func (c *rpmCatalog) add(blob []byte) error {
	if c.n >= rpmMaxPackages {
		return errRPMTooMany
	}
	h, err := parseRPMHeader(blob)
	if err != nil {
		c.bad(err)
		return nil
	}
	c.n++
	if h.Name == "gpg-pubkey" {
		return nil
	}
	if h.Arch == "(none)" {
		h.Arch = ""
	}
	if h.SourceRPM == "(none)" {
		h.SourceRPM = ""
	}
	p := Package{Name: h.Name, Version: h.EVR(), Type: Rpm, Arch: h.Arch, Source: h.SourceRPM,
		Supplier: h.Vendor, License: h.License, Location: c.location}
	q := map[string]string{"arch": h.Arch, "upstream": h.SourceRPM, "distro": c.inv.Distro.qualifier()}
	if h.HasEpoch {
		q["epoch"] = fmt.Sprint(h.Epoch)
	}
	v := h.Version
	if h.Release != "" {
		v += "-" + h.Release
	}
	p.PURL = purl(string(Rpm), c.inv.Distro.ID, h.Name, v, q)
	c.inv.Packages = append(c.inv.Packages, p)
	return nil
}

func (c *rpmCatalog) bad(err error) {
	if c.nbad == 0 {
		c.firstBad = err
	}
	c.nbad++
}

// walWarning warns when rpmdb.sqlite has a write-ahead log that is not
// empty: changes in it are not read. rpm checkpoints the log when it
// closes the database, so an image normally has none or an empty one.
func (c *rpmCatalog) walWarning(fsys FS) {
	wal := c.location + "-wal"
	if fi, _, err := fsys.Lstat(wal); err == nil && fi.Mode().IsRegular() && fi.Size() > 0 {
		c.inv.Warnings = append(c.inv.Warnings, fmt.Sprintf("RPM database %s has a write-ahead log (%s, %d bytes) that is not read: packages changed by the last transaction may be missing or stale", c.location, wal, fi.Size()))
	}
}

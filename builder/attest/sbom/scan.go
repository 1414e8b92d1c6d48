package sbom

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
)

// Type is a package ecosystem, as package URLs name it.
type Type string

// The ecosystems the catalogers find.
const (
	Deb    Type = "deb"
	Apk    Type = "apk"
	Rpm    Type = "rpm"
	Golang Type = "golang"
	Npm    Type = "npm"
	Cargo  Type = "cargo"
	PyPI   Type = "pypi"
)

// Package is one piece of software found in the file system.
type Package struct {
	Name    string
	Version string
	Type    Type
	// Arch is the package's architecture as its manager names it
	// (amd64, all, x86_64), if it has one.
	Arch string
	// Source is the source package (Debian) or origin (Alpine), if
	// different from Name, or the source RPM's file name (RPM).
	Source string
	// Supplier is the maintainer as the database gives it (RPM: the
	// vendor, an organization).
	Supplier string
	// License is the declared license expression, if the database has one.
	License string
	// Location is the in-image path of the database, lockfile or binary
	// that lists the package.
	Location string
	// PURL is the package URL (https://github.com/package-url/purl-spec).
	PURL string
}

// Distro is the operating system release, from /etc/os-release.
type Distro struct {
	ID        string // debian, ubuntu, alpine, fedora, rhel
	VersionID string // 12, 22.04, 3.19.1
	Pretty    string
}

// Inventory is what Scan found.
type Inventory struct {
	Distro   Distro
	Packages []Package
	// Warnings say what the scan could not read (an ndb RPM database, a
	// malformed lockfile): the inventory is then incomplete.
	Warnings []string
}

// Options bound a scan.
type Options struct {
	// MaxEntries bounds the directory entries the file walk (Go binaries,
	// lockfiles) visits; 0 means 2,000,000. The package databases are
	// read whatever the bound.
	MaxEntries int
}

// skipDirs are never walked: kernel file systems and mount points whose
// content is not part of the image.
var skipDirs = map[string]bool{"/proc": true, "/sys": true, "/dev": true}

// Scan catalogs the packages in fsys. It fails only on ctx's error or an
// unreadable package database; a file it cannot parse is a warning.
func Scan(ctx context.Context, fsys FS, opts Options) (*Inventory, error) {
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = 2_000_000
	}
	inv := &Inventory{Distro: readOSRelease(fsys)}
	for _, c := range []func(FS, *Inventory) error{catalogDpkg, catalogApk, catalogRPM} {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := c(fsys, inv); err != nil {
			return nil, err
		}
	}
	w := &walker{fsys: fsys, inv: inv, left: opts.MaxEntries}
	if err := w.walk(ctx, "/"); err != nil {
		return nil, err
	}
	if w.left < 0 {
		inv.Warnings = append(inv.Warnings, fmt.Sprintf("the file system has more than %d entries: Go binaries and lockfiles past them were not looked at", opts.MaxEntries))
	}
	inv.sort()
	return inv, nil
}

// sort orders packages by type, name, version and location, and drops
// exact duplicates.
func (inv *Inventory) sort() {
	slices.SortFunc(inv.Packages, func(a, b Package) int {
		for _, c := range [][2]string{{string(a.Type), string(b.Type)}, {a.Name, b.Name}, {a.Version, b.Version}, {a.Location, b.Location}, {a.Arch, b.Arch}} {
			if n := strings.Compare(c[0], c[1]); n != 0 {
				return n
			}
		}
		return 0
	})
	inv.Packages = slices.Compact(inv.Packages)
}

// walker visits the file system once for the catalogers that look at
// files wherever they are.
type walker struct {
	fsys FS
	inv  *Inventory
	left int
}

func (w *walker) walk(ctx context.Context, dir string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ents, err := w.fsys.ReadDir(dir)
	if err != nil {
		if dir == "/" && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("sbom: read /: %w", err)
		}
		return nil // unreadable below the root: nothing to catalog there
	}
	for _, e := range ents {
		if w.left--; w.left < 0 {
			return nil
		}
		p := path.Join(dir, e.Name())
		switch t := e.Type(); {
		case t.IsDir():
			if skipDirs[p] {
				continue
			}
			if strings.HasSuffix(e.Name(), ".dist-info") {
				w.pythonDist(p)
				continue
			}
			if err := w.walk(ctx, p); err != nil {
				return err
			}
		case t.IsRegular():
			w.file(p, e)
		}
	}
	return nil
}

// file hands a regular file to the cataloger its name or content calls for.
func (w *walker) file(p string, e fs.DirEntry) {
	switch e.Name() {
	case "package-lock.json":
		if !strings.Contains(p, "/node_modules/") {
			w.warn(catalogNpmLock(w.fsys, p, w.inv))
		}
		return
	case "Cargo.lock":
		w.warn(catalogCargoLock(w.fsys, p, w.inv))
		return
	}
	info, err := e.Info()
	if err != nil || info.Mode()&0o111 == 0 || info.Size() < 1024 {
		return
	}
	_, host, err := w.fsys.Lstat(p)
	if err != nil {
		return
	}
	catalogGoBinary(host, p, w.inv)
}

func (w *walker) warn(err error) {
	if err != nil {
		w.inv.Warnings = append(w.inv.Warnings, err.Error())
	}
}

// readOSRelease reads /etc/os-release (or /usr/lib/os-release).
func readOSRelease(fsys FS) Distro {
	var d Distro
	for _, p := range []string{"/etc/os-release", "/usr/lib/os-release"} {
		data, err := fsys.ReadFile(p)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
			if !ok {
				continue
			}
			v = strings.Trim(v, `"'`)
			switch k {
			case "ID":
				d.ID = v
			case "VERSION_ID":
				d.VersionID = v
			case "PRETTY_NAME":
				d.Pretty = v
			}
		}
		return d
	}
	return d
}

// qualifier is the purl "distro" qualifier: debian-12, alpine-3.19.1.
func (d Distro) qualifier() string {
	if d.ID == "" {
		return ""
	}
	if d.VersionID == "" {
		return d.ID
	}
	return d.ID + "-" + d.VersionID
}

// Package sbom lists the software installed in an image's root file
// system and writes it as an SPDX 2.3 or CycloneDX 1.5 JSON document.
//
// It reads a read-only view of the file system (FS, which the layer
// snapshots already on disk satisfy through layers.RootFS): nothing is
// unpacked again and nothing outside the view is touched. Catalogers:
//
//   - Debian and Ubuntu: /var/lib/dpkg/status and the distroless
//     /var/lib/dpkg/status.d/ files (packages whose status is installed);
//   - Alpine: /lib/apk/db/installed;
//   - RPM (Fedora, RHEL, UBI, CentOS, Amazon Linux): the
//     package headers in rpm's database, the sqlite backend
//     (rpmdb.sqlite, read by a small SQLite file reader of this package,
//     sqlite.go) or the Berkeley DB hash backend (Packages, bdb.go), in
//     /var/lib/rpm or /usr/lib/sysimage/rpm; the first database found is
//     read. gpg-pubkey entries (the signing keys rpm imported) are not
//     packages and are left out, as trivy does;
//   - Go binaries: the build information the Go linker embeds (module
//     path and version, dependencies, Go version), read with debug/buildinfo;
//   - npm package-lock.json (lockfile versions 1 to 3), Cargo.lock, and
//     Python distributions installed with *.dist-info/METADATA.
//
// The ndb RPM backend (Packages.db, openSUSE) is detected but not read:
// Scan reports it in Inventory.Warnings, so the build says the SBOM is
// incomplete instead of silently listing nothing. So are a malformed RPM
// database (the packages read before the damage stay listed) and a
// sqlite write-ahead log that is not empty (its changes are not read).
// The RPM readers take the database from an untrusted image: page
// numbers are checked against the file, no page is read twice, trees are
// at most 20 levels deep, headers at most 32 MiB, a database file at
// most 2 GiB and 200,000 packages.
//
// Documents are deterministic: the same file system and Options give the
// same bytes (document namespaces and serial numbers are derived from the
// content, times come from Options.Created).
package sbom

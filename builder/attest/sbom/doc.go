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
//   - Go binaries: the build information the Go linker embeds (module
//     path and version, dependencies, Go version), read with debug/buildinfo;
//   - npm package-lock.json (lockfile versions 1 to 3), Cargo.lock, and
//     Python distributions installed with *.dist-info/METADATA.
//
// RPM databases (rpmdb.sqlite, Berkeley DB Packages, Packages.db) are
// detected but not read: Scan reports them in Inventory.Warnings, so the
// build says the SBOM is incomplete instead of silently listing nothing.
//
// Documents are deterministic: the same file system and Options give the
// same bytes (document namespaces and serial numbers are derived from the
// content, times come from Options.Created).
package sbom

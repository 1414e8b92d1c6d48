package sbom

import (
	"io/fs"
)

// FS is a read-only view of an image's root file system. Paths are
// absolute in-image paths ("/var/lib/dpkg/status").
type FS interface {
	// ReadFile reads the regular file at p, following symlinks as the
	// image would.
	ReadFile(p string) ([]byte, error)
	// ReadDir lists directory p, sorted by name.
	ReadDir(p string) ([]fs.DirEntry, error)
	// Lstat describes p without following a final symlink and gives a
	// host path the file's bytes can be read from.
	Lstat(p string) (fs.FileInfo, string, error)
}

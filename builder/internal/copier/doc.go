// Package copier is the file-copy layer of COPY, ADD and WORKDIR: it
// reads a source tree (the build context filtered by its ignore file, or a
// stage's or an image's root file system), expands wildcards, and writes
// files into a new layer directory with the owners, modes and mtimes the
// image gets; it detects and extracts local archives for ADD, and
// downloads ADD URLs.
//
// Every path is an in-tree path, resolved as if the tree's root were "/":
// nothing it reads lies outside the source tree, and nothing it writes
// lies outside the layer directory, whatever ".." components, absolute
// paths or symlink chains the Dockerfile, the context or the image hold.
// Owners are resolved against the image's /etc/passwd and /etc/group.
//
// It does not run instructions, compute cache keys (see package cachekey)
// or commit layers: the builder hands it a directory and commits what it
// wrote.
package copier

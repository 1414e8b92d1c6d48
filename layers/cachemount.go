package layers

import v1 "github.com/google/go-containerregistry/pkg/v1"

// CacheMount is the content of one RUN --mount=type=cache instance as a
// layer blob, so that a build cache can carry it to another machine
// (--cache-to ...,mounts=true) and a build there can start with it.
type CacheMount struct {
	// ID is the mount's id (its target when it has none).
	ID string
	// Instance is the instance's directory name in a store's cache
	// directory: one per id, or with from= one per id and seed tree.
	// It is the same on every machine for the same id and seed.
	Instance string
	// Overlay says the content is the overlay upper directory of a cache
	// seeded with from=: deleted seed files are OCI whiteouts in it.
	Overlay bool
	// Desc describes the blob: a layer tar (gzip or zstd) of the content.
	Desc Descriptor
	// Layer reads the blob; it may be lazy (a registry's blob is fetched
	// when read).
	Layer v1.Layer
}

// Package registry moves built images out of ibuild: to registries (pull
// and push) and to the other destinations docker build's --output knows.
//
// Pull stores a registry image (the manifest for one platform of an
// index) in a layers.Store, verifying each blob while it streams in, under
// a pull policy; InspectRemote reads manifests and configs without layers.
// Push uploads a stored image or index to a registry: blobs as stored
// (never recompressed) and before the manifest, optionally converted to OCI
// or Docker media types; PushImage and PushIndex push an image that is
// not stored (a build result), mounting layers that know their source
// repository. ImportCache reads a build cache from a registry (records
// only; layers are fetched when read) and CacheExport writes one (see
// cache.go for the format). The outputs are an OCI image layout as a
// directory or a tar archive, a `docker load` archive, and the final root
// filesystem as a directory or a tar stream. Images and indexes arrive as
// go-containerregistry v1.Image / v1.ImageIndex values, typically read
// lazily from the layers store, and their blobs are streamed, never held in
// memory. Storing an image in the local store (type=image) is the caller's
// job, through layers.Store; ParseOutput parses type=image and
// type=registry outputs (names, push, push-by-digest) and ParseAnnotation
// buildx's --annotation for the caller. Manifest lists (list.go,
// listpush.go) are buildah's: stored indexes whose entries are stored
// images or images that live in a registry (only their manifest and config
// stored, their repository recorded as their source), pushed without
// downloading a layer. The package does not build images.
package registry

// Package layers turns directories into image layers and back.
//
// It owns everything ibuild stores on disk below the image level:
//
//   - a content-addressed blob store laid out as an OCI image layout
//     (blobs/sha256/<hex>), where every write is atomic (temp file, fsync,
//     rename) and the same bytes are stored once;
//   - deterministic layer tars (sorted entries, PAX, numeric ids, clamped
//     mtimes with SOURCE_DATE_EPOCH) written from a layer directory, with
//     overlay whiteouts converted to OCI whiteouts;
//   - compression (gzip, zstd or none) that computes the diffID, the
//     compressed digest and both sizes in one streaming pass;
//   - safe extraction of layer tars that never writes outside its root;
//   - squashing consecutive layers into one equivalent layer (whiteouts
//     and opaque markers kept for the layers below, or applied when the
//     layers are the whole image);
//   - the local image store (names, manifests, snapshots keyed by chain ID,
//     kept in containers/storage with the overlay or vfs driver as root, or
//     in ibuild's own directories).
//
// It does not parse Dockerfiles, run processes or talk to registries.
package layers

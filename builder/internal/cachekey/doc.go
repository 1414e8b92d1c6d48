// Package cachekey computes the build cache's keys and explains misses.
//
// A key is a SHA-256 digest over named inputs (Key): the parent step's key,
// the instruction, and what the instruction reads besides the image (build
// args in scope, the files COPY, ADD and bind mounts read, --from sources,
// downloads). AddSources walks a source tree as a copy would and adds one
// input per path: its type, the mode bits that land in the image, a
// symlink's target, a regular file's content digest, hard links, and with
// SOURCE_DATE_EPOCH the clamped mtime. Secret contents, mtimes of context
// files and unused build args are never inputs.
//
// Keys are stored in the local store and in registry caches, so their
// format is pinned by golden tests: changing it invalidates every user's
// cache, and a deliberate change bumps Version (the key's format) or
// ExecutorRevision (the executor's semantics).
//
// Each stage keeps the digests of its steps' last inputs (History), so
// that a miss can say which input changed (ExplainMiss, FromMissReason).
//
// The package does not look records up, store them or run steps; the
// builder does.
package cachekey

// Package compat holds the docker-exact suite: Dockerfiles from three
// corpora are built by BuildKit v0.34.2 (docker build's engine, run as a
// test oracle) and by ibuild, and the two images are compared with
// package imagecmp (file trees after applying layers and whiteouts, and
// the image configs). When BuildKit refuses a Dockerfile, ibuild must
// refuse it too, with an error naming the Dockerfile line.
//
// The corpora are buildah v1.42.0's tests/bud folders and the Dockerfiles
// of BuildKit v0.34.2's frontend/dockerfile integration tests (both read
// from the Go module cache, never copied into the repository), and the
// project's own fixtures (testdata/dockerfiles, testdata/compat).
//
// The package has only tests. `go test ./builder/compat` runs a fixed
// sample of cases; IBUILD_COMPAT=all (make compat) runs every case and
// prints `compat: P/T cases match docker (BuildKit v0.34.2); D documented
// deviations`. Differences listed in docs/dockerfile.md under "Deliberate
// differences" (and "Known differences") are reported, not failed. See
// docs/dockerfile.md for how to run it.
package compat

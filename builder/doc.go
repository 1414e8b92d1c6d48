// Package builder builds OCI images from Dockerfiles without a daemon.
//
// Build parses the Dockerfile (package dockerfile), orders its stages
// (package graph), and runs each stage's instructions against a working
// Container: metadata instructions edit the image config and add history
// entries, COPY and ADD write a fresh layer directory that package layers
// turns into a compressed, content-addressed layer. The result lands in
// the local store (layers.Store) and, optionally, in --output destinations.
//
// One file holds each instruction (instr_*.go); dispatch.go alone maps
// instructions to them.
package builder

// Package dockerfile is ibuild's Dockerfile front end: it parses a
// Dockerfile with buildkit's parser into typed instructions grouped by
// stage, and provides the variable scopes and word expansion that docker
// build applies (ARG before the first FROM, per-stage ARG and ENV scope,
// ${v:-d} and ${v:+a}).
//
// Every error it returns names the Dockerfile path, the line and the
// instruction text (see Error). It does not execute anything.
package dockerfile

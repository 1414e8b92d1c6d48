// Package imagecmp compares two OCI images as a user of the images sees
// them: the file tree left after applying every layer in order (OCI
// whiteouts and opaque directories applied), and the runtime part of the
// image config.
//
// Each path of the flattened trees is compared by type, mode (permission
// bits with setuid, setgid and sticky), owner uid and gid, size, content
// digest, symlink target, device numbers and hard-link group (the other
// paths sharing its inode). Times, layer boundaries, history, xattrs and
// compression are not compared: two builders may split the same result
// into different layers.
//
// The config comparison covers Env (as a set), Cmd, Entrypoint,
// WorkingDir ("/" equals empty), User, ExposedPorts, Volumes, Labels,
// StopSignal, Healthcheck (including start interval), OnBuild, Shell and
// the platform (os, architecture, variant). Absent and empty lists or maps
// are equal.
//
// The package reads images through go-containerregistry's v1.Image and
// flattens them in memory, independently of ibuild's own layer
// extraction, so it can judge ibuild's results. It is used by the
// docker-compatibility suite (builder/compat) and its own tests.
package imagecmp

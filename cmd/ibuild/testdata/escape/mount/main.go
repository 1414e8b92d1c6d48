// Command mount is an escape probe run in a RUN step: it tries to mount
// (tmpfs, proc, a bind of /, a cgroup v1 hierarchy, the new mount API),
// also after unsharing a user and mount namespace. Any mount that works
// prints ESCAPED and the probe exits 1; CONTAINED else.
package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

func main() {
	escaped := false
	try := func(what string, err error) {
		if err == nil {
			fmt.Println("ESCAPED:", what)
			escaped = true
			return
		}
		fmt.Printf("%s: %v\n", what, err)
	}
	os.MkdirAll("/probe-mnt", 0o755)
	try("mount tmpfs", unix.Mount("tmpfs", "/probe-mnt", "tmpfs", 0, ""))
	try("mount proc", unix.Mount("proc", "/probe-mnt", "proc", 0, ""))
	try("bind /", unix.Mount("/", "/probe-mnt", "", unix.MS_BIND, ""))
	try("mount cgroup v1", unix.Mount("cgroup", "/probe-mnt", "cgroup", 0, "none,name=probe"))
	fd, err := unix.Fsopen("tmpfs", 0)
	if err == nil {
		unix.Close(fd)
	}
	try("fsopen tmpfs", err)
	if err := unix.Unshare(unix.CLONE_NEWUSER | unix.CLONE_NEWNS); err != nil {
		fmt.Println("unshare user+mount namespaces:", err)
	} else {
		try("mount tmpfs in an unshared namespace", unix.Mount("tmpfs", "/probe-mnt", "tmpfs", 0, ""))
	}
	if escaped {
		os.Exit(1)
	}
	fmt.Println("CONTAINED")
}

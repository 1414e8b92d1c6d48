// Command procpid1 is an escape probe run in a RUN step: it tries to
// reach the file system of process 1 (the sandbox's init, or the host's
// init where pids are shared) through /proc/1/root and /proc/1/exe, to
// open the ibuild binary for writing (as CVE-2019-5736 did with runc),
// and to ptrace it. Success prints ESCAPED and exits 1; CONTAINED else.
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
	_, err := os.Readlink("/proc/1/root")
	try("readlink /proc/1/root", err)
	_, err = os.ReadDir("/proc/1/root/")
	try("list /proc/1/root", err)
	f, err := os.OpenFile("/proc/1/exe", os.O_RDONLY, 0)
	if err == nil {
		f.Close()
	}
	try("open /proc/1/exe", err)
	f, err = os.OpenFile("/proc/1/exe", os.O_WRONLY, 0)
	if err == nil {
		f.Close()
	}
	try("open /proc/1/exe for writing", err)
	if os.Getpid() != 1 {
		// PTRACE_SEIZE does not stop the tracee: an old ibuild would
		// otherwise stay stopped and hang the build.
		err = unix.PtraceSeize(1)
		if err == nil {
			unix.PtraceDetach(1)
		}
		try("ptrace (seize) pid 1", err)
	}
	if escaped {
		os.Exit(1)
	}
	fmt.Println("CONTAINED")
}

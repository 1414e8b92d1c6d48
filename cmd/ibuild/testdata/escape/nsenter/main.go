// Command nsenter is an escape probe run in a RUN step with
// --network=none: it tries to reach the host's 127.0.0.1:$HOSTPORT,
// directly and after joining the network namespace of every process it
// can see (as nsenter would), in its own /proc and, after a double chroot
// out of its root, in the host's. Joining a namespace other than its own
// or connecting prints ESCAPED and exits 1; CONTAINED else. The test
// counts connections on the host as well.
package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	port := os.Getenv("HOSTPORT")
	if port == "" {
		fmt.Println("probe error: HOSTPORT unset")
		os.Exit(2)
	}
	runtime.LockOSThread() // setns and chroot apply to this thread's view
	addr := "127.0.0.1:" + port
	escaped := false
	dial := func(via string) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			fmt.Printf("dial %s %s: %v\n", addr, via, err)
			return
		}
		c.Close()
		fmt.Printf("ESCAPED: connected to %s %s\n", addr, via)
		escaped = true
	}
	var own unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &own); err != nil {
		fmt.Println("probe error:", err)
		os.Exit(2)
	}
	dial("directly")
	join := func(where string) {
		nss, _ := filepath.Glob("/proc/[0-9]*/ns/net")
		joined := 0
		for _, ns := range nss {
			var st unix.Stat_t
			if err := unix.Stat(ns, &st); err != nil || st.Ino == own.Ino {
				continue
			}
			fd, err := unix.Open(ns, unix.O_RDONLY, 0)
			if err != nil {
				continue
			}
			err = unix.Setns(fd, unix.CLONE_NEWNET)
			unix.Close(fd)
			if err != nil {
				if joined == 0 {
					fmt.Printf("%s: setns %s: %v\n", where, ns, err)
				}
				continue
			}
			joined++
			fmt.Printf("ESCAPED: %s: joined the network namespace of %s\n", where, ns)
			escaped = true
			dial("after setns " + ns)
			break // one is proof enough
		}
		fmt.Printf("%s: %d namespaces seen, %d joined\n", where, len(nss), joined)
	}
	join("own /proc")
	// A double chroot leads to the host's /proc where the root was
	// entered with chroot alone.
	os.MkdirAll("/esc-ns", 0o755)
	if err := syscall.Chroot("/esc-ns"); err != nil {
		fmt.Println("chroot:", err)
	} else {
		for i := 0; i < 64; i++ {
			syscall.Chdir("..")
		}
		if err := syscall.Chroot("."); err != nil {
			fmt.Println("second chroot:", err)
		} else {
			join("after a double chroot")
		}
	}
	if escaped {
		os.Exit(1)
	}
	fmt.Println("CONTAINED")
}

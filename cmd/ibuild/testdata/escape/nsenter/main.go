// Command nsenter is an escape probe run in a RUN step with
// --network=none: it tries to reach the host's 127.0.0.1:$HOSTPORT, first
// directly, then after joining the network namespace of every process it
// can see (as nsenter would). A connection prints ESCAPED and exits 1;
// CONTAINED else. The test counts connections on the host as well.
package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	port := os.Getenv("HOSTPORT")
	if port == "" {
		fmt.Println("probe error: HOSTPORT unset")
		os.Exit(2)
	}
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
	dial("directly")
	runtime.LockOSThread() // setns changes this thread only
	nss, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	joined := 0
	for _, ns := range nss {
		fd, err := unix.Open(ns, unix.O_RDONLY, 0)
		if err != nil {
			continue
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			if joined == 0 {
				fmt.Printf("setns %s: %v\n", ns, err)
			}
			continue
		}
		joined++
		dial("after setns " + ns)
	}
	fmt.Printf("%d namespaces seen, %d joined\n", len(nss), joined)
	if escaped {
		os.Exit(1)
	}
	fmt.Println("CONTAINED")
}

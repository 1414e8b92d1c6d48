// Command mknod is an escape probe run in a RUN step: it makes device
// nodes for the host's root disk ($HOSTDEV, major:minor) and for
// /dev/mem and /dev/kmsg, in the root file system, in /dev and in /tmp,
// and tries to read them. Reading one prints ESCAPED and exits 1, as does
// a node made on a file system mounted without nodev (then only a device
// cgroup, which a daemonless builder does not set up, stands between the
// step and the host's disk); CONTAINED else (mknod itself may work:
// CAP_MKNOD is in docker's set).
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	maj, min, ok := strings.Cut(os.Getenv("HOSTDEV"), ":")
	ma, err1 := strconv.Atoi(maj)
	mi, err2 := strconv.Atoi(min)
	if !ok || err1 != nil || err2 != nil {
		fmt.Println("probe error: HOSTDEV is not major:minor")
		os.Exit(2)
	}
	nodes := []struct {
		name string
		mode uint32
		dev  int
	}{
		{"disk", unix.S_IFBLK, int(unix.Mkdev(uint32(ma), uint32(mi)))},
		{"mem", unix.S_IFCHR, int(unix.Mkdev(1, 1))},
		{"kmsg", unix.S_IFCHR, int(unix.Mkdev(1, 11))},
	}
	escaped := false
	for _, dir := range []string{"/", "/dev", "/tmp", "/dev/shm"} {
		os.MkdirAll(dir, 0o755)
		for _, n := range nodes {
			p := strings.TrimSuffix(dir, "/") + "/probe-" + n.name
			if err := unix.Mknod(p, n.mode|0o600, n.dev); err != nil {
				fmt.Printf("mknod %s: %v\n", p, err)
				continue
			}
			var st unix.Statfs_t
			if err := unix.Statfs(dir, &st); err == nil && st.Flags&unix.ST_NODEV == 0 {
				fmt.Printf("ESCAPED: made %s on a file system mounted without nodev\n", p)
				escaped = true
			}
			f, err := os.Open(p)
			if err != nil {
				fmt.Printf("open %s: %v\n", p, err)
				os.Remove(p)
				continue
			}
			buf := make([]byte, 16)
			n, err := f.Read(buf)
			f.Close()
			os.Remove(p)
			if err != nil && n == 0 {
				fmt.Printf("read %s: %v\n", p, err)
				continue
			}
			fmt.Printf("ESCAPED: read %d bytes from %s\n", n, p)
			escaped = true
		}
	}
	if escaped {
		os.Exit(1)
	}
	fmt.Println("CONTAINED")
}

// Command kernelinfo is an escape probe run in a RUN step: it tries to
// read the kernel log (syslog(2), /dev/kmsg), the real addresses in
// /proc/kallsyms, /proc/kcore and /proc/keys. Anything read prints
// ESCAPED and exits 1; CONTAINED else.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	escaped := false
	buf := make([]byte, 4096)
	if n, err := unix.Klogctl(unix.SYSLOG_ACTION_READ_ALL, buf); err != nil {
		fmt.Println("syslog read:", err)
	} else {
		fmt.Printf("ESCAPED: syslog gave %d bytes of the kernel log\n", n)
		escaped = true
	}
	if f, err := os.Open("/proc/kallsyms"); err != nil {
		fmt.Println("open /proc/kallsyms:", err)
	} else {
		sc := bufio.NewScanner(f)
		real := 0
		for i := 0; i < 50 && sc.Scan(); i++ {
			if addr, _, _ := strings.Cut(sc.Text(), " "); strings.Trim(addr, "0") != "" {
				real++
			}
		}
		f.Close()
		if real > 0 {
			fmt.Printf("ESCAPED: /proc/kallsyms shows %d real addresses\n", real)
			escaped = true
		} else {
			fmt.Println("/proc/kallsyms: addresses hidden")
		}
	}
	for _, p := range []string{"/dev/kmsg", "/proc/kcore", "/proc/keys", "/proc/timer_list"} {
		f, err := os.Open(p)
		if err != nil {
			fmt.Printf("open %s: %v\n", p, err)
			continue
		}
		n, _ := f.Read(buf)
		f.Close()
		if n > 0 {
			fmt.Printf("ESCAPED: read %d bytes from %s\n", n, p)
			escaped = true
		} else {
			fmt.Printf("%s: empty\n", p)
		}
	}
	if escaped {
		os.Exit(1)
	}
	fmt.Println("CONTAINED")
}

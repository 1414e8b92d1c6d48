// Command hoststate is an escape probe run in a RUN step: it tries to
// change host state through /proc/sys (kernel.printk_ratelimit_burst),
// the cgroup file systems (a new cgroup named $PROBETAG in every
// hierarchy, a cgroup v1 release_agent) and /sys. Every write that works
// is printed as ESCAPED and the probe exits 1; CONTAINED else. The test
// checks the host's side as well.
package main

import (
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	tag := os.Getenv("PROBETAG")
	if tag == "" {
		fmt.Println("probe error: PROBETAG unset")
		os.Exit(2)
	}
	escaped := false
	try := func(what string, err error) {
		if err == nil {
			fmt.Println("ESCAPED:", what)
			escaped = true
			return
		}
		fmt.Printf("%s: %v\n", what, err)
	}
	try("write /proc/sys/kernel/printk_ratelimit_burst", os.WriteFile("/proc/sys/kernel/printk_ratelimit_burst", []byte("77\n"), 0))
	try("write /proc/sysrq-trigger (h: help only)", os.WriteFile("/proc/sysrq-trigger", []byte("h"), 0))
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*")
	dirs = append(dirs, "/sys/fs/cgroup")
	for _, d := range dirs {
		if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
			continue
		}
		try("mkdir "+filepath.Join(d, tag), os.Mkdir(filepath.Join(d, tag), 0o755))
		if _, err := os.Stat(filepath.Join(d, "release_agent")); err == nil {
			try("write "+filepath.Join(d, "release_agent"), os.WriteFile(filepath.Join(d, "release_agent"), []byte("/"+tag+"\n"), 0))
		}
	}
	try("write /sys/kernel/uevent_helper", os.WriteFile("/sys/kernel/uevent_helper", []byte("/"+tag), 0))
	if escaped {
		os.Exit(1)
	}
	fmt.Println("CONTAINED")
}

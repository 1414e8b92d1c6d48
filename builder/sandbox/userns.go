package sandbox

import (
	"os"
	"strconv"
	"strings"
)

// inUserNamespace reports whether the process runs in a user namespace
// other than the initial one, whose uid_map maps all 2^32-1 ids onto
// themselves.
func inUserNamespace() bool {
	data, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return false
	}
	return strings.Join(strings.Fields(string(data)), " ") != "0 0 4294967295"
}

// SingleIDMapped reports whether the process runs in a user namespace that
// maps a single uid or gid: there, chown to any other id fails with
// EINVAL.
func SingleIDMapped() bool {
	if !inUserNamespace() {
		return false
	}
	for _, f := range []string{"/proc/self/uid_map", "/proc/self/gid_map"} {
		data, err := os.ReadFile(f)
		if err != nil {
			return false
		}
		total := 0
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if fs := strings.Fields(line); len(fs) == 3 {
				n, _ := strconv.Atoi(fs[2])
				total += n
			}
		}
		if total <= 1 {
			return true
		}
	}
	return false
}

// setgroupsDenied reports whether this user namespace forbids setgroups.
func setgroupsDenied() bool {
	data, err := os.ReadFile("/proc/self/setgroups")
	return err == nil && strings.TrimSpace(string(data)) == "deny"
}

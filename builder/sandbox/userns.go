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

// capSysAdmin is CAP_SYS_ADMIN's bit in the capability sets.
const capSysAdmin = 21

// CanMount reports whether the process holds CAP_SYS_ADMIN in its
// effective set, which mounts and (for root outside a user namespace)
// new namespaces need. Root in a CI pod that dropped it cannot run the
// namespaced sandbox, only the "none" isolation.
func CanMount() bool {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return true // cannot tell: assume the usual
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err != nil || caps&(1<<capSysAdmin) != 0
		}
	}
	return true
}

package sandbox

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"unsafe"

	"github.com/moby/sys/capability"
	"golang.org/x/sys/unix"

	"github.com/ibuild/ibuild/builder/internal/seccomp"
)

// DefaultCapabilities is the capability set docker gives a container, and
// so a RUN step: what is not here (CAP_SYS_ADMIN, CAP_DAC_READ_SEARCH,
// CAP_SYS_PTRACE, CAP_NET_ADMIN, CAP_SYSLOG, ...) no step holds unless
// added.
func DefaultCapabilities() []string {
	return []string{
		"CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID",
		"CAP_KILL", "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP",
		"CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
	}
}

// allCapabilities names every capability the library knows (those the
// process lacks are left out when applied).
func allCapabilities() []string {
	var all []string
	for name := range knownCapabilities() {
		all = append(all, name)
	}
	slices.Sort(all)
	return all
}

// knownCapabilities maps "CAP_X" to the kernel's number, for every
// capability the capability library knows.
func knownCapabilities() map[string]capability.Cap {
	m := map[string]capability.Cap{}
	for _, c := range capability.ListKnown() {
		m["CAP_"+strings.ToUpper(c.String())] = c
	}
	return m
}

// Capabilities is the default set with add added and drop dropped, in
// that order, as buildah's --cap-add and --cap-drop: names with or without
// the CAP_ prefix, in any case, and "ALL" for every capability. The
// result is sorted.
func Capabilities(add, drop []string) ([]string, error) {
	known := knownCapabilities()
	norm := func(flag, name string) ([]string, error) {
		n := strings.ToUpper(strings.TrimSpace(name))
		if n == "ALL" {
			all := make([]string, 0, len(known))
			for k := range known {
				all = append(all, k)
			}
			return all, nil
		}
		if !strings.HasPrefix(n, "CAP_") {
			n = "CAP_" + n
		}
		if _, ok := known[n]; !ok {
			return nil, fmt.Errorf("%s %s: unknown capability (names are those of capabilities(7), such as CAP_NET_ADMIN or NET_ADMIN, or ALL)", flag, name)
		}
		return []string{n}, nil
	}
	set := map[string]bool{}
	for _, c := range DefaultCapabilities() {
		set[c] = true
	}
	for _, a := range add {
		names, err := norm("cap-add", a)
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			set[n] = true
		}
	}
	for _, d := range drop {
		names, err := norm("cap-drop", d)
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			delete(set, n)
		}
	}
	out := make([]string, 0, len(set))
	for c := range set {
		out = append(out, c)
	}
	slices.Sort(out)
	return out, nil
}

// identity is who a step runs as.
type identity struct {
	uid, gid uint32
	groups   []uint32
	// noSetGroups keeps the supplementary groups: a user namespace that
	// maps a single gid without newgidmap denies setgroups.
	noSetGroups bool
}

// confine gives the calling thread, and so the step it starts, its final
// privileges, in this order: docker's seccomp profile for the capability
// set caps; the bounding set cut to caps and nothing inheritable or
// ambient; the step's user and groups; for root, caps as the permitted and
// effective sets (another user has none, as in docker). Everything here
// applies to this thread only: the caller has locked its goroutine to it
// and starts the step from it.
//
// With filter false no seccomp filter is loaded (a process that may not
// load one: root without CAP_SYS_ADMIN, under --isolation none, where the
// pod's runtime already applied its own).
func confine(caps []string, filter bool, id identity) error {
	if caps == nil {
		caps = DefaultCapabilities()
	}
	if filter {
		profile, err := seccomp.Default(caps)
		if err != nil {
			return err
		}
		prog, err := seccomp.Compile(profile, runtime.GOARCH)
		if err != nil {
			return err
		}
		// Loaded while CAP_SYS_ADMIN is still held: no_new_privs stays
		// off, as in docker, so setuid programs (sudo) keep working
		// within the bounding set.
		if err := seccomp.Load(prog); err != nil {
			return err
		}
	}
	known := knownCapabilities()
	var keep []capability.Cap
	for _, name := range caps {
		v, ok := known[name]
		if !ok {
			return fmt.Errorf("capabilities: unknown capability %s", name)
		}
		// Without it in the bounding set (a CI pod dropped it), it cannot
		// be granted: keep what the process has.
		if bound, err := capability.GetBound(v); err == nil && bound {
			keep = append(keep, v)
		}
	}
	last, err := capability.LastCap()
	if err != nil {
		return fmt.Errorf("capabilities: %w", err)
	}
	for c := capability.Cap(0); c <= last; c++ {
		if !slices.Contains(keep, c) {
			if err := capability.DropBound(c); err != nil && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("capabilities: drop %s from the bounding set: %w", c, err)
			}
		}
	}
	if err := capability.ResetAmbient(); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("capabilities: clear the ambient set: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capabilities: %w", err)
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capabilities: clear the inheritable set: %w", err)
	}
	if err := setIdentity(id); err != nil {
		return err
	}
	if id.uid != 0 {
		return nil // the kernel cleared the permitted and effective sets
	}
	data = [2]unix.CapUserData{}
	for _, c := range keep {
		data[c/32].Permitted |= 1 << (c % 32)
		data[c/32].Effective |= 1 << (c % 32)
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capabilities: set %s: %w", strings.Join(caps, ","), err)
	}
	return nil
}

// setIdentity sets this thread's groups, gid and uid with raw system
// calls (the libc and Go wrappers change every thread).
func setIdentity(id identity) error {
	if !id.noSetGroups {
		var p unsafe.Pointer
		if len(id.groups) > 0 {
			p = unsafe.Pointer(&id.groups[0])
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(id.groups)), uintptr(p), 0); e != 0 {
			return fmt.Errorf("set groups %v: %w", id.groups, e)
		}
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(id.gid), uintptr(id.gid), uintptr(id.gid)); e != 0 {
		return fmt.Errorf("set gid %d: %w", id.gid, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(id.uid), uintptr(id.uid), uintptr(id.uid)); e != 0 {
		return fmt.Errorf("set uid %d: %w", id.uid, e)
	}
	return nil
}

// hideFromStep makes this process (the step's parent) undumpable: its
// /proc entries then belong to root and cannot be opened or traced by a
// step holding fewer capabilities, so /proc/1/exe and /proc/1/root lead
// nowhere.
func hideFromStep() error {
	return unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
}

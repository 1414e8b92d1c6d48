package sandbox

import (
	"fmt"
	"runtime"
	"slices"
	"strings"

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

// confine gives the calling thread, and so the step it starts, its final
// privileges: docker's seccomp profile for the capability set caps, then
// caps as the bounding, permitted and effective sets, nothing inheritable
// or ambient. The caller has locked its goroutine to the thread.
//
// With filter false no seccomp filter is loaded (a process that may not
// load one: root without CAP_SYS_ADMIN, under --isolation none, where the
// pod's runtime already applied its own).
func confine(caps []string, filter bool) error {
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
	c, err := capability.NewPid2(0)
	if err != nil {
		return fmt.Errorf("capabilities: %w", err)
	}
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
	c.Clear(capability.CAPS | capability.BOUNDS | capability.AMBS)
	c.Set(capability.BOUNDING|capability.PERMITTED|capability.EFFECTIVE, keep...)
	if err := c.Apply(capability.CAPS | capability.BOUNDS | capability.AMBS); err != nil {
		return fmt.Errorf("capabilities: drop to %s: %w", strings.Join(caps, ","), err)
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

package seccomp

import (
	"fmt"
	"runtime"
	"unsafe"

	mobyseccomp "github.com/moby/profiles/seccomp"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

//go:generate go run mksysnum.go

// Default is docker's default profile for a process whose bounding set
// holds caps (names such as "CAP_CHOWN"): the calls a capability makes
// safe (mount with CAP_SYS_ADMIN, for one) are allowed only with it.
func Default(caps []string) (*specs.LinuxSeccomp, error) {
	rs := specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{Bounding: caps}}}
	p, err := mobyseccomp.GetDefaultProfile(&rs)
	if err != nil {
		return nil, fmt.Errorf("seccomp: docker's default profile: %w", err)
	}
	return p, nil
}

// Load installs prog on the calling thread; threads and processes it
// starts afterwards inherit it. The caller locks its goroutine to the
// thread (runtime.LockOSThread) and holds CAP_SYS_ADMIN or has set
// no_new_privs.
func Load(prog []unix.SockFilter) error {
	if len(prog) == 0 {
		return fmt.Errorf("seccomp: empty filter")
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	_, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&fprog)))
	runtime.KeepAlive(prog)
	if errno != 0 {
		return fmt.Errorf("seccomp: load filter: %w", errno)
	}
	return nil
}

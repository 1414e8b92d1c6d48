package seccomp

import (
	"encoding/binary"
	"fmt"
	"math"
	"testing"

	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// dockerCaps is docker's default capability set.
var dockerCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// call is one system call as the filter sees it.
type call struct {
	arch uint32
	nr   uint32
	args [6]uint64
}

// run interprets prog on c as the kernel does (seccomp_data in the
// machine's little-endian layout) and returns the filter's verdict.
func run(t *testing.T, prog []unix.SockFilter, c call) uint32 {
	t.Helper()
	var data [64]byte
	binary.LittleEndian.PutUint32(data[offNr:], c.nr)
	binary.LittleEndian.PutUint32(data[offArch:], c.arch)
	for i, a := range c.args {
		binary.LittleEndian.PutUint64(data[offArgs+8*i:], a)
	}
	var acc uint32
	for pc, steps := 0, 0; ; steps++ {
		if pc >= len(prog) || steps > len(prog) {
			t.Fatalf("program ran off its end (pc %d)", pc)
		}
		in := prog[pc]
		pc++
		switch in.Code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			if in.K%4 != 0 || in.K+4 > uint32(len(data)) {
				t.Fatalf("load at %d", in.K)
			}
			acc = binary.LittleEndian.Uint32(data[in.K:])
		case unix.BPF_ALU | unix.BPF_AND | unix.BPF_K:
			acc &= in.K
		case unix.BPF_RET | unix.BPF_K:
			return in.K
		case unix.BPF_JMP | unix.BPF_JA:
			pc += int(in.K)
		default:
			var ok bool
			switch in.Code {
			case unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K:
				ok = acc == in.K
			case unix.BPF_JMP | unix.BPF_JGT | unix.BPF_K:
				ok = acc > in.K
			case unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K:
				ok = acc >= in.K
			default:
				t.Fatalf("unexpected instruction %#x at %d", in.Code, pc-1)
			}
			if ok {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		}
	}
}

func compileDefault(t *testing.T, goarch string, caps []string) []unix.SockFilter {
	t.Helper()
	p, err := Default(caps)
	if err != nil {
		t.Fatal(err)
	}
	// Default picks the host's ABIs; name those of goarch.
	switch goarch {
	case "amd64":
		p.Architectures = []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
	case "arm64":
		p.Architectures = []specs.Arch{specs.ArchAARCH64, specs.ArchARM}
	}
	prog, err := Compile(p, goarch)
	if err != nil {
		t.Fatal(err)
	}
	return prog
}

const (
	allow  = unix.SECCOMP_RET_ALLOW
	eperm  = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	enosys = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
	kill   = unix.SECCOMP_RET_KILL_PROCESS
)

func TestDefaultProfileVerdicts(t *testing.T) {
	x86 := func(name string, args ...uint64) call {
		return named(t, unix.AUDIT_ARCH_X86_64, sysnumX86_64, name, args)
	}
	i386 := func(name string, args ...uint64) call { return named(t, unix.AUDIT_ARCH_I386, sysnumX86, name, args) }
	arm64 := func(name string, args ...uint64) call {
		return named(t, unix.AUDIT_ARCH_AARCH64, sysnumAarch64, name, args)
	}
	const cloneNewUser, cloneNewNS = unix.CLONE_NEWUSER, unix.CLONE_NEWNS
	withAdmin := append(append([]string(nil), dockerCaps...), "CAP_SYS_ADMIN", "CAP_DAC_READ_SEARCH")
	tests := []struct {
		name   string
		goarch string
		caps   []string
		call   call
		want   uint32
	}{
		{"getpid", "amd64", dockerCaps, x86("getpid"), allow},
		{"execve", "amd64", dockerCaps, x86("execve"), allow},
		{"chroot with CAP_SYS_CHROOT", "amd64", dockerCaps, x86("chroot"), allow},
		{"chroot without", "amd64", nil, x86("chroot"), eperm},
		{"mount", "amd64", dockerCaps, x86("mount"), eperm},
		{"umount2", "amd64", dockerCaps, x86("umount2"), eperm},
		{"pivot_root", "amd64", dockerCaps, x86("pivot_root"), eperm},
		{"mount with CAP_SYS_ADMIN", "amd64", withAdmin, x86("mount"), allow},
		{"open_by_handle_at", "amd64", dockerCaps, x86("open_by_handle_at"), eperm},
		{"open_by_handle_at with CAP_DAC_READ_SEARCH", "amd64", withAdmin, x86("open_by_handle_at"), allow},
		{"name_to_handle_at", "amd64", dockerCaps, x86("name_to_handle_at"), allow},
		{"unshare", "amd64", dockerCaps, x86("unshare", cloneNewUser), eperm},
		{"setns", "amd64", dockerCaps, x86("setns"), eperm},
		{"keyctl", "amd64", dockerCaps, x86("keyctl"), eperm},
		{"bpf", "amd64", dockerCaps, x86("bpf"), eperm},
		{"kexec_load", "amd64", withAdmin, x86("kexec_load"), eperm},
		{"syslog", "amd64", dockerCaps, x86("syslog"), eperm},
		{"clone plain", "amd64", dockerCaps, x86("clone", unix.CLONE_VM|unix.CLONE_VFORK|uint64(unix.SIGCHLD)), allow},
		{"clone new user namespace", "amd64", dockerCaps, x86("clone", cloneNewUser|uint64(unix.SIGCHLD)), eperm},
		{"clone new mount namespace", "amd64", dockerCaps, x86("clone", cloneNewNS), eperm},
		{"clone flags in the high word only", "amd64", dockerCaps, x86("clone", 1<<40|uint64(unix.SIGCHLD)), allow},
		{"clone3", "amd64", dockerCaps, x86("clone3"), enosys},
		{"personality 0", "amd64", dockerCaps, x86("personality", 0), allow},
		{"personality query", "amd64", dockerCaps, x86("personality", 0xffffffff), allow},
		{"personality ADDR_NO_RANDOMIZE", "amd64", dockerCaps, x86("personality", 0x0040000), eperm},
		{"personality 0 with high garbage", "amd64", dockerCaps, x86("personality", 1<<32), eperm},
		{"socket AF_INET", "amd64", dockerCaps, x86("socket", unix.AF_INET), allow},
		{"socket AF_UNIX", "amd64", dockerCaps, x86("socket", unix.AF_UNIX), allow},
		{"socket AF_INET high garbage", "amd64", dockerCaps, x86("socket", 1<<32|unix.AF_INET), eperm},
		{"x32 getpid", "amd64", dockerCaps, call{arch: unix.AUDIT_ARCH_X86_64, nr: 0x40000000 | sysnumX86_64["getpid"]}, eperm},
		{"number past every table", "amd64", dockerCaps, call{arch: unix.AUDIT_ARCH_X86_64, nr: math.MaxUint32}, eperm},
		{"i386 getpid", "amd64", dockerCaps, i386("getpid"), allow},
		{"i386 socketcall", "amd64", dockerCaps, i386("socketcall"), allow},
		{"i386 mount", "amd64", dockerCaps, i386("mount"), eperm},
		{"unknown ABI", "amd64", dockerCaps, call{arch: unix.AUDIT_ARCH_AARCH64, nr: 172}, kill},
		{"arm64 getpid", "arm64", dockerCaps, arm64("getpid"), allow},
		{"arm64 mount", "arm64", dockerCaps, arm64("mount"), eperm},
		{"arm64 clone new user namespace", "arm64", dockerCaps, arm64("clone", cloneNewUser), eperm},
		{"arm64 on amd64's filter", "amd64", dockerCaps, arm64("getpid"), kill},
	}
	progs := map[string][]unix.SockFilter{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key := fmt.Sprint(tc.goarch, tc.caps)
			if progs[key] == nil {
				progs[key] = compileDefault(t, tc.goarch, tc.caps)
			}
			if got := run(t, progs[key], tc.call); got != tc.want {
				t.Fatalf("verdict %#x, want %#x", got, tc.want)
			}
		})
	}
}

func named(t *testing.T, arch uint32, nums map[string]uint32, name string, args []uint64) call {
	t.Helper()
	nr, ok := nums[name]
	if !ok {
		t.Fatalf("no system call %s", name)
	}
	c := call{arch: arch, nr: nr}
	copy(c.args[:], args)
	return c
}

// TestEveryNumber checks the search over the whole table: every call the
// profile allows without conditions is allowed, every call it does not
// name gets the default action.
func TestEveryNumber(t *testing.T) {
	for _, goarch := range []string{"amd64", "arm64"} {
		t.Run(goarch, func(t *testing.T) {
			p, err := Default(dockerCaps)
			if err != nil {
				t.Fatal(err)
			}
			prog := compileDefault(t, goarch, dockerCaps)
			ts, _ := tables(goarch)
			for _, tb := range ts {
				plain := map[uint32]uint32{}
				named := map[uint32]bool{}
				for _, sc := range p.Syscalls {
					ret, err := action(sc.Action, sc.ErrnoRet)
					if err != nil {
						t.Fatal(err)
					}
					for _, n := range sc.Names {
						nr, ok := tb.nums[n]
						if !ok {
							continue
						}
						if !named[nr] && len(sc.Args) == 0 {
							plain[nr] = ret
						}
						named[nr] = true
					}
				}
				if len(plain) < 250 {
					t.Fatalf("arch %#x: only %d plain rules", tb.audit, len(plain))
				}
				for nr := uint32(0); nr < 1100; nr++ {
					got := run(t, prog, call{arch: tb.audit, nr: nr})
					if want, ok := plain[nr]; ok && got != want {
						t.Errorf("arch %#x nr %d: verdict %#x, want %#x", tb.audit, nr, got, want)
					}
					if !named[nr] && got != eperm {
						t.Errorf("arch %#x nr %d (not in the profile): verdict %#x, want EPERM", tb.audit, nr, got)
					}
				}
			}
		})
	}
}

// TestOperators compares each operator's program with the operator's
// meaning on values around 32-bit word boundaries.
func TestOperators(t *testing.T) {
	values := []uint64{0, 1, 4, 5, 6, 1 << 31, 1<<32 - 1, 1 << 32, 1<<32 + 5, 5<<32 + 4, 5<<32 + 5, 5<<32 + 6, 6 << 32, math.MaxUint64}
	const v, mask = 5<<32 + 5, 0x0000_00ff_0000_00f0
	ops := []struct {
		op   specs.LinuxSeccompOperator
		v2   uint64
		want func(x uint64) bool
	}{
		{specs.OpEqualTo, 0, func(x uint64) bool { return x == v }},
		{specs.OpNotEqual, 0, func(x uint64) bool { return x != v }},
		{specs.OpLessThan, 0, func(x uint64) bool { return x < v }},
		{specs.OpLessEqual, 0, func(x uint64) bool { return x <= v }},
		{specs.OpGreaterThan, 0, func(x uint64) bool { return x > v }},
		{specs.OpGreaterEqual, 0, func(x uint64) bool { return x >= v }},
		{specs.OpMaskedEqual, 0x0000_0005_0000_0000, func(x uint64) bool { return x&mask == 0x0000_0005_0000_0000 }},
	}
	for _, o := range ops {
		t.Run(string(o.op), func(t *testing.T) {
			val := uint64(v)
			if o.op == specs.OpMaskedEqual {
				val = mask
			}
			p := &specs.LinuxSeccomp{
				DefaultAction: specs.ActErrno,
				Architectures: []specs.Arch{specs.ArchX86_64},
				Syscalls: []specs.LinuxSyscall{{
					Names: []string{"read"}, Action: specs.ActAllow,
					Args: []specs.LinuxSeccompArg{{Index: 2, Value: val, ValueTwo: o.v2, Op: o.op}},
				}},
			}
			prog, err := Compile(p, "amd64")
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range values {
				c := call{arch: unix.AUDIT_ARCH_X86_64, nr: sysnumX86_64["read"]}
				c.args[2] = x
				want := eperm
				if o.want(x) {
					want = allow
				}
				if got := run(t, prog, c); got != want {
					t.Errorf("arg %#x: verdict %#x, want %#x", x, got, want)
				}
			}
		})
	}
}

// TestRuleSemantics: conditions on distinct arguments all hold; on the
// same argument they are alternatives; rules apply in order.
func TestRuleSemantics(t *testing.T) {
	errno := uint(unix.EACCES)
	p := &specs.LinuxSeccomp{
		DefaultAction: specs.ActErrno,
		Architectures: []specs.Arch{specs.ArchX86_64},
		Syscalls: []specs.LinuxSyscall{
			{Names: []string{"write"}, Action: specs.ActAllow, Args: []specs.LinuxSeccompArg{
				{Index: 0, Value: 1, Op: specs.OpEqualTo}, {Index: 2, Value: 10, Op: specs.OpLessThan}}},
			{Names: []string{"read"}, Action: specs.ActAllow, Args: []specs.LinuxSeccompArg{
				{Index: 0, Value: 3, Op: specs.OpEqualTo}, {Index: 0, Value: 7, Op: specs.OpEqualTo}}},
			{Names: []string{"write"}, Action: specs.ActErrno, ErrnoRet: &errno},
		},
	}
	prog, err := Compile(p, "amd64")
	if err != nil {
		t.Fatal(err)
	}
	eacces := unix.SECCOMP_RET_ERRNO | uint32(unix.EACCES)
	for _, tc := range []struct {
		name string
		args [6]uint64
		want uint32
	}{
		{"write", [6]uint64{1, 0, 9}, allow},
		{"write", [6]uint64{1, 0, 10}, eacces},
		{"write", [6]uint64{2, 0, 9}, eacces},
		{"read", [6]uint64{3}, allow},
		{"read", [6]uint64{7}, allow},
		{"read", [6]uint64{5}, eperm},
	} {
		c := call{arch: unix.AUDIT_ARCH_X86_64, nr: sysnumX86_64[tc.name], args: tc.args}
		if got := run(t, prog, c); got != tc.want {
			t.Errorf("%s%v: verdict %#x, want %#x", tc.name, tc.args[:3], got, tc.want)
		}
	}
}

// TestFarBranches makes the search span more than a conditional jump's
// 255-instruction reach, so branches go through trampolines.
func TestFarBranches(t *testing.T) {
	p := &specs.LinuxSeccomp{DefaultAction: specs.ActErrno, Architectures: []specs.Arch{specs.ArchX86_64}}
	for name, nr := range sysnumX86_64 {
		if nr%2 == 0 { // every other call has a condition: many segments, long blocks
			p.Syscalls = append(p.Syscalls, specs.LinuxSyscall{Names: []string{name}, Action: specs.ActAllow,
				Args: []specs.LinuxSeccompArg{{Index: 1, Value: uint64(nr), Op: specs.OpEqualTo}}})
		}
	}
	prog, err := Compile(p, "amd64")
	if err != nil {
		t.Fatal(err)
	}
	jas := 0
	for _, in := range prog {
		if in.Code == unix.BPF_JMP|unix.BPF_JA {
			jas++
		}
	}
	if jas == 0 || len(prog) < 600 {
		t.Fatalf("want a long program with trampolines, got %d instructions, %d JA", len(prog), jas)
	}
	for name, nr := range sysnumX86_64 {
		for _, arg := range []uint64{uint64(nr), uint64(nr) + 1} {
			c := call{arch: unix.AUDIT_ARCH_X86_64, nr: nr}
			c.args[1] = arg
			want := eperm
			if nr%2 == 0 && arg == uint64(nr) {
				want = allow
			}
			if got := run(t, prog, c); got != want {
				t.Fatalf("%s(_, %d): verdict %#x, want %#x", name, arg, got, want)
			}
		}
	}
}

func TestCompileErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    *specs.LinuxSeccomp
	}{
		{"nil", nil},
		{"notify", &specs.LinuxSeccomp{DefaultAction: specs.ActNotify}},
		{"bad operator", &specs.LinuxSeccomp{DefaultAction: specs.ActErrno, Syscalls: []specs.LinuxSyscall{{
			Names: []string{"read"}, Action: specs.ActAllow, Args: []specs.LinuxSeccompArg{{Index: 0, Op: "SCMP_CMP_BOGUS"}}}}}},
		{"bad index", &specs.LinuxSeccomp{DefaultAction: specs.ActErrno, Syscalls: []specs.LinuxSyscall{{
			Names: []string{"read"}, Action: specs.ActAllow, Args: []specs.LinuxSeccompArg{{Index: 6, Op: specs.OpEqualTo}}}}}},
	} {
		if _, err := Compile(tc.p, "amd64"); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
	if _, err := Compile(&specs.LinuxSeccomp{DefaultAction: specs.ActAllow}, "mips64"); err == nil {
		t.Error("mips64: no error")
	}
}

package seccomp

import (
	"errors"
	"fmt"
	"math"
	"sort"

	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Offsets in struct seccomp_data: nr, arch, instruction pointer, args[6].
const (
	offNr   = 0
	offArch = 4
	offArgs = 16
)

// maxInstructions is the kernel's limit on a filter's length
// (BPF_MAXINSNS).
const maxInstructions = 4096

// archTable is one architecture a program accepts.
type archTable struct {
	audit uint32            // AUDIT_ARCH_* value seccomp_data.arch holds
	nums  map[string]uint32 // system call numbers by name
}

// tables lists, for a Go architecture, the ABIs its processes can use:
// the native one first. Only little-endian ABIs are here: arguments are
// read as two 32-bit words, low word first.
func tables(goarch string) ([]archTable, error) {
	switch goarch {
	case "amd64":
		return []archTable{{unix.AUDIT_ARCH_X86_64, sysnumX86_64}, {unix.AUDIT_ARCH_I386, sysnumX86}}, nil
	case "arm64":
		return []archTable{{unix.AUDIT_ARCH_AARCH64, sysnumAarch64}, {unix.AUDIT_ARCH_ARM, sysnumARM}}, nil
	}
	return nil, fmt.Errorf("seccomp: no system call table for %s", goarch)
}

// specArch names each table's ABI as profiles do.
var specArch = map[uint32]specs.Arch{
	unix.AUDIT_ARCH_X86_64:  specs.ArchX86_64,
	unix.AUDIT_ARCH_I386:    specs.ArchX86,
	unix.AUDIT_ARCH_AARCH64: specs.ArchAARCH64,
	unix.AUDIT_ARCH_ARM:     specs.ArchARM,
}

// cond is one argument comparison.
type cond struct {
	index  uint
	op     specs.LinuxSeccompOperator
	value  uint64
	value2 uint64
}

// rule is one way a call may match: every cond holds.
type rule struct {
	ret   uint32
	conds []cond
}

// outcome is what a range of call numbers gives: ret, or when rules is
// non-nil, the first of rules that holds (else the default action).
type outcome struct {
	ret   uint32
	rules []rule
}

// segment is a range of call numbers [lo, hi] with one outcome.
type segment struct {
	lo, hi uint32
	out    outcome
}

// Compile turns p into a filter for processes of the Go architecture
// goarch (runtime.GOARCH). ABIs that p does not list, and those this
// package has no table for, are killed; calls p does not name get its
// default action. Names unknown to an ABI are skipped, as libseccomp does.
func Compile(p *specs.LinuxSeccomp, goarch string) ([]unix.SockFilter, error) {
	if p == nil {
		return nil, errors.New("seccomp: no profile")
	}
	def, err := action(p.DefaultAction, p.DefaultErrnoRet)
	if err != nil {
		return nil, fmt.Errorf("seccomp: default action: %w", err)
	}
	all, err := tables(goarch)
	if err != nil {
		return nil, err
	}
	var accepted []archTable
	for _, t := range all {
		if len(p.Architectures) == 0 && t.audit == all[0].audit {
			accepted = append(accepted, t) // no list: the native ABI only
			continue
		}
		for _, a := range p.Architectures {
			if a == specArch[t.audit] {
				accepted = append(accepted, t)
				break
			}
		}
	}
	a := newAssembler()
	a.load(offArch)
	blocks := make([]label, len(accepted))
	for i, t := range accepted {
		blocks[i] = a.newLabel()
		a.jump(unix.BPF_JEQ, t.audit, blocks[i], next)
	}
	a.ret(unix.SECCOMP_RET_KILL_PROCESS)
	for i, t := range accepted {
		segs, err := segments(p, t.nums, def)
		if err != nil {
			return nil, err
		}
		a.setLabel(blocks[i])
		a.load(offNr)
		a.tree(segs, def)
	}
	prog, err := a.assemble()
	if err != nil {
		return nil, err
	}
	if len(prog) > maxInstructions {
		return nil, fmt.Errorf("seccomp: the filter has %d instructions, more than the kernel's %d", len(prog), maxInstructions)
	}
	return prog, nil
}

// segments maps every call number to its outcome, as ranges covering
// [0, 2^32-1], neighbours with the same plain action merged.
func segments(p *specs.LinuxSeccomp, nums map[string]uint32, def uint32) ([]segment, error) {
	byNr := map[uint32][]rule{}
	for _, sc := range p.Syscalls {
		ret, err := action(sc.Action, sc.ErrnoRet)
		if err != nil {
			return nil, fmt.Errorf("seccomp: %v: %w", sc.Names, err)
		}
		rules, err := rulesOf(sc.Args, ret)
		if err != nil {
			return nil, fmt.Errorf("seccomp: %v: %w", sc.Names, err)
		}
		for _, name := range sc.Names {
			if nr, ok := nums[name]; ok {
				byNr[nr] = append(byNr[nr], rules...)
			}
		}
	}
	nrs := make([]uint32, 0, len(byNr))
	for nr := range byNr {
		nrs = append(nrs, nr)
	}
	sort.Slice(nrs, func(i, j int) bool { return nrs[i] < nrs[j] })

	var segs []segment
	add := func(lo, hi uint32, out outcome) {
		if n := len(segs); n > 0 && out.rules == nil && segs[n-1].out.rules == nil &&
			segs[n-1].out.ret == out.ret && segs[n-1].hi+1 == lo {
			segs[n-1].hi = hi
			return
		}
		segs = append(segs, segment{lo, hi, out})
	}
	next := uint32(0)
	for _, nr := range nrs {
		if nr > next {
			add(next, nr-1, outcome{ret: def})
		}
		add(nr, nr, outcomeOf(byNr[nr]))
		next = nr + 1
	}
	if len(nrs) == 0 || nrs[len(nrs)-1] < math.MaxUint32 {
		add(next, math.MaxUint32, outcome{ret: def})
	}
	return segs, nil
}

// outcomeOf is the outcome of a call's rules: a plain action when the
// first rule has no condition (it always matches).
func outcomeOf(rules []rule) outcome {
	if len(rules[0].conds) == 0 {
		return outcome{ret: rules[0].ret}
	}
	return outcome{rules: rules}
}

// rulesOf turns one profile entry's argument conditions into rules.
// Conditions on distinct arguments must all hold (one rule); several on
// the same argument are alternatives (one rule each), as in runc.
func rulesOf(args []specs.LinuxSeccompArg, ret uint32) ([]rule, error) {
	seen := map[uint]bool{}
	repeated := false
	var conds []cond
	for _, arg := range args {
		if arg.Index > 5 {
			return nil, fmt.Errorf("argument index %d out of range", arg.Index)
		}
		switch arg.Op {
		case specs.OpEqualTo, specs.OpNotEqual, specs.OpLessThan, specs.OpLessEqual,
			specs.OpGreaterThan, specs.OpGreaterEqual, specs.OpMaskedEqual:
		default:
			return nil, fmt.Errorf("unknown operator %q", arg.Op)
		}
		repeated = repeated || seen[arg.Index]
		seen[arg.Index] = true
		conds = append(conds, cond{arg.Index, arg.Op, arg.Value, arg.ValueTwo})
	}
	if !repeated {
		return []rule{{ret: ret, conds: conds}}, nil
	}
	rules := make([]rule, len(conds))
	for i, c := range conds {
		rules[i] = rule{ret: ret, conds: []cond{c}}
	}
	return rules, nil
}

// action is the filter's return value for a profile action.
func action(act specs.LinuxSeccompAction, errnoRet *uint) (uint32, error) {
	data := uint32(unix.EPERM)
	if errnoRet != nil {
		if *errnoRet > 0xffff {
			return 0, fmt.Errorf("errno %d out of range", *errnoRet)
		}
		data = uint32(*errnoRet)
	}
	switch act {
	case specs.ActAllow:
		return unix.SECCOMP_RET_ALLOW, nil
	case specs.ActErrno:
		return unix.SECCOMP_RET_ERRNO | data, nil
	case specs.ActKill, specs.ActKillThread:
		return unix.SECCOMP_RET_KILL_THREAD, nil
	case specs.ActKillProcess:
		return unix.SECCOMP_RET_KILL_PROCESS, nil
	case specs.ActTrap:
		return unix.SECCOMP_RET_TRAP, nil
	case specs.ActTrace:
		return unix.SECCOMP_RET_TRACE | data, nil
	case specs.ActLog:
		return unix.SECCOMP_RET_LOG, nil
	}
	return 0, fmt.Errorf("unsupported action %q", act)
}

// tree emits a binary search over segs (the call number in A) ending in
// each segment's outcome.
func (a *assembler) tree(segs []segment, def uint32) {
	if len(segs) == 1 {
		a.outcome(segs[0].out, def)
		return
	}
	mid := len(segs) / 2
	right := a.newLabel()
	a.jump(unix.BPF_JGE, segs[mid].lo, right, next)
	a.tree(segs[:mid], def)
	a.setLabel(right)
	a.tree(segs[mid:], def)
}

// outcome emits one segment's end: its action, or its rules in order
// with the default action after them.
func (a *assembler) outcome(out outcome, def uint32) {
	if out.rules == nil {
		a.ret(out.ret)
		return
	}
	for _, r := range out.rules {
		fail := a.newLabel()
		for _, c := range r.conds {
			a.cond(c, fail)
		}
		a.ret(r.ret)
		a.setLabel(fail)
	}
	a.ret(def)
}

// cond emits a 64-bit comparison of an argument, falling through when it
// holds and jumping to fail when it does not. Arguments are read as two
// 32-bit words, the low one first (little endian).
func (a *assembler) cond(c cond, fail label) {
	lo := uint32(offArgs + 8*c.index)
	hi := lo + 4
	vhi, vlo := uint32(c.value>>32), uint32(c.value)
	pass := a.newLabel()
	switch c.op {
	case specs.OpEqualTo:
		a.load(hi)
		a.jump(unix.BPF_JEQ, vhi, next, fail)
		a.load(lo)
		a.jump(unix.BPF_JEQ, vlo, next, fail)
	case specs.OpNotEqual:
		a.load(hi)
		a.jump(unix.BPF_JEQ, vhi, next, pass)
		a.load(lo)
		a.jump(unix.BPF_JEQ, vlo, fail, next)
	case specs.OpMaskedEqual:
		// (arg & value) == valueTwo
		a.load(hi)
		a.and(vhi)
		a.jump(unix.BPF_JEQ, uint32(c.value2>>32), next, fail)
		a.load(lo)
		a.and(vlo)
		a.jump(unix.BPF_JEQ, uint32(c.value2), next, fail)
	case specs.OpGreaterThan, specs.OpGreaterEqual:
		a.load(hi)
		a.jump(unix.BPF_JGT, vhi, pass, next)
		a.jump(unix.BPF_JEQ, vhi, next, fail)
		a.load(lo)
		op := uint16(unix.BPF_JGT)
		if c.op == specs.OpGreaterEqual {
			op = unix.BPF_JGE
		}
		a.jump(op, vlo, next, fail)
	case specs.OpLessThan, specs.OpLessEqual:
		a.load(hi)
		a.jump(unix.BPF_JGT, vhi, fail, next)
		a.jump(unix.BPF_JEQ, vhi, next, pass)
		a.load(lo)
		// arg < v is !(arg >= v); arg <= v is !(arg > v).
		op := uint16(unix.BPF_JGE)
		if c.op == specs.OpLessEqual {
			op = unix.BPF_JGT
		}
		a.jump(op, vlo, fail, next)
	}
	a.setLabel(pass)
}

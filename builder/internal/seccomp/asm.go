package seccomp

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// label names a place in a program; jumps go to labels, forward only.
type label int

// next is the instruction after a jump: no jump.
const next label = -1

type kind uint8

const (
	kLoad  kind = iota // A = seccomp_data[k] (32 bits)
	kAnd               // A &= k
	kJump              // if A <op> k goto jt else goto jf
	kRet               // return k
	kLabel             // defines label l here; no instruction
)

type insn struct {
	kind   kind
	op     uint16
	k      uint32
	jt, jf label
	l      label
}

// assembler collects instructions with symbolic jumps and lays them out.
// A conditional jump reaches 255 instructions at most: farther targets
// are reached through an unconditional jump (32-bit offset) placed right
// after it.
type assembler struct {
	ins    []insn
	labels int
}

func newAssembler() *assembler { return &assembler{} }

func (a *assembler) newLabel() label {
	a.labels++
	return label(a.labels - 1)
}

func (a *assembler) setLabel(l label) { a.ins = append(a.ins, insn{kind: kLabel, l: l}) }
func (a *assembler) load(off uint32)  { a.ins = append(a.ins, insn{kind: kLoad, k: off}) }
func (a *assembler) and(k uint32)     { a.ins = append(a.ins, insn{kind: kAnd, k: k}) }
func (a *assembler) ret(k uint32)     { a.ins = append(a.ins, insn{kind: kRet, k: k}) }

// jump compares A with k (op is BPF_JEQ, BPF_JGT, BPF_JGE or BPF_JSET).
func (a *assembler) jump(op uint16, k uint32, jt, jf label) {
	a.ins = append(a.ins, insn{kind: kJump, op: op, k: k, jt: jt, jf: jf})
}

// assemble resolves labels, widening far branches, and encodes.
func (a *assembler) assemble() ([]unix.SockFilter, error) {
	long := make([][2]bool, len(a.ins))
	var pos []int
	var at map[label]int
	layout := func() {
		pos = make([]int, len(a.ins))
		at = map[label]int{}
		p := 0
		for i, in := range a.ins {
			pos[i] = p
			switch in.kind {
			case kLabel:
				at[in.l] = p
			case kJump:
				p++
				for _, l := range long[i] {
					if l {
						p++
					}
				}
			default:
				p++
			}
		}
	}
	target := func(i int, l label) (int, error) {
		if l == next {
			n := 1
			for _, lg := range long[i] {
				if lg {
					n++
				}
			}
			return pos[i] + n, nil
		}
		t, ok := at[l]
		if !ok {
			return 0, fmt.Errorf("seccomp: label %d is never set", l)
		}
		if t <= pos[i] {
			return 0, fmt.Errorf("seccomp: backward jump to label %d", l)
		}
		return t, nil
	}
	// Widening a branch moves what follows, so repeat until stable; each
	// pass widens at least one branch, so this ends.
	for changed := true; changed; {
		changed = false
		layout()
		for i, in := range a.ins {
			if in.kind != kJump {
				continue
			}
			for b, l := range [2]label{in.jt, in.jf} {
				t, err := target(i, l)
				if err != nil {
					return nil, err
				}
				if !long[i][b] && t-(pos[i]+1) > 255 {
					long[i][b] = true
					changed = true
				}
			}
		}
	}
	var out []unix.SockFilter
	for i, in := range a.ins {
		switch in.kind {
		case kLabel:
		case kLoad:
			out = append(out, unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: in.k})
		case kAnd:
			out = append(out, unix.SockFilter{Code: unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, K: in.k})
		case kRet:
			out = append(out, unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: in.k})
		case kJump:
			var offs [2]uint8
			var tramps []int // targets of the trampolines, in order
			for b, l := range [2]label{in.jt, in.jf} {
				t, _ := target(i, l)
				if long[i][b] {
					offs[b] = uint8(len(tramps))
					tramps = append(tramps, t)
				} else {
					offs[b] = uint8(t - (pos[i] + 1))
				}
			}
			out = append(out, unix.SockFilter{Code: unix.BPF_JMP | in.op | unix.BPF_K, Jt: offs[0], Jf: offs[1], K: in.k})
			for _, t := range tramps {
				here := len(out)
				out = append(out, unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JA, K: uint32(t - (here + 1))})
			}
		}
	}
	return out, nil
}

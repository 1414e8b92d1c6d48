package builder

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// DefaultBinfmtDir is where the kernel shows binfmt_misc handlers.
const DefaultBinfmtDir = "/proc/sys/fs/binfmt_misc"

// Emulator is a binfmt_misc handler: the kernel runs binaries its magic
// matches through Interpreter (qemu-user, for foreign architectures).
type Emulator struct {
	// Name is the handler's name (its file in binfmt_misc).
	Name string `json:"name"`
	// Arch is the GOARCH-style architecture (arm64, arm, s390x, ...) of the
	// ELF binaries the handler matches; "" when it matches none ibuild
	// knows (or is not a magic handler).
	Arch string `json:"arch"`
	// Interpreter runs the matched binaries.
	Interpreter string `json:"interpreter"`
	// Enabled is false for a registered but disabled handler.
	Enabled bool `json:"enabled"`
	// Flags are the handler's flags as the kernel shows them (P, O, C, F).
	Flags string `json:"flags"`
	// FixBinary is the F flag: the kernel opened the interpreter when the
	// handler was registered, so it runs in a chroot or another mount
	// namespace where that path does not exist. RUN steps need it.
	FixBinary bool `json:"fixBinary"`

	offset      int
	magic, mask []byte
}

// Emulators lists the binfmt_misc handlers registered on this machine. It
// is empty (no error) when binfmt_misc is not mounted.
func Emulators() ([]Emulator, error) {
	return readEmulators(DefaultBinfmtDir)
}

// readEmulators parses every handler file of dir, by name.
func readEmulators(dir string) ([]Emulator, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("binfmt_misc: %w", err)
	}
	var out []Emulator
	for _, e := range ents {
		if e.Name() == "register" || e.Name() == "status" || e.IsDir() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // unregistered meanwhile
			}
			return nil, fmt.Errorf("binfmt_misc: %w", err)
		}
		out = append(out, parseEmulator(e.Name(), string(data)))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// parseEmulator parses one handler file:
//
//	enabled
//	interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
//	flags: PF
//	offset 0
//	magic 7f454c46...
//	mask ffffffff...
func parseEmulator(name, text string) Emulator {
	e := Emulator{Name: name}
	for _, ln := range strings.Split(text, "\n") {
		key, val, _ := strings.Cut(strings.TrimSpace(ln), " ")
		val = strings.TrimSpace(val)
		switch strings.TrimSuffix(key, ":") {
		case "enabled":
			e.Enabled = true
		case "interpreter":
			e.Interpreter = val
		case "flags":
			e.Flags = val
			e.FixBinary = strings.Contains(val, "F")
		case "offset":
			e.offset, _ = strconv.Atoi(val)
		case "magic":
			e.magic = decodeHex(val)
		case "mask":
			e.mask = decodeHex(val)
		}
	}
	for _, a := range elfArchs {
		if e.matches(a.header()) {
			e.Arch = a.arch
			break
		}
	}
	return e
}

// decodeHex decodes the kernel's hex; nil when it is not hex (the handler
// then matches nothing, rather than everything a partial magic would).
func decodeHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil
	}
	return b
}

// matches reports whether the handler's magic matches the start of file.
func (e Emulator) matches(file []byte) bool {
	if len(e.magic) == 0 || e.offset < 0 || e.offset+len(e.magic) > len(file) {
		return false
	}
	for i, m := range e.magic {
		mask := byte(0xff)
		if i < len(e.mask) {
			mask = e.mask[i]
		}
		if file[e.offset+i]&mask != m&mask {
			return false
		}
	}
	return true
}

// elfArch is how the ELF header of an architecture's executables starts.
type elfArch struct {
	arch      string // GOARCH
	qemu      string // qemu-user's name for it
	class     byte   // EI_CLASS: 1 32-bit, 2 64-bit
	bigEndian bool   // EI_DATA: 2 big endian, 1 little
	machine   uint16 // e_machine
}

var elfArchs = []elfArch{
	{arch: "amd64", qemu: "x86_64", class: 2, machine: 62},
	{arch: "386", qemu: "i386", class: 1, machine: 3},
	{arch: "arm64", qemu: "aarch64", class: 2, machine: 183},
	{arch: "arm", qemu: "arm", class: 1, machine: 40},
	{arch: "s390x", qemu: "s390x", class: 2, bigEndian: true, machine: 22},
	{arch: "ppc64le", qemu: "ppc64le", class: 2, machine: 21},
	{arch: "ppc64", qemu: "ppc64", class: 2, bigEndian: true, machine: 21},
	{arch: "riscv64", qemu: "riscv64", class: 2, machine: 243},
	{arch: "mips64le", qemu: "mips64el", class: 2, machine: 8},
	{arch: "loong64", qemu: "loongarch64", class: 2, machine: 258},
}

// header is the first 20 bytes of an executable (ET_EXEC) of the
// architecture: e_ident, e_type and e_machine.
func (a elfArch) header() []byte {
	h := make([]byte, 20)
	copy(h, []byte{0x7f, 'E', 'L', 'F', a.class, 1, 1})
	put := func(i int, v uint16) { h[i], h[i+1] = byte(v), byte(v>>8) }
	if a.bigEndian {
		h[5] = 2
		put = func(i int, v uint16) { h[i], h[i+1] = byte(v>>8), byte(v) }
	}
	put(16, 2) // ET_EXEC
	put(18, a.machine)
	return h
}

func lookupELFArch(arch string) (elfArch, bool) {
	for _, a := range elfArchs {
		if a.arch == arch {
			return a, true
		}
	}
	return elfArch{}, false
}

// runsNatively reports whether a host of architecture host runs arch's
// binaries without an emulator.
func runsNatively(host, arch string) bool {
	return host == arch || (host == "amd64" && arch == "386") || (host == "arm64" && arch == "arm")
}

// emulatorCheck remembers, per architecture, whether RUN steps can run:
// each build reads binfmt_misc at most once per architecture.
type emulatorCheck struct {
	mu   sync.Mutex
	errs map[string]error
}

// check is checkEmulator(dir, p), remembered.
func (c *emulatorCheck) check(dir string, p v1.Platform) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err, ok := c.errs[p.Architecture]; ok {
		return err
	}
	err := checkEmulator(dir, runtime.GOARCH, p)
	if c.errs == nil {
		c.errs = map[string]error{}
	}
	c.errs[p.Architecture] = err
	return err
}

// checkEmulator fails unless a host of architecture host can run p's
// binaries in a RUN step: natively, or through an enabled binfmt_misc
// handler of dir ("" means DefaultBinfmtDir) with the F flag. The error
// says what is missing and how to register qemu-user.
func checkEmulator(dir, host string, p v1.Platform) error {
	if runsNatively(host, p.Architecture) {
		return nil
	}
	if dir == "" {
		dir = DefaultBinfmtDir
	}
	a, ok := lookupELFArch(p.Architecture)
	if !ok {
		return fmt.Errorf("RUN for %s: ibuild does not know the ELF header of %s binaries, so it cannot check for an emulator", PlatformString(p), p.Architecture)
	}
	register := fmt.Sprintf("register qemu-user as root: on Debian or Ubuntu, `apt-get install qemu-user-static binfmt-support` then `update-binfmts --enable qemu-%s`", a.qemu)
	why := "; the handler needs the F (fix-binary) flag, which Debian's qemu-user-static sets, because the interpreter is outside the build's root file system (`ibuild emulators` lists the handlers)"
	if _, err := os.Stat(filepath.Join(dir, "status")); err != nil {
		return fmt.Errorf("RUN for %s needs an emulator on this %s host, but binfmt_misc is not mounted at %s: %s (which mounts it)%s",
			PlatformString(p), host, dir, register, why)
	}
	if st, err := os.ReadFile(filepath.Join(dir, "status")); err == nil && strings.TrimSpace(string(st)) == "disabled" {
		return fmt.Errorf("RUN for %s needs an emulator on this %s host, but binfmt_misc is disabled (%s says so): as root, `echo 1 > %s`",
			PlatformString(p), host, filepath.Join(dir, "status"), filepath.Join(dir, "status"))
	}
	ems, err := readEmulators(dir)
	if err != nil {
		return err
	}
	var disabled, noFix []Emulator
	hdr := a.header()
	for _, e := range ems {
		if !e.matches(hdr) {
			continue
		}
		switch {
		case !e.Enabled:
			disabled = append(disabled, e)
		case !e.FixBinary:
			noFix = append(noFix, e)
		default:
			return nil
		}
	}
	if len(noFix) > 0 {
		e := noFix[0]
		return fmt.Errorf("RUN for %s: the binfmt_misc handler for %s, %s, lacks the F (fix-binary) flag (flags: %q): the kernel would look for its interpreter %s inside the build's root file system, where it is not. Replace it with one that has F: as root, `update-binfmts --disable %s` (or `echo -1 > %s`), then %s",
			PlatformString(p), p.Architecture, filepath.Join(dir, e.Name), e.Flags, e.Interpreter, e.Name, filepath.Join(dir, e.Name), strings.TrimPrefix(register, "register qemu-user as root: "))
	}
	if len(disabled) > 0 {
		e := disabled[0]
		return fmt.Errorf("RUN for %s: the binfmt_misc handler for %s, %s, is disabled: as root, `update-binfmts --enable %s` (or `echo 1 > %s`)%s",
			PlatformString(p), p.Architecture, filepath.Join(dir, e.Name), e.Name, filepath.Join(dir, e.Name), why)
	}
	return fmt.Errorf("RUN for %s needs an emulator on this %s host: no binfmt_misc handler for %s is registered in %s; %s%s",
		PlatformString(p), host, p.Architecture, dir, register, why)
}

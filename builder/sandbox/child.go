package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// childMain is the re-executed ibuild: pid 1 of the step's pid namespace.
// fd 3 carries the Spec, fd 4 takes a setup error.
func childMain() {
	errPipe := os.NewFile(4, "setup-error")
	fail := func(err error) {
		fmt.Fprintln(errPipe, err)
		os.Exit(125)
	}
	var spec Spec
	if err := json.NewDecoder(os.NewFile(3, "spec")).Decode(&spec); err != nil {
		fail(fmt.Errorf("read spec: %w", err))
	}
	if err := setup(&spec); err != nil {
		fail(err)
	}
	code, err := runStep(&spec)
	if err != nil {
		fail(err)
	}
	os.Exit(code)
}

// setup builds the step's root file system and enters it.
func setup(spec *Spec) error {
	if spec.Isolation == "none" {
		return enter(spec.Merged, spec.Dir)
	}
	// Nothing mounted here may propagate back to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if len(spec.Lowers) > 0 {
		if err := mountRootOverlay(spec); err != nil {
			return err
		}
	}
	// Without lowers Merged is the root itself: a chroot needs no mount
	// point, and the mounts below go on its directories.
	root := spec.Merged
	if err := mountSpecial(root, spec); err != nil {
		return err
	}
	for _, img := range sortedKeys(spec.Files) {
		target, ok, err := mountPoint(root, img, false)
		if err != nil {
			return err
		}
		if !ok {
			continue // a symlink or a directory there: leave the image's
		}
		if err := unix.Mount(spec.Files[img], target, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", img, err)
		}
	}
	for i := range spec.Mounts {
		if err := mountOne(root, &spec.Mounts[i]); err != nil {
			return fmt.Errorf("--mount target=%s: %w", spec.Mounts[i].Target, err)
		}
	}
	if spec.Network == "none" {
		if err := loopbackUp(); err != nil {
			return fmt.Errorf("bring lo up: %w", err)
		}
	}
	if spec.Hostname != "" && spec.Isolation == "" {
		if err := unix.Sethostname([]byte(spec.Hostname)); err != nil {
			return fmt.Errorf("set hostname: %w", err)
		}
	}
	return enter(root, spec.Dir)
}

// mountRootOverlay mounts the overlay of spec's layers at Merged.
func mountRootOverlay(spec *Spec) error {
	return MountLayers(spec.Lowers, spec.Upper, spec.Work, spec.Merged)
}

// MountLayers mounts at merged an overlay of lowers (bottom to top) with
// the writable upper (and its work) directory, with the options every
// ibuild overlay uses.
func MountLayers(lowers []string, upper, work, merged string) error {
	ls := make([]string, len(lowers))
	for i, l := range lowers {
		ls[len(ls)-1-i] = l // overlay lists the top layer first
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", strings.Join(ls, ":"), upper, work)
	if inUserNamespace() {
		// Only the user.overlay.* xattrs are writable here; the layers'
		// opaque marks were stored in that form too. userxattr also rules
		// out redirects and metacopy.
		opts += ",userxattr"
	} else {
		// No redirects, index or metacopy, whatever the module's defaults:
		// the upper directory must hold every changed file in full, since
		// it is both the layer's content and (adopted) the next step's
		// lower.
		opts += ",redirect_dir=off,index=off,metacopy=off"
	}
	if len(opts) >= os.Getpagesize()-1 {
		return fmt.Errorf("overlay options for %d layers exceed the kernel's limit (%d bytes)", len(ls), os.Getpagesize())
	}
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay: %w", err)
	}
	return nil
}

// enter chroots into root and changes to the working directory dir,
// creating it when missing.
func enter(root, dir string) error {
	if err := unix.Chroot(root); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	if dir == "" {
		dir = "/"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("working directory %s: %w", dir, err)
	}
	if err := os.Chdir(dir); err != nil {
		return fmt.Errorf("working directory %s: %w", dir, err)
	}
	return nil
}

// mountOne makes one RUN --mount. Errors never quote a file's Data.
func mountOne(root string, m *Mount) error {
	source := m.Source
	switch m.Type {
	case MountBind, MountTmpfs:
	case MountOverlay:
		lowers := make([]string, len(m.Lowers))
		for i, l := range m.Lowers {
			lowers[len(lowers)-1-i] = l
		}
		opts := "lowerdir=" + strings.Join(lowers, ":")
		if m.Upper != "" {
			opts += ",upperdir=" + m.Upper + ",workdir=" + m.Work
		}
		if inUserNamespace() {
			opts += ",userxattr"
		}
		if len(opts) >= os.Getpagesize()-1 {
			return fmt.Errorf("overlay options for %d layers exceed the kernel's limit (%d bytes)", len(lowers), os.Getpagesize())
		}
		flags := uintptr(0)
		if m.Upper == "" {
			flags = unix.MS_RDONLY
		}
		if err := unix.Mount("overlay", m.Stage, "overlay", flags, opts); err != nil {
			return fmt.Errorf("mount overlay: %w", err)
		}
		source = filepath.Join(m.Stage, filepath.FromSlash(m.Sub))
	case MountFile:
		if err := unix.Mount("tmpfs", m.Stage, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700,size=16m"); err != nil {
			return fmt.Errorf("mount tmpfs: %w", err)
		}
		source = filepath.Join(m.Stage, "data")
		f, err := os.OpenFile(source, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		_, werr := f.Write(m.Data)
		if err := f.Close(); werr == nil {
			werr = err
		}
		if werr != nil {
			return fmt.Errorf("write file: %w", werr)
		}
		if err := os.Chown(source, int(m.UID), int(m.GID)); err != nil {
			return err
		}
		if err := os.Chmod(source, fs.FileMode(m.Mode&0o777)); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown mount type %q", m.Type)
	}
	target, ok, err := mountPoint(root, m.Target, !m.File)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("a symlink or a file of another type is in the way of the mount point")
	}
	if m.Type == MountTmpfs {
		opts := ""
		if m.Size > 0 {
			opts = fmt.Sprintf("size=%d", m.Size)
		}
		if err := unix.Mount("tmpfs", target, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
			return fmt.Errorf("mount tmpfs: %w", err)
		}
		return nil
	}
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	if m.ReadOnly || m.Type == MountFile {
		if err := remountReadOnly(target, unix.MS_NOSUID|unix.MS_NODEV); err != nil {
			return fmt.Errorf("make read-only: %w", err)
		}
	}
	return nil
}

// mountSpecial mounts /proc, a minimal /dev and a read-only /sys.
func mountSpecial(root string, spec *Spec) error {
	if p, ok, err := mountPoint(root, "/proc", true); err != nil {
		return err
	} else if ok {
		if err := unix.Mount("proc", p, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mount /proc: %w", err)
		}
	}
	if p, ok, err := mountPoint(root, "/sys", true); err != nil {
		return err
	} else if ok {
		if err := unix.Mount("/sys", p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("mount /sys: %w", err)
		}
		if err := remountReadOnly(p, unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC); err != nil {
			return fmt.Errorf("make /sys read-only: %w", err)
		}
	}
	dev, ok, err := mountPoint(root, "/dev", true)
	if err != nil || !ok {
		return err
	}
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=755,size=65536k"); err != nil {
		return fmt.Errorf("mount /dev: %w", err)
	}
	for _, name := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		p := filepath.Join(dev, name)
		if err := os.WriteFile(p, nil, 0o666); err != nil {
			return err
		}
		if err := unix.Mount("/dev/"+name, p, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind /dev/%s: %w", name, err)
		}
	}
	for _, d := range []string{"pts", "shm"} {
		if err := os.Mkdir(filepath.Join(dev, d), 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("devpts", filepath.Join(dev, "pts"), "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return fmt.Errorf("mount /dev/pts: %w", err)
	}
	if err := unix.Mount("shm", filepath.Join(dev, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777,size=65536k"); err != nil {
		return fmt.Errorf("mount /dev/shm: %w", err)
	}
	for link, target := range map[string]string{
		"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
		"stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2",
	} {
		if err := os.Symlink(target, filepath.Join(dev, link)); err != nil {
			return err
		}
	}
	return nil
}

// remountReadOnly makes the bind mount at target read-only with the
// flags extra. In a user namespace the kernel locks the flags a mount had
// when the namespace was made (nosuid, nodev, noexec, the atime mode): a
// remount dropping one fails with EPERM, so they are kept.
func remountReadOnly(target string, extra uintptr) error {
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err != nil {
		return err
	}
	flags := unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY | extra
	for _, f := range []struct{ st, ms uintptr }{
		{unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV}, {unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if uintptr(st.Flags)&f.st != 0 {
			flags |= f.ms
		}
	}
	return unix.Mount("", target, "", flags, "")
}

// mountPoint returns the host path of the image path p inside root, making
// it (a directory when dir, else an empty file) when missing. ok is false
// when something that is not a plain directory or file is in the way,
// such as a symlink: nothing is then mounted there, so a mount never
// follows a link out of the image.
func mountPoint(root, p string, dir bool) (string, bool, error) {
	cur := root
	parts := strings.Split(strings.Trim(p, "/"), "/")
	for i, part := range parts {
		cur = filepath.Join(cur, part)
		last := i == len(parts)-1
		fi, err := os.Lstat(cur)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if last && !dir {
				if err := os.WriteFile(cur, nil, 0o644); err != nil {
					return "", false, err
				}
				return cur, true, nil
			}
			if err := os.Mkdir(cur, 0o755); err != nil {
				return "", false, err
			}
		case err != nil:
			return "", false, err
		case fi.Mode()&fs.ModeSymlink != 0:
			return "", false, nil
		case last && dir != fi.IsDir():
			return "", false, nil
		case !last && !fi.IsDir():
			return "", false, nil
		}
	}
	return cur, true, nil
}

// runStep starts the command as the step's user and waits for it. As pid 1
// it reaps whatever else exits meanwhile.
func runStep(spec *Spec) (int, error) {
	env := spec.Env
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	os.Setenv("PATH", path)
	argv0 := spec.Args[0]
	if !strings.Contains(argv0, "/") {
		found, err := exec.LookPath(argv0)
		if err != nil {
			return 0, fmt.Errorf("%s: not found in the image's PATH (%s)", argv0, path)
		}
		argv0 = found
	}
	cmd := exec.Command(argv0)
	cmd.Args = spec.Args
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if spec.Stdin != "" || spec.Isolation == "none" {
		// Without a /dev, exec could not open /dev/null: an empty pipe.
		cmd.Stdin = strings.NewReader(spec.Stdin)
	}
	groups := spec.Groups
	if groups == nil {
		groups = []uint32{}
	}
	// A user namespace mapping a single gid without newgidmap denies
	// setgroups: the step then keeps the (empty) groups it has.
	cred := &syscall.Credential{Uid: spec.UID, Gid: spec.GID, Groups: groups, NoSetGroups: setgroupsDenied()}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", spec.Args[0], err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 0, err
	}
	return 0, nil
}

// loopbackUp sets the lo interface up in a fresh network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

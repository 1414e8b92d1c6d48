package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/moby/sys/capability"
	"golang.org/x/sys/unix"
)

// childMain is the re-executed ibuild: pid 1 of the step's pid namespace.
// fd 3 carries the Spec, fd 4 takes a setup error.
func childMain() {
	// Capabilities and the seccomp filter belong to a thread: confine
	// applies them to this one, and the step is started from it.
	runtime.LockOSThread()
	errPipe := os.NewFile(4, "setup-error")
	fail := func(err error) {
		fmt.Fprintln(errPipe, err)
		os.Exit(125)
	}
	var w wireSpec
	if err := json.NewDecoder(os.NewFile(3, "spec")).Decode(&w); err != nil {
		fail(fmt.Errorf("read spec: %w", err))
	}
	spec := w.spec()
	// Read what /proc tells before the root changes (under isolation none
	// the image may have no /proc).
	if _, err := capability.LastCap(); err != nil {
		fail(fmt.Errorf("capabilities: %w", err))
	}
	noSetGroups := setgroupsDenied()
	// Loading a filter without no_new_privs needs CAP_SYS_ADMIN, which
	// every mode but none holds here.
	filter := spec.Isolation != IsolationNone || CanMount()
	if err := setup(&spec); err != nil {
		fail(err)
	}
	caps := spec.Capabilities
	if spec.Insecure {
		caps = allCapabilities()
		filter = false
	}
	groups := spec.Groups
	if groups == nil {
		groups = []uint32{}
	}
	if err := confine(caps, filter, identity{spec.UID, spec.GID, groups, noSetGroups}); err != nil {
		fail(err)
	}
	if err := hideFromStep(); err != nil {
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
	if spec.Isolation == IsolationNone {
		// No mount namespace: nothing can be mounted or pivoted, only a
		// chroot. This mode is not a security boundary (see docs/security.md).
		if err := unix.Chroot(spec.Merged); err != nil {
			return fmt.Errorf("chroot: %w", err)
		}
		if err := os.Chdir("/"); err != nil {
			return err
		}
		return chdirWorkdir(spec.Dir)
	}
	// Nothing mounted here may propagate back to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	root := spec.Merged
	if len(spec.Lowers) > 0 {
		if err := mountOverlay(spec.Lowers, spec.Upper, spec.Work, root, unix.MOUNT_ATTR_NODEV, !spec.legacyOverlay); err != nil {
			return err
		}
	} else if err := bindSelf(root); err != nil {
		// Without lowers Merged is the root itself; pivot_root needs a
		// mount point, and nodev keeps its device nodes inert.
		return err
	}
	if err := mountSpecial(root, spec); err != nil {
		return err
	}
	if err := mountGenerated(root, spec); err != nil {
		return err
	}
	for i := range spec.Mounts {
		if err := mountOne(root, &spec.Mounts[i], !spec.legacyOverlay); err != nil {
			return fmt.Errorf("--mount target=%s: %w", spec.Mounts[i].Target, err)
		}
	}
	if spec.Network == NetworkNone {
		if err := loopbackUp(); err != nil {
			return fmt.Errorf("bring lo up: %w", err)
		}
	}
	if spec.Hostname != "" && spec.Isolation.namespaces() {
		if err := unix.Sethostname([]byte(spec.Hostname)); err != nil {
			return fmt.Errorf("set hostname: %w", err)
		}
	}
	if err := enterRoot(root, spec.moveRoot); err != nil {
		return err
	}
	return chdirWorkdir(spec.Dir)
}

// bindSelf makes the directory dir a mount point of its own, nodev.
func bindSelf(dir string) error {
	if err := unix.Mount(dir, dir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind the root directory: %w", err)
	}
	if err := remount(dir, unix.MS_NODEV); err != nil {
		return fmt.Errorf("make the root directory nodev: %w", err)
	}
	return nil
}

// mountGenerated writes the generated files (/etc/hosts, ...) to a tmpfs
// on FilesDir, mounted in this mount namespace only, and binds them over
// the image's paths: the step's view of them is never a file on the
// host's file system, and writes to them vanish with the step.
func mountGenerated(root string, spec *Spec) error {
	if len(spec.Files) == 0 {
		return nil
	}
	if spec.FilesDir == "" {
		return errors.New("generated files without a directory for them")
	}
	if err := unix.Mount("tmpfs", spec.FilesDir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0755,size=1m"); err != nil {
		return fmt.Errorf("mount tmpfs for generated files: %w", err)
	}
	for i, img := range sortedKeys(spec.Files) {
		target, ok, err := mountPoint(root, img, false)
		if err != nil {
			return err
		}
		if !ok {
			continue // a symlink or a directory there: leave the image's
		}
		host := filepath.Join(spec.FilesDir, strconv.Itoa(i))
		if err := os.WriteFile(host, []byte(spec.Files[img]), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", img, err)
		}
		if err := unix.Mount(host, target, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", img, err)
		}
	}
	return nil
}

// mountOne makes one RUN --mount. Errors never quote a file's Data.
// Every mount is nodev: a device node in a cache, a bound stage or the
// context opens nothing.
func mountOne(root string, m *Mount, newAPI bool) error {
	source := m.Source
	switch m.Type {
	case MountBind, MountTmpfs:
	case MountOverlay:
		if err := mountOverlay(m.Lowers, m.Upper, m.Work, m.Stage, unix.MOUNT_ATTR_NODEV, newAPI); err != nil {
			return err
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
	flags := uintptr(unix.MS_NODEV)
	if m.ReadOnly || m.Type == MountFile {
		flags |= unix.MS_RDONLY | unix.MS_NOSUID
	}
	if err := remount(target, flags); err != nil {
		return fmt.Errorf("remount: %w", err)
	}
	return nil
}

// maskedPaths are hidden from steps as runc hides them from containers:
// files behind /dev/null, directories behind an empty read-only tmpfs.
func maskedPaths() []string {
	return []string{
		"/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
		"/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
		"/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware",
	}
}

// readonlyPaths are read-only for steps, as for runc's containers.
func readonlyPaths() []string {
	return []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
}

// mountSpecial mounts /proc (with runc's masked and read-only paths), a
// minimal /dev and a read-only /sys.
func mountSpecial(root string, spec *Spec) error {
	procOK, sysOK := false, false
	if p, ok, err := mountPoint(root, "/proc", true); err != nil {
		return err
	} else if ok {
		err := unix.Mount("proc", p, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
		if errors.Is(err, unix.EPERM) && spec.Isolation == IsolationChroot && inUserNamespace() {
			// The host's pid namespace belongs to the initial user
			// namespace: no new proc can be mounted for it from here, so
			// the host's is bound, as buildah's chroot isolation does.
			err = unix.Mount("/proc", p, "", unix.MS_BIND|unix.MS_REC, "")
		}
		if err != nil {
			return fmt.Errorf("mount /proc: %w", err)
		}
		procOK = true
	}
	if p, ok, err := mountPoint(root, "/sys", true); err != nil {
		return err
	} else if ok {
		// The host's /sys with what is mounted below it (cgroups among
		// them), all of it read-only.
		if err := unix.Mount("/sys", p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("mount /sys: %w", err)
		}
		if err := readOnlyTree(p); err != nil {
			return fmt.Errorf("make /sys read-only: %w", err)
		}
		sysOK = true
	}
	for _, m := range maskedPaths() {
		if spec.Insecure {
			break
		}
		if strings.HasPrefix(m, "/proc/") && !procOK || strings.HasPrefix(m, "/sys/") && !sysOK {
			continue
		}
		if err := mask(filepath.Join(root, m)); err != nil {
			return fmt.Errorf("mask %s: %w", m, err)
		}
	}
	if procOK && !spec.Insecure {
		for _, r := range readonlyPaths() {
			p := filepath.Join(root, r)
			if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err := unix.Mount(p, p, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
				return fmt.Errorf("bind %s: %w", r, err)
			}
			if err := readOnlyTree(p); err != nil {
				return fmt.Errorf("make %s read-only: %w", r, err)
			}
		}
	}
	dev, ok, err := mountPoint(root, "/dev", true)
	if err != nil || !ok {
		return err
	}
	// nodev: the devices below are binds of the host's few harmless ones;
	// a node the step makes here (CAP_MKNOD) opens nothing.
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=755,size=65536k"); err != nil {
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
	// A RUN --mount on /dev/shm replaces the default one, as with runc.
	if !mountsAt(spec.Mounts, "/dev/shm") {
		if err := unix.Mount("shm", filepath.Join(dev, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777,size=65536k"); err != nil {
			return fmt.Errorf("mount /dev/shm: %w", err)
		}
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

// mask hides the host path p (in the step's /proc or /sys) when it
// exists.
func mask(p string) error {
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return unix.Mount("tmpfs", p, "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=0,mode=0555")
	}
	if err := unix.Mount("/dev/null", p, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	return remount(p, unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC)
}

// readOnlyTree makes the mount at target and every mount below it
// read-only, nosuid, nodev and noexec.
func readOnlyTree(target string) error {
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOEXEC}
	err := unix.MountSetattr(unix.AT_FDCWD, target, unix.AT_RECURSIVE, &attr)
	if !errors.Is(err, unix.ENOSYS) {
		return err
	}
	// Before Linux 5.12: remount each mount of the tree, deepest last.
	points, err := mountsUnder(target)
	if err != nil {
		return err
	}
	for _, p := range points {
		if err := remount(p, unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return nil
}

// mountsUnder lists the mount points at or below dir, from
// /proc/self/mountinfo, parents first.
func mountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		p := unescapeMountinfo(f[4])
		if p == dir || strings.HasPrefix(p, dir+"/") {
			out = append(out, p)
		}
	}
	return out, nil
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// remount remounts the bind mount at target with flags (MS_RDONLY,
// MS_NODEV, ...). In a user namespace the kernel locks the flags a mount
// had when the namespace was made (nosuid, nodev, noexec, the atime
// mode): a remount dropping one fails with EPERM, so they are kept.
func remount(target string, flags uintptr) error {
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err != nil {
		return err
	}
	flags |= unix.MS_BIND | unix.MS_REMOUNT
	for _, f := range []struct{ st, ms uintptr }{
		{unix.ST_RDONLY, unix.MS_RDONLY},
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
// it reaps whatever else exits meanwhile. It runs on the thread confine
// confined, so the step inherits its user, capabilities and filter.
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
	if spec.Stdin != "" || spec.Isolation == IsolationNone {
		// Without a /dev, exec could not open /dev/null: an empty pipe.
		cmd.Stdin = strings.NewReader(spec.Stdin)
	}
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

// mountsAt reports whether one of ms is mounted at the image path p.
func mountsAt(ms []Mount, p string) bool {
	for _, m := range ms {
		if path.Clean("/"+m.Target) == p {
			return true
		}
	}
	return false
}

package sandbox

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// MountLayers mounts at merged an overlay of lowers (bottom to top) with
// the writable upper (and its work) directory, with the options every
// ibuild overlay uses and the mount attributes attrs (unix.MOUNT_ATTR_*,
// such as MOUNT_ATTR_NOSUID|MOUNT_ATTR_NODEV).
func MountLayers(lowers []string, upper, work, merged string, attrs uint64) error {
	return mountOverlay(lowers, upper, work, merged, attrs, true)
}

// overlayFlags are the options of every ibuild overlay besides its
// directories, as key=value or bare flags.
func overlayFlags() []string {
	if inUserNamespace() {
		// Only the user.overlay.* xattrs are writable here; the layers'
		// opaque marks were stored in that form too. userxattr also rules
		// out redirects and metacopy.
		return []string{"userxattr"}
	}
	// No redirects, index or metacopy, whatever the module's defaults: the
	// upper directory must hold every changed file in full, since it is
	// both the layer's content and (adopted) the next step's lower.
	return []string{"redirect_dir=off", "index=off", "metacopy=off"}
}

// errOldKernel says the new mount API cannot take the overlay's layers
// one by one (lowerdir+ came with Linux 6.8).
var errOldKernel = errors.New("the new mount API cannot add overlay layers one by one")

// mountOverlay mounts an overlay of lowers (bottom to top) at target,
// writable through upper and work when upper is set, read-only otherwise.
// With the new mount API (newAPI, Linux 6.8 and later) each layer is
// passed on its own, so the number of layers is bounded only by the
// kernel's 500; mount(2) takes every option in one page, so there each
// layer is named by a short /proc/self/fd link to a descriptor opened on
// it, which fits about 200 layers.
func mountOverlay(lowers []string, upper, work, target string, attrs uint64, newAPI bool) error {
	if len(lowers) == 0 {
		return errors.New("overlay: no lower directory")
	}
	if upper == "" {
		attrs |= unix.MOUNT_ATTR_RDONLY
	}
	if newAPI {
		err := mountOverlayFD(lowers, upper, work, target, attrs)
		if !errors.Is(err, errOldKernel) {
			return err
		}
	}
	return mountOverlayLegacy(lowers, upper, work, target, attrs)
}

// mountOverlayFD mounts with fsopen, fsconfig, fsmount and move_mount.
func mountOverlayFD(lowers []string, upper, work, target string, attrs uint64) error {
	fd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if errors.Is(err, unix.ENOSYS) {
		return errOldKernel
	}
	if err != nil {
		return fmt.Errorf("mount overlay: fsopen: %w", err)
	}
	defer unix.Close(fd)
	for i := len(lowers) - 1; i >= 0; i-- { // the top layer first
		if err := unix.FsconfigSetString(fd, "lowerdir+", lowers[i]); err != nil {
			if i == len(lowers)-1 && errors.Is(err, unix.EINVAL) {
				if _, statErr := os.Stat(lowers[i]); statErr == nil {
					return errOldKernel
				}
			}
			return fmt.Errorf("mount overlay: layer %s: %w%s", lowers[i], err, fsError(fd))
		}
	}
	if upper != "" {
		if err := unix.FsconfigSetString(fd, "upperdir", upper); err != nil {
			return fmt.Errorf("mount overlay: upper directory %s: %w%s", upper, err, fsError(fd))
		}
		if err := unix.FsconfigSetString(fd, "workdir", work); err != nil {
			return fmt.Errorf("mount overlay: work directory %s: %w%s", work, err, fsError(fd))
		}
	}
	for _, o := range overlayFlags() {
		k, v, isKV := strings.Cut(o, "=")
		if isKV {
			err = unix.FsconfigSetString(fd, k, v)
		} else {
			err = unix.FsconfigSetFlag(fd, k)
		}
		if err != nil {
			return fmt.Errorf("mount overlay: option %s: %w%s", o, err, fsError(fd))
		}
	}
	if err := unix.FsconfigCreate(fd); err != nil {
		return fmt.Errorf("mount overlay: %w%s", err, fsError(fd))
	}
	mfd, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, int(attrs))
	if err != nil {
		return fmt.Errorf("mount overlay: fsmount: %w", err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("mount overlay at %s: %w", target, err)
	}
	return nil
}

// fsError is what the kernel logged on a file system context, to explain
// a failed fsconfig.
func fsError(fd int) string {
	var msgs []string
	buf := make([]byte, 1024)
	for range 8 {
		n, err := unix.Read(fd, buf)
		if err != nil || n <= 0 {
			break
		}
		msgs = append(msgs, strings.TrimSpace(strings.TrimPrefix(string(buf[:n]), "e ")))
	}
	if len(msgs) == 0 {
		return ""
	}
	return " (" + strings.Join(msgs, "; ") + ")"
}

// mountOverlayLegacy mounts with mount(2), naming each layer by a
// descriptor's /proc/self/fd link so long paths do not matter.
func mountOverlayLegacy(lowers []string, upper, work, target string, attrs uint64) error {
	names := make([]string, len(lowers))
	for i, l := range lowers {
		fd, err := unix.Open(l, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("mount overlay: layer %s: %w", l, err)
		}
		defer unix.Close(fd)
		names[len(lowers)-1-i] = "/proc/self/fd/" + strconv.Itoa(fd) // the top layer first
	}
	opts := "lowerdir=" + strings.Join(names, ":")
	if upper != "" {
		opts += ",upperdir=" + upper + ",workdir=" + work
	}
	opts += "," + strings.Join(overlayFlags(), ",")
	if len(opts) >= os.Getpagesize()-1 {
		return fmt.Errorf("mount overlay: %d layers are more than mount(2) takes on this kernel (before Linux 6.8); squash the base image (build it with Squash or SquashAll) or use a newer kernel", len(lowers))
	}
	if err := unix.Mount("overlay", target, "overlay", mountFlags(attrs), opts); err != nil {
		return fmt.Errorf("mount overlay: %w", err)
	}
	return nil
}

// mountFlags turns MOUNT_ATTR_* into mount(2)'s MS_* flags.
func mountFlags(attrs uint64) uintptr {
	var flags uintptr
	for _, f := range []struct {
		attr uint64
		ms   uintptr
	}{
		{unix.MOUNT_ATTR_RDONLY, unix.MS_RDONLY}, {unix.MOUNT_ATTR_NOSUID, unix.MS_NOSUID},
		{unix.MOUNT_ATTR_NODEV, unix.MS_NODEV}, {unix.MOUNT_ATTR_NOEXEC, unix.MS_NOEXEC},
	} {
		if attrs&f.attr != 0 {
			flags |= f.ms
		}
	}
	return flags
}

// pivotRoot makes root (a mount point) the process's root directory and
// detaches the old root, as runc does: nothing outside root stays
// reachable, not through ".." from a second chroot, nor through a
// descriptor, since none is left open on it.
func pivotRoot(root string) error {
	oldRoot, err := unix.Open("/", unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(oldRoot)
	newRoot, err := unix.Open(root, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(newRoot)
	if err := unix.Fchdir(newRoot); err != nil {
		return err
	}
	// pivot_root(".", ".") stacks the old root on the new one; it is then
	// unmounted from under us.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Fchdir(oldRoot); err != nil {
		return err
	}
	// Keep the unmount from reaching the host's mounts.
	if err := unix.Mount("", ".", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make the old root a slave: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the old root: %w", err)
	}
	return unix.Chdir("/")
}

// moveRoot is the fallback where pivot_root cannot work (a root file
// system that is not a mount, such as an initramfs): the new root is moved
// over / and entered with chroot. ".." from the root of a mount stacked on
// / leads back to that mount, so a second chroot cannot climb out either.
func moveRoot(root string) error {
	if err := unix.Chdir(root); err != nil {
		return err
	}
	if err := unix.Mount(root, "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move the root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return unix.Chdir("/")
}

// enterRoot switches to the prepared root file system (a mount point):
// pivot_root, or where the kernel refuses it, moveRoot. fallback forces
// moveRoot (for tests).
func enterRoot(root string, fallback bool) error {
	if !fallback {
		err := pivotRoot(root)
		if err == nil || !errors.Is(err, unix.EINVAL) {
			return err
		}
	}
	return moveRoot(root)
}

// chdirWorkdir changes to the step's working directory in the image,
// creating it when missing.
func chdirWorkdir(dir string) error {
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

package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
	"go.podman.io/storage/pkg/reexec"
	"go.podman.io/storage/pkg/unshare"

	"github.com/ibuild/ibuild/builder"
)

// usernsProbe is the re-executed ibuild that only checks a user namespace
// can be created.
const usernsProbe = "ibuild-userns-probe"

func init() {
	reexec.Register(usernsProbe, func() { os.Exit(0) })
}

// enterUserNamespace re-executes an unprivileged ibuild as the root of a
// new user and mount namespace, as buildah does, so RUN steps can run and
// storage uses the kernel's overlay. It returns when the process stays
// where it is: as root, inside the namespace already, with --isolation
// none, or when no namespace can be made (auto keeps the native store,
// whose builds work except for RUN). Otherwise it does not return: the
// process exits with the re-executed one's status.
//
// The storage root is fixed first and handed down in IBUILD_ROOT, since
// inside the namespace the process is root and would default to
// /var/lib/ibuild.
//
// With --isolation auto (or chroot) the namespace is entered only when /etc/subuid and
// /etc/subgid give the user a range (65536 ids are mapped); with userns it
// is entered with the user's single id when there is no range, after a
// warning that chown to any other id will fail.
func enterUserNamespace(c *cli.Context, isolation string) error {
	if os.Geteuid() == 0 || isolation == builder.IsolationNone {
		return nil
	}
	reason := userNamespaceUnavailable()
	full := false
	if reason == "" {
		var err error
		if full, err = hasSubIDRanges(); err != nil {
			reason = err.Error()
		}
	}
	if reason != "" {
		if isolation == builder.IsolationUserns {
			return fmt.Errorf("--isolation userns: %s", reason)
		}
		return nil // RUN will say what it needs
	}
	if !full {
		if isolation != builder.IsolationUserns {
			return nil
		}
		fmt.Fprintln(os.Stderr, "ibuild: warning: /etc/subuid and /etc/subgid give this user no range: the user namespace maps only your own uid and gid (as 0), so chown to any other id, and base images with files owned by other ids, fail")
	}
	root, err := storeRoot(c)
	if err != nil {
		return err
	}
	if err := os.Setenv("IBUILD_ROOT", root); err != nil {
		return err
	}
	unshare.MaybeReexecUsingUserNamespace(false)
	return nil
}

// userNamespaceUnavailable says why this process cannot create a user
// namespace, or returns "".
func userNamespaceUnavailable() string {
	for _, knob := range []string{"/proc/sys/user/max_user_namespaces", "/proc/sys/kernel/unprivileged_userns_clone"} {
		if data, err := os.ReadFile(knob); err == nil && strings.TrimSpace(string(data)) == "0" {
			return "user namespaces are disabled (" + knob + " is 0)"
		}
	}
	cmd := reexec.Command(usernsProbe)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS}
	if err := cmd.Run(); err != nil {
		return fmt.Sprintf("cannot create a user namespace: %v", err)
	}
	return ""
}

// hasSubIDRanges reports whether the user has ranges in both /etc/subuid
// and /etc/subgid and newuidmap and newgidmap are there to map them.
func hasSubIDRanges() (bool, error) {
	me, err := user.Current()
	if err != nil {
		return false, fmt.Errorf("cannot find the current user: %w", err)
	}
	uids, gids, err := unshare.GetSubIDMappings(me.Username, me.Username)
	if err != nil || len(uids) == 0 || len(gids) == 0 {
		return false, nil
	}
	for _, tool := range []string{"newuidmap", "newgidmap"} {
		if _, err := exec.LookPath(tool); err != nil {
			if errors.Is(err, exec.ErrNotFound) {
				return false, nil
			}
			return false, err
		}
	}
	return true, nil
}

package builder

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strings"
	"syscall"

	"go.podman.io/storage/pkg/reexec"
	"go.podman.io/storage/pkg/unshare"
)

// usernsProbe is the re-executed program that only checks a user
// namespace can be created.
const usernsProbe = "ibuild-userns-probe"

func init() {
	reexec.Register(usernsProbe, func() { os.Exit(0) })
}

// ReexecOptions configure MaybeReexecUsingUserNamespace.
type ReexecOptions struct {
	// Isolation is the isolation the program's builds will use (see
	// ParseIsolation; "" means IsolationAuto).
	Isolation Isolation
	// Warn receives a warning when the namespace can map only the
	// caller's own ids; nil discards it.
	Warn func(string)
	// BeforeReexec, when not nil, runs just before the program is
	// re-executed, to hand the new process what it needs in its
	// environment. Inside the namespace the program runs as root, so a
	// default that depends on the user (such as a store root under
	// $HOME or /var/lib) changes: fix it here.
	BeforeReexec func() error
}

// MaybeReexecUsingUserNamespace lets a program run RUN steps as an
// unprivileged user, as the ibuild command does: it re-executes the
// program as the root of a new user and mount namespace (as buildah
// does), mapping the user's subordinate id range from /etc/subuid and
// /etc/subgid through newuidmap and newgidmap, so RUN steps can run and
// the store can use the kernel's overlay. Call it early in main, after
// reexec.Init() and before opening a store.
//
// It returns nil and leaves the process where it is when the program
// runs as root (inside the namespace it does), when opts.Isolation is
// IsolationNone, or when no namespace can be made and the isolation is
// IsolationAuto or IsolationChroot (builds then work, except RUN steps,
// which say what they need). With IsolationAuto and IsolationChroot the
// namespace is entered only when the user has subordinate ranges; with
// IsolationUserns it is entered anyway, mapping only the user's own uid
// and gid (after opts.Warn), and an error says why when no namespace
// can be made. Otherwise it does not return: the process exits with the
// re-executed one's status.
func MaybeReexecUsingUserNamespace(opts ReexecOptions) error {
	isolation, err := ParseIsolation(string(opts.Isolation))
	if err != nil {
		return err
	}
	if os.Geteuid() == 0 || isolation == IsolationNone {
		return nil
	}
	reason := userNamespaceUnavailable()
	full := false
	if reason == "" {
		if full, err = hasSubIDRanges(); err != nil {
			reason = err.Error()
		}
	}
	if reason != "" {
		if isolation == IsolationUserns {
			return fmt.Errorf("isolation userns needs a user namespace: %s", reason)
		}
		return nil // RUN will say what it needs
	}
	if !full {
		if isolation != IsolationUserns {
			return nil
		}
		if opts.Warn != nil {
			opts.Warn("/etc/subuid and /etc/subgid give this user no range: the user namespace maps only your own uid and gid (as 0), so chown to any other id, and base images with files owned by other ids, fail")
		}
	}
	if opts.BeforeReexec != nil {
		if err := opts.BeforeReexec(); err != nil {
			return err
		}
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

package sandbox

// Isolation is how a step is isolated from the host.
type Isolation string

// Isolation modes. The sandbox makes new mount, pid, uts and ipc
// namespaces for IsolationAuto, IsolationUserns and "" alike; entering a
// user namespace first (IsolationUserns) is the caller's business (see
// the builder's MaybeReexecUsingUserNamespace).
const (
	// IsolationAuto runs steps in new mount, pid, uts and ipc
	// namespaces, in a user namespace when the process is not root and
	// one can be made.
	IsolationAuto Isolation = "auto"
	// IsolationChroot runs steps in a new mount namespace only, chrooted
	// (pivot_root) into their root file system: they share the host's
	// pids, host name and IPC, and what they leave running is not killed.
	IsolationChroot Isolation = "chroot"
	// IsolationUserns is IsolationAuto in a user namespace the caller
	// enters even when it can map only its own uid.
	IsolationUserns Isolation = "userns"
	// IsolationNone makes no namespace and no mount: the stage's root file
	// system is unpacked and the step chrooted into it. It is no security
	// boundary.
	IsolationNone Isolation = "none"
)

// namespaces reports whether steps get new pid, uts and ipc namespaces.
func (i Isolation) namespaces() bool {
	return i == "" || i == IsolationAuto || i == IsolationUserns
}

// Network is the network a step sees.
type Network string

// Network modes.
const (
	// NetworkHost shares the host's network ("" means this).
	NetworkHost Network = "host"
	// NetworkNone gives the step a network namespace with only a
	// loopback interface.
	NetworkNone Network = "none"
)

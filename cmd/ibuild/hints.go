package main

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/builder/sandbox"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
)

// checkFormatFlags refuses --format docker with --compression zstd (build,
// commit): the Docker image format has no zstd layer type, and the image
// would be one that skopeo, docker and registries refuse.
func checkFormatFlags(f builder.Format, c layers.Compression) error {
	if f == builder.FormatDocker && c == layers.Zstd {
		return cli.Exit("--format docker and --compression zstd cannot be combined: the Docker image format has no media type for zstd layers, so skopeo, docker and registries would refuse the image; use --format oci (the default) with zstd, or gzip with --format docker", 2)
	}
	return nil
}

// optionFlags are the flags that set the library options a
// registry.OptionError names.
var optionFlags = map[string]string{
	"ListCreateOptions.Amend":      "ibuild manifest create --amend",
	"ListAddOptions.All":           "ibuild manifest add --all",
	"ListAnnotateOptions.Index":    "ibuild manifest annotate --index",
	"ListEntryOptions.Annotations": "ibuild manifest annotate --annotation KEY=VALUE",
	"ListEntryOptions":             "ibuild manifest annotate --annotation, --os, --arch, --variant, --os-version, --os-features, --features",
	"ListPushOptions.All":          "ibuild manifest push --all",
}

// errorHint says, in the command's terms, how to get past err ("" when
// there is nothing to add): the library's errors name what happened and
// which option matters, the command names its commands and flags.
func errorHint(err error) string {
	var ae *registry.AuthError
	if errors.As(err, &ae) {
		if ae.Anonymous {
			return fmt.Sprintf("log in with 'ibuild login %s', or name an auth file holding credentials for it with --authfile", ae.Registry)
		}
		return fmt.Sprintf("the credentials were refused: 'ibuild login %s' replaces them, or --authfile names another auth file", ae.Registry)
	}
	var oe *registry.OptionError
	if errors.As(err, &oe) {
		if flags, ok := optionFlags[oe.Option]; ok {
			return "see " + flags
		}
	}
	var ms *builder.MissingSecretError
	var ee *builder.EntitlementError
	switch {
	case errors.As(err, &ee) && ee.Name == "network.host":
		return "allow it with --allow network.host, or leave --network=host out: RUN steps use the host's network already unless --network none is given"
	case errors.As(err, &ee):
		return "allow it with --allow " + ee.Name
	case errors.As(err, &ms) && ms.SSH:
		return fmt.Sprintf("give it with --ssh %s=SOCKET", ms.ID)
	case errors.As(err, &ms):
		return fmt.Sprintf("give it with --secret id=%s,src=FILE or --secret id=%s,env=VAR", ms.ID, ms.ID)
	case errors.Is(err, builder.ErrNativeSnapshots):
		return "use --storage-driver auto (as root)"
	case errors.Is(err, sandbox.ErrNeedsUserNamespace):
		return "ibuild enters a user namespace itself when user namespaces are enabled, newuidmap and newgidmap are installed and /etc/subuid and /etc/subgid give you a range; --isolation userns enters one even with a single id mapped; or run ibuild as root"
	}
	return ""
}

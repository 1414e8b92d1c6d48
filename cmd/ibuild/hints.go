package main

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/ibuild/ibuild/builder"
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
	return ""
}

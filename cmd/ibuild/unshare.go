package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/ibuild/ibuild/builder"
)

func unshareCommand() *cli.Command {
	return &cli.Command{
		Name:      "unshare",
		Usage:     "run a command (default: $SHELL) in ibuild's user and mount namespace, as buildah unshare; for ibuild mount as an ordinary user",
		ArgsUsage: "[CMD [ARGS...]]",
		Action: func(c *cli.Context) error {
			args := c.Args().Slice()
			if len(args) > 0 && args[0] == "--" {
				args = args[1:]
			}
			if len(args) == 0 {
				sh := os.Getenv("SHELL")
				if sh == "" {
					sh = "/bin/sh"
				}
				args = []string{sh}
			}
			// As an ordinary user this does not return: the process is
			// re-executed in the namespace (IBUILD_ROOT naming the store)
			// and exits with the re-executed one's status.
			if err := enterUserNamespace(c, builder.IsolationUserns); err != nil {
				return fmt.Errorf("unshare: %w", err)
			}
			root, err := storeRoot(c)
			if err != nil {
				return err
			}
			if err := os.Setenv("IBUILD_ROOT", root); err != nil {
				return err
			}
			if sd := c.String("storage-driver"); c.IsSet("storage-driver") {
				if err := os.Setenv("IBUILD_STORAGE_DRIVER", sd); err != nil {
					return err
				}
			}
			path, err := exec.LookPath(args[0])
			if err != nil {
				return cli.Exit(fmt.Sprintf("unshare: %v", err), 127)
			}
			return fmt.Errorf("unshare: %s: %w", args[0], syscall.Exec(path, args, os.Environ()))
		},
	}
}

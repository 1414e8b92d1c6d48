package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/registry"
)

func pullCommand() *cli.Command {
	return &cli.Command{
		Name:      "pull",
		Usage:     "pull an image from a registry into the local store and print its digest",
		ArgsUsage: "REF",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "platform", Usage: "platform to pull from an index: os/arch[/variant] (default: the host's)"},
			&cli.StringSliceFlag{Name: "insecure-registry", Usage: "reach this registry host[:port] over plain HTTP (repeatable; localhost and 127.0.0.1 always are)"},
			&cli.BoolFlag{Name: "tls-verify", Value: true, Usage: "verify registries' TLS certificates"},
			authfileFlag, certDirFlag, registryTimeoutFlag,
			&cli.StringFlag{Name: "policy", Value: string(registry.PullAlways), Usage: "always (re-resolve in the registry), missing or never"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the digest"},
			progressFlag,
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("pull needs one image reference (e.g. ibuild pull alpine:3)", 2)
			}
			platform, err := builder.ParsePlatform(c.String("platform"))
			if err != nil {
				return err
			}
			st, err := openStore(c)
			if err != nil {
				return err
			}
			defer st.Close()
			policy, err := registry.ParsePullPolicy(c.String("policy"))
			if err != nil {
				return fmt.Errorf("--policy: %w", err)
			}
			opts := registry.PullOptions{
				Platform: platform,
				Policy:   policy,
				Conn:     connOptions(c),
			}
			var done func()
			if opts.Progress, opts.Transfers, done, err = registryProgress(c); err != nil {
				return err
			}
			desc, err := registry.Pull(c.Context, st, c.Args().First(), opts)
			done()
			if err != nil {
				return err
			}
			fmt.Println(desc.Digest)
			return nil
		},
	}
}

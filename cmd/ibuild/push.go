package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/ibuild/ibuild/registry"
)

func pushCommand() *cli.Command {
	return &cli.Command{
		Name:      "push",
		Usage:     "push a stored image or index to a registry and print the pushed digest",
		ArgsUsage: "IMAGE [DEST]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "format", Usage: "push with oci or docker media types (default: as stored)"},
			&cli.StringFlag{Name: "digestfile", Usage: "write the pushed manifest digest to this file"},
			&cli.StringSliceFlag{Name: "insecure-registry", Usage: "reach this registry host[:port] over plain HTTP (repeatable; localhost and 127.0.0.1 always are)"},
			&cli.BoolFlag{Name: "tls-verify", Value: true, Usage: "verify registries' TLS certificates"},
			authfileFlag, certDirFlag, registryTimeoutFlag,
			&cli.IntFlag{Name: "jobs", Value: 3, Usage: "blobs uploaded at once"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the digest"},
			progressFlag,
		},
		Action: func(c *cli.Context) error {
			if c.NArg() < 1 || c.NArg() > 2 {
				return cli.Exit("push needs IMAGE and optionally DEST (e.g. ibuild push app:1 registry.example.com/app:1)", 2)
			}
			st, err := openStore(c)
			if err != nil {
				return err
			}
			defer st.Close()
			opts := registry.PushOptions{Format: c.String("format"), Conn: connOptions(c), Jobs: c.Int("jobs")}
			var done func()
			if opts.Progress, opts.Transfers, done, err = registryProgress(c); err != nil {
				return err
			}
			d, err := registry.Push(c.Context, st, c.Args().Get(0), c.Args().Get(1), opts)
			done()
			if err != nil {
				return err
			}
			if f := c.String("digestfile"); f != "" {
				if err := os.WriteFile(f, []byte(d.String()), 0o644); err != nil {
					return fmt.Errorf("--digestfile: %w", err)
				}
			}
			fmt.Println(d)
			return nil
		},
	}
}

// pushOptions reads the registry flags push-like commands share (manifest
// push): format and connection, with progress on stderr unless --quiet.
func pushOptions(c *cli.Context) registry.PushOptions {
	opts := registry.PushOptions{
		Format: c.String("format"),
		Conn:   connOptions(c),
	}
	if !c.Bool("quiet") {
		opts.Progress = func(msg string) { fmt.Fprintln(os.Stderr, msg) }
	}
	return opts
}

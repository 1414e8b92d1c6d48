package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/ibuild/ibuild/builder"
)

func emulatorsCommand() *cli.Command {
	return &cli.Command{
		Name:  "emulators",
		Usage: "list the binfmt_misc handlers (qemu-user emulators) RUN steps for other architectures use",
		Description: "RUN for a platform the host cannot execute needs an enabled handler with the F flag;\n" +
			"on Debian: apt-get install qemu-user-static binfmt-support && update-binfmts --enable qemu-aarch64",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "format", Value: "table", Usage: "table or json"},
		},
		Action: func(c *cli.Context) error {
			ems, err := builder.Emulators()
			if err != nil {
				return err
			}
			switch c.String("format") {
			case "json":
				if ems == nil {
					ems = []builder.Emulator{}
				}
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(ems)
			case "table", "":
				tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tARCH\tENABLED\tFLAGS\tINTERPRETER")
				for _, e := range ems {
					arch := e.Arch
					if arch == "" {
						arch = "-"
					}
					fmt.Fprintf(tw, "%s\t%s\t%t\t%s\t%s\n", e.Name, arch, e.Enabled, e.Flags, e.Interpreter)
				}
				return tw.Flush()
			}
			return fmt.Errorf("--format: want table or json, not %q", c.String("format"))
		},
	}
}

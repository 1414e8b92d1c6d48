package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/layers"
)

func tagCommand() *cli.Command {
	return &cli.Command{
		Name:      "tag",
		Usage:     "give an image another name",
		ArgsUsage: "SRC DST...",
		Action: func(c *cli.Context) error {
			if c.NArg() < 2 {
				return cli.Exit("tag needs a source image and at least one new name", 2)
			}
			st, err := openStore(c)
			if err != nil {
				return err
			}
			defer st.Close()
			desc, err := st.Lookup(c.Context, c.Args().First())
			if err != nil {
				return err
			}
			for _, dst := range c.Args().Slice()[1:] {
				n, err := layers.NormalizeName(dst)
				if err != nil {
					return fmt.Errorf("invalid name %q: %w", dst, err)
				}
				if err := st.Tag(c.Context, n, desc); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

func rmiCommand() *cli.Command {
	return &cli.Command{
		Name:      "rmi",
		Usage:     "remove image names, and the data only they used",
		ArgsUsage: "NAME...",
		Action: func(c *cli.Context) error {
			if c.NArg() < 1 {
				return cli.Exit("rmi needs at least one image name or ID", 2)
			}
			// Layers stored from inside a user namespace can only be
			// removed from inside it: enter it as build does.
			if err := enterUserNamespace(c, builder.IsolationAuto); err != nil {
				return err
			}
			st, err := openStore(c)
			if err != nil {
				return err
			}
			defer st.Close()
			for _, ref := range c.Args().Slice() {
				rep, err := st.Remove(c.Context, ref)
				if err != nil {
					return err
				}
				for _, n := range rep.Untagged {
					fmt.Println("Untagged:", n)
				}
				for _, d := range rep.Deleted {
					fmt.Println("Deleted:", d)
				}
			}
			return nil
		},
	}
}

func pruneCommand() *cli.Command {
	return &cli.Command{
		Name:  "prune",
		Usage: "remove blobs and snapshots no image (or build cache record) references",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "cache", Usage: "also remove build cache records (all, or those unused for --keep)"},
			&cli.DurationFlag{Name: "keep", Usage: "with --cache, keep records used within this duration (e.g. 168h)"},
		},
		Action: func(c *cli.Context) error {
			if err := enterUserNamespace(c, builder.IsolationAuto); err != nil {
				return err
			}
			st, err := openStore(c)
			if err != nil {
				return err
			}
			defer st.Close()
			if c.Bool("cache") {
				crep, err := st.PruneCache(c.Context, c.Duration("keep"))
				if err != nil {
					return err
				}
				fmt.Printf("removed %d build cache records\n", crep.Records)
			} else if c.IsSet("keep") {
				return cli.Exit("--keep needs --cache", 2)
			}
			rep, err := st.Prune(c.Context)
			if err != nil {
				return err
			}
			fmt.Printf("removed %d blobs and %d snapshots, %d bytes\n", rep.Blobs, rep.Snapshots, rep.Bytes)
			return nil
		},
	}
}

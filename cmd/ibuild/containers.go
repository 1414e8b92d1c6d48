package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/builder/printable"
	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
)

// The working container commands (buildah's from, run, copy, add, config,
// mount, umount, commit, rm, containers) are thin wrappers over
// builder.From and builder.OpenContainer. Those that touch storage enter
// the user namespace as build does when the caller is unprivileged.

func fromCommand() *cli.Command {
	return &cli.Command{
		Name:      "from",
		Usage:     "create a working container from an image (or scratch) and print its name",
		ArgsUsage: "IMAGE|scratch",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "name", Usage: "name of the container (default: the image's name + \"-working-container\", numbered when taken)"},
			&cli.StringFlag{Name: "pull", Value: "missing", Usage: "pull the image: always, missing (only when not stored) or never"},
			&cli.StringFlag{Name: "platform", Usage: "platform of the image: os/arch[/variant] (default: the host's)"},
			&cli.StringSliceFlag{Name: "insecure-registry", Usage: "reach this registry host[:port] over plain HTTP (repeatable; localhost and 127.0.0.1 always are)"},
			&cli.BoolFlag{Name: "tls-verify", Value: true, Usage: "verify the registry's TLS certificate"},
			authfileFlag, certDirFlag,
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("from needs one IMAGE (or scratch), e.g. ibuild from docker.io/library/alpine:3", 2)
			}
			if err := enterUserNamespace(c, builder.IsolationAuto); err != nil {
				return err
			}
			opts := builder.FromOptions{Name: c.String("name")}
			var err error
			if opts.Options.Pull, err = registry.ParsePullPolicy(c.String("pull")); err != nil {
				return fmt.Errorf("--pull: %w", err)
			}
			if p := c.String("platform"); p != "" {
				if opts.Platform, err = builder.ParsePlatform(p); err != nil {
					return fmt.Errorf("--platform: %w", err)
				}
			}
			opts.Options.Registry = connOptions(c)
			opts.Options.Progress = warningSink{}
			st, err := openStore(c)
			if err != nil {
				return err
			}
			defer st.Close()
			ctr, err := builder.From(c.Context, st, c.Args().First(), opts)
			if err != nil {
				return err
			}
			defer ctr.Close()
			fmt.Println(ctr.Name())
			return nil
		},
	}
}

func containersCommand() *cli.Command {
	return &cli.Command{
		Name:  "containers",
		Usage: "list working containers",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "format", Value: "table", Usage: "table or json"},
		},
		Action: func(c *cli.Context) error {
			format := c.String("format")
			if format != "table" && format != "json" {
				return fmt.Errorf("--format: want table or json, not %q", format)
			}
			st, err := openStore(c)
			if err != nil {
				return err
			}
			defer st.Close()
			list, err := builder.Containers(c.Context, st)
			if err != nil {
				return err
			}
			if format == "json" {
				if list == nil {
					list = []builder.ContainerState{}
				}
				return printJSON(list)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tID\tIMAGE\tCREATED")
			for _, s := range list {
				fmt.Fprintf(tw, "%s\t%.12s\t%s\t%s\n", s.Name, s.ID, s.Image, s.Created.Local().Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "run a command in a working container (as RUN does) and keep its changes as a layer",
		ArgsUsage: "NAME -- CMD [ARGS...]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "user", Usage: "run as this user[:group] (default: the image's USER)"},
			&cli.StringFlag{Name: "workingdir", Usage: "run in this directory (default: the image's WORKDIR)"},
			&cli.StringSliceFlag{Name: "env", Aliases: []string{"e"}, Usage: "set KEY=VALUE for this command only (repeatable)"},
			&cli.StringSliceFlag{Name: "mount", Usage: "a RUN --mount spec, e.g. type=cache,target=/root/.cache (repeatable)"},
			&cli.StringFlag{Name: "network", Usage: "network: host (the default) or none"},
			&cli.StringFlag{Name: "isolation", Value: "auto", Usage: "isolation: auto, chroot, userns or none (as for build; none is no isolation)"},
			&cli.StringSliceFlag{Name: "cap-add", Usage: "add a capability to the command's set, docker's default (repeatable)"},
			&cli.StringSliceFlag{Name: "cap-drop", Usage: "drop a capability from the command's set (repeatable)"},
			&cli.StringSliceFlag{Name: "secret", Usage: "offer a secret to --mount type=secret: id=ID,src=FILE or id=ID,env=VAR (repeatable)"},
			&cli.StringSliceFlag{Name: "ssh", Usage: "offer an SSH agent to --mount type=ssh: default or ID=SOCKET (repeatable)"},
		},
		Action: func(c *cli.Context) error {
			args := c.Args().Slice()
			if len(args) > 1 && args[1] == "--" {
				args = append(args[:1], args[2:]...)
			}
			if len(args) < 2 {
				return cli.Exit("run needs a container and a command, e.g. ibuild run NAME -- sh -c 'echo hi'", 2)
			}
			isolation, err := builder.ParseIsolation(c.String("isolation"))
			if err != nil {
				return fmt.Errorf("--isolation: %w", err)
			}
			if err := enterUserNamespace(c, isolation); err != nil {
				return err
			}
			o := builder.RunOptions{
				Args:       args[1:],
				User:       c.String("user"),
				WorkingDir: c.String("workingdir"),
				Env:        c.StringSlice("env"),
				Mounts:     c.StringSlice("mount"),
				Network:    builder.Network(c.String("network")),
				Output:     func(line string) { fmt.Println(line) },
			}
			for _, kv := range o.Env {
				if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
					return fmt.Errorf("--env %q: want KEY=VALUE", kv)
				}
			}
			o.Options.Isolation = isolation
			o.Options.CapAdd, o.Options.CapDrop = c.StringSlice("cap-add"), c.StringSlice("cap-drop")
			if o.Options.Secrets, err = parseSecrets(c.StringSlice("secret")); err != nil {
				return err
			}
			if o.Options.SSH, err = parseSSH(c.StringSlice("ssh")); err != nil {
				return err
			}
			o.Options.Progress = warningSink{}
			err = withContainer(c, args[0], func(ctr *builder.Container) error {
				return ctr.Run(c.Context, o)
			})
			if code, ok := builder.ExitCode(err); ok {
				return cli.Exit(err.Error(), code)
			}
			return err
		},
	}
}

func copyCommand(add bool) *cli.Command {
	name, usage := "copy", "copy files into a working container (as COPY does) as a new layer"
	flags := []cli.Flag{
		&cli.StringFlag{Name: "chown", Usage: "owner of the copied files: USER[:GROUP] (names from the container's /etc/passwd, or ids)"},
		&cli.StringFlag{Name: "chmod", Usage: "mode of the copied files, e.g. 0755"},
		&cli.StringFlag{Name: "from", Usage: "copy from this working container or image instead of the host"},
	}
	if add {
		name, usage = "add", "add files, archives (extracted) or URLs (downloaded) to a working container (as ADD does)"
		flags = append(flags, &cli.StringFlag{Name: "checksum", Usage: "verify a URL's content: sha256:HEX"})
	}
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "NAME SRC... DEST",
		Flags:     flags,
		Action: func(c *cli.Context) error {
			args := c.Args().Slice()
			if len(args) < 3 {
				return cli.Exit(fmt.Sprintf("%s needs a container, at least one source and a destination, e.g. ibuild %s NAME ./app /app/", name, name), 2)
			}
			if err := enterUserNamespace(c, builder.IsolationAuto); err != nil {
				return err
			}
			o := builder.CopyOptions{
				Sources: args[1 : len(args)-1],
				Dest:    args[len(args)-1],
				From:    c.String("from"),
				Chown:   c.String("chown"),
				Chmod:   c.String("chmod"),
				Add:     add,
				Options: builder.StepOptions{Progress: warningSink{}},
			}
			if add {
				o.Checksum = c.String("checksum")
			}
			return withContainer(c, args[0], func(ctr *builder.Container) error {
				return ctr.Copy(c.Context, o)
			})
		},
	}
}

func configCommand() *cli.Command {
	type one struct{ name, usage string }
	singles := []one{
		{"cmd", "CMD: a JSON array or a shell command"},
		{"entrypoint", "ENTRYPOINT: a JSON array or a shell command"},
		{"user", "USER: user[:group]"},
		{"workingdir", "WORKDIR (created when missing)"},
		{"stop-signal", "STOPSIGNAL, e.g. SIGTERM"},
		{"healthcheck", "HEALTHCHECK's arguments, e.g. \"--interval=5s CMD wget -q -O- http://localhost/\", or NONE"},
		{"shell", "SHELL: a JSON array, e.g. [\"/bin/bash\", \"-c\"]"},
		{"author", "the image's author (MAINTAINER)"},
		{"arch", "the image's architecture"},
		{"os", "the image's operating system"},
		{"variant", "the image's architecture variant"},
	}
	flags := []cli.Flag{
		&cli.StringSliceFlag{Name: "env", Aliases: []string{"e"}, Usage: "ENV KEY=VALUE (repeatable)"},
		&cli.StringSliceFlag{Name: "label", Aliases: []string{"l"}, Usage: "LABEL KEY=VALUE (repeatable)"},
		&cli.StringSliceFlag{Name: "annotation", Aliases: []string{"a"}, Usage: "manifest annotation KEY=VALUE (repeatable)"},
		&cli.StringSliceFlag{Name: "port", Aliases: []string{"p"}, Usage: "EXPOSE PORT[/PROTO] (repeatable)"},
		&cli.StringSliceFlag{Name: "volume", Aliases: []string{"v"}, Usage: "VOLUME PATH (repeatable)"},
		&cli.StringSliceFlag{Name: "onbuild", Usage: "ONBUILD INSTRUCTION (repeatable)"},
	}
	for _, s := range singles {
		flags = append(flags, &cli.StringFlag{Name: s.name, Usage: s.usage})
	}
	return &cli.Command{
		Name:      "config",
		Usage:     "change a working container's image config (each flag as its Dockerfile instruction)",
		ArgsUsage: "NAME",
		Flags:     flags,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("config needs one container, e.g. ibuild config --env A=1 NAME", 2)
			}
			o := builder.ConfigOptions{
				Env:     c.StringSlice("env"),
				Ports:   c.StringSlice("port"),
				Volumes: c.StringSlice("volume"),
				OnBuild: c.StringSlice("onbuild"),
				Options: builder.StepOptions{Progress: warningSink{}},
			}
			var err error
			if o.Labels, err = parseKeyValues(c.StringSlice("label"), false); err != nil {
				return fmt.Errorf("--label: %w", err)
			}
			if o.Annotations, err = parseKeyValues(c.StringSlice("annotation"), false); err != nil {
				return fmt.Errorf("--annotation: %w", err)
			}
			set := func(name string) *string {
				if !c.IsSet(name) {
					return nil
				}
				v := c.String(name)
				return &v
			}
			o.Cmd, o.Entrypoint, o.User, o.WorkingDir = set("cmd"), set("entrypoint"), set("user"), set("workingdir")
			o.StopSignal, o.Healthcheck, o.Shell, o.Author = set("stop-signal"), set("healthcheck"), set("shell"), set("author")
			o.Arch, o.OS, o.Variant = set("arch"), set("os"), set("variant")
			if err := enterUserNamespace(c, builder.IsolationAuto); err != nil {
				return err
			}
			return withContainer(c, c.Args().First(), func(ctr *builder.Container) error {
				return ctr.Config(c.Context, o)
			})
		},
	}
}

// needsUnshare refuses mount and umount for an unprivileged caller
// outside `ibuild unshare`: a mount made in a namespace of its own would
// vanish when the command exits.
func needsUnshare(verb string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%s needs root: as an ordinary user run it inside `ibuild unshare` (e.g. ibuild unshare sh -c 'p=$(ibuild mount NAME); ...; ibuild umount NAME')", verb)
	}
	return nil
}

func mountCommand() *cli.Command {
	return &cli.Command{
		Name:      "mount",
		Usage:     "mount a working container's root file system (nosuid,nodev) and print where; ibuild umount keeps the changes as a layer",
		ArgsUsage: "NAME",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "suid", Usage: "honour setuid and setgid bits under the mount (default: nosuid)"},
			&cli.BoolFlag{Name: "dev", Usage: "let device nodes under the mount be opened (default: nodev)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("mount needs one container", 2)
			}
			if err := needsUnshare("mount"); err != nil {
				return err
			}
			return withContainer(c, c.Args().First(), func(ctr *builder.Container) error {
				p, err := ctr.Mount(c.Context, builder.MountOptions{Suid: c.Bool("suid"), Dev: c.Bool("dev")})
				if err == nil {
					fmt.Println(p)
				}
				return err
			})
		},
	}
}

func umountCommand() *cli.Command {
	return &cli.Command{
		Name:      "umount",
		Aliases:   []string{"unmount"},
		Usage:     "unmount a working container and keep what was changed through the mount as a layer",
		ArgsUsage: "NAME",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("umount needs one container", 2)
			}
			if err := needsUnshare("umount"); err != nil {
				return err
			}
			return withContainer(c, c.Args().First(), func(ctr *builder.Container) error {
				return ctr.Unmount(c.Context)
			})
		},
	}
}

func commitCommand() *cli.Command {
	return &cli.Command{
		Name:      "commit",
		Usage:     "write a working container as an image into the store (and push it with --push); prints the image ID",
		ArgsUsage: "NAME IMAGE",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "squash", Usage: "make the layers the container added one layer"},
			&cli.BoolFlag{Name: "squash-all", Usage: "make the whole image one layer"},
			&cli.BoolFlag{Name: "rm", Usage: "remove the container after a successful commit (and push)"},
			&cli.StringFlag{Name: "format", Value: "oci", Usage: "manifest format: oci or docker"},
			&cli.StringFlag{Name: "compression", Value: "gzip", Usage: "compression of a squashed layer: gzip, zstd or none"},
			&cli.IntFlag{Name: "compression-level", Usage: "compression level (0: the compressor's default)"},
			&cli.BoolFlag{Name: "push", Usage: "push IMAGE to its registry after the commit"},
			&cli.StringFlag{Name: "digestfile", Usage: "with --push, write the pushed manifest digest to this file"},
			&cli.StringSliceFlag{Name: "insecure-registry", Usage: "reach this registry host[:port] over plain HTTP (repeatable; localhost and 127.0.0.1 always are)"},
			&cli.BoolFlag{Name: "tls-verify", Value: true, Usage: "verify the registry's TLS certificate (--push)"},
			authfileFlag, certDirFlag,
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the image ID"},
			&cli.GenericFlag{Name: "sbom", Value: &optionalValue{}, Usage: "attach an SBOM attestation: --sbom or --sbom=format=spdx|cyclonedx (the image is stored as an index holding it; see docs/attestations.md)"},
			&cli.StringFlag{Name: "source-date-epoch", Usage: "Unix time for the SBOM's creation time (default $SOURCE_DATE_EPOCH)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return cli.Exit("commit needs a container and an image name, e.g. ibuild commit NAME app:1", 2)
			}
			name, image := c.Args().Get(0), c.Args().Get(1)
			o := builder.CommitOptions{Squash: c.Bool("squash"), SquashAll: c.Bool("squash-all"), CompressionLevel: c.Int("compression-level")}
			var err error
			if o.Format, err = builder.ParseFormat(c.String("format")); err != nil {
				return fmt.Errorf("--format: %w", err)
			}
			if o.Compression, err = layers.ParseCompression(c.String("compression")); err != nil {
				return fmt.Errorf("--compression: %w", err)
			}
			if err := checkFormatFlags(o.Format, o.Compression); err != nil {
				return err
			}
			if err := commitSBOMFlags(c, &o); err != nil {
				return err
			}
			stored, err := layers.NormalizeName(image)
			if err != nil {
				return fmt.Errorf("commit %s: image name %s: %w", name, image, err)
			}
			if c.Bool("push") && registry.LocalOnly(stored) {
				return cli.Exit("--push needs an IMAGE with a registry (e.g. registry.example.com/app:1); localhost/... names stay local", 2)
			}
			if !c.Bool("push") && c.IsSet("digestfile") {
				return cli.Exit("--digestfile needs --push", 2)
			}
			if err := enterUserNamespace(c, builder.IsolationAuto); err != nil {
				return err
			}
			st, err := openStore(c)
			if err != nil {
				return err
			}
			defer st.Close()
			ctr, err := openContainer(c, st, name)
			if err != nil {
				return err
			}
			defer ctr.Close()
			img, _, err := ctr.Commit(c.Context, image, o)
			if err != nil {
				return fmt.Errorf("commit %s: %w", name, err)
			}
			id, err := img.ConfigName()
			if err != nil {
				return err
			}
			if c.Bool("push") {
				popts := registry.PushOptions{Format: string(o.Format), Conn: connOptions(c)}
				var done func()
				if popts.Progress, popts.Transfers, done, err = registryProgress(c); err != nil {
					return err
				}
				d, err := registry.Push(c.Context, st, image, "", popts)
				done()
				if err != nil {
					return fmt.Errorf("commit %s: committed %s as %s, but the push failed (retry with ibuild push %s): %w", name, id, image, image, err)
				}
				if !c.Bool("quiet") {
					fmt.Fprintf(os.Stderr, "pushed %s: %s\n", image, d)
				}
				if f := c.String("digestfile"); f != "" {
					if err := os.WriteFile(f, []byte(d.String()), 0o644); err != nil {
						return fmt.Errorf("--digestfile: %w", err)
					}
				}
			}
			if c.Bool("rm") {
				if err := ctr.Remove(c.Context); err != nil {
					return fmt.Errorf("commit %s: committed %s, but removing the container failed: %w", name, id, err)
				}
			}
			fmt.Println(id)
			return nil
		},
	}
}

func rmCommand() *cli.Command {
	return &cli.Command{
		Name:      "rm",
		Usage:     "remove working containers (their layers stay until prune)",
		ArgsUsage: "NAME...",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "all", Aliases: []string{"a"}, Usage: "remove every working container"},
		},
		Action: func(c *cli.Context) error {
			if c.Bool("all") == (c.NArg() > 0) {
				return cli.Exit("rm needs container names or --all, not both", 2)
			}
			if err := enterUserNamespace(c, builder.IsolationAuto); err != nil {
				return err
			}
			st, err := openStore(c)
			if err != nil {
				return err
			}
			defer st.Close()
			names := c.Args().Slice()
			if c.Bool("all") {
				list, err := builder.Containers(c.Context, st)
				if err != nil {
					return err
				}
				for _, s := range list {
					names = append(names, s.Name)
				}
			}
			var errs []error
			for _, n := range names {
				ctr, err := openContainer(c, st, n)
				if err == nil {
					err = ctr.Remove(c.Context)
					ctr.Close()
				}
				if err != nil {
					errs = append(errs, fmt.Errorf("rm %s: %w", n, err))
					continue
				}
				fmt.Println(n)
			}
			return errors.Join(errs...)
		},
	}
}

// openContainer opens a working container for changes; a missing one
// says how to list them.
func openContainer(c *cli.Context, st *layers.Store, name string) (*builder.Container, error) {
	ctr, err := builder.OpenContainer(c.Context, st, name)
	if errors.Is(err, builder.ErrNoContainer) {
		return nil, fmt.Errorf("%w (list them with ibuild containers)", err)
	}
	return ctr, err
}

// withContainer opens the store and the container name, calls f and
// closes both; f's errors are prefixed with the container's name.
func withContainer(c *cli.Context, name string, f func(*builder.Container) error) error {
	st, err := openStore(c)
	if err != nil {
		return err
	}
	defer st.Close()
	ctr, err := openContainer(c, st, name)
	if err != nil {
		return err
	}
	defer ctr.Close()
	if err := f(ctr); err != nil {
		return fmt.Errorf("%s %s: %w", c.Command.Name, name, err)
	}
	return nil
}

// warningSink prints the warnings of a working container operation to
// stderr and drops its other events.
type warningSink struct{}

func (warningSink) Emit(e progress.Event) {
	if e.Kind == progress.Warning {
		fmt.Fprintln(os.Stderr, "ibuild: warning:", printable.Escape(e.Message))
	}
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

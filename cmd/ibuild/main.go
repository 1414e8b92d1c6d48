// Command ibuild builds OCI images from Dockerfiles without a daemon, as an
// ordinary user. It is a thin layer over the builder, layers and registry
// packages: each subcommand parses flags and calls the library.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"

	"github.com/urfave/cli/v2"
	"go.podman.io/storage/pkg/reexec"

	"github.com/ibuild/ibuild/builder/printable"
	"github.com/ibuild/ibuild/layers"
)

// version is set at link time by the Makefile.
var version = "dev"

func main() {
	if reexec.Init() {
		return
	}
	tuneGC()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx := stopOnSignals(context.Background(), sigs, os.Stderr, os.Exit)
	routeLogrus(os.Stderr)
	cli.VersionPrinter = func(c *cli.Context) { printVersion(c.App.Writer) }
	app := newApp()
	err := app.RunContext(ctx, interspersed(app, os.Args))
	var stopped *interrupted
	if err != nil && errors.As(context.Cause(ctx), &stopped) {
		// The command failed because the signal stopped it; say so
		// rather than "context canceled".
		if !errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "ibuild:", printable.Escape(err.Error()))
		}
		fmt.Fprintln(os.Stderr, "ibuild:", stopped)
		os.Exit(stopped.exitCode())
	}
	if err != nil {
		// Errors quote Dockerfile text, file names and references:
		// control characters in them are shown escaped. An ExitCoder
		// with no message (a command's own exit status) prints nothing.
		if msg := err.Error(); msg != "" {
			fmt.Fprintln(os.Stderr, "ibuild:", printable.Escape(msg))
		}
		if hint := errorHint(err); hint != "" {
			fmt.Fprintln(os.Stderr, "ibuild: hint:", printable.Escape(hint))
		}
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(1)
	}
}

func newApp() *cli.App {
	app := &cli.App{
		Name:                 "ibuild",
		Usage:                "build OCI images from Dockerfiles, daemonless and rootless",
		Version:              version,
		EnableBashCompletion: true,
		HideHelpCommand:      true,
		// --output and --label values hold commas of their own.
		DisableSliceFlagSeparator: true,
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "root",
				Usage:   "storage root (default /var/lib/ibuild for root, else $XDG_DATA_HOME/ibuild or ~/.local/share/ibuild)",
				EnvVars: []string{"IBUILD_ROOT"},
			},
			&cli.StringFlag{
				Name:    "storage-driver",
				Usage:   "how layers are unpacked: auto (overlay or vfs as root, native otherwise), overlay, vfs or native",
				Value:   layers.SnapshotterAuto,
				EnvVars: []string{"IBUILD_STORAGE_DRIVER"},
			},
		},
		Commands: []*cli.Command{
			buildCommand(),
			imagesCommand(),
			inspectCommand(),
			pullCommand(),
			pushCommand(),
			manifestCommand(),
			loginCommand(),
			logoutCommand(),
			tagCommand(),
			rmiCommand(),
			pruneCommand(),
			emulatorsCommand(),
			fromCommand(),
			containersCommand(),
			runCommand(),
			copyCommand(false),
			copyCommand(true),
			configCommand(),
			mountCommand(),
			umountCommand(),
			commitCommand(),
			rmCommand(),
			unshareCommand(),
			versionCommand(),
		},
		// Errors, cli.Exit ones included, return to main, which prints
		// them once, after the commands' deferred clean-up ran.
		ExitErrHandler: func(*cli.Context, error) {},
	}
	withUsageErrors(app)
	return app
}

// defaultRoot is the storage root when neither --root nor IBUILD_ROOT is set.
func defaultRoot() (string, error) {
	if os.Geteuid() == 0 {
		return "/var/lib/ibuild", nil
	}
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "ibuild"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("cannot find a storage root: set --root or IBUILD_ROOT (%w)", err)
	}
	return filepath.Join(home, ".local", "share", "ibuild"), nil
}

// storeRoot is the storage root the global flags name.
func storeRoot(c *cli.Context) (string, error) {
	if root := c.String("root"); root != "" {
		return root, nil
	}
	return defaultRoot()
}

// openStore opens the store named by the global flags. The caller closes
// it.
func openStore(c *cli.Context) (*layers.Store, error) {
	root, err := storeRoot(c)
	if err != nil {
		return nil, err
	}
	return layers.OpenStore(c.Context, root, layers.WithSnapshotter(c.String("storage-driver")),
		layers.WithWarnings(func(msg string) { fmt.Fprintln(os.Stderr, "ibuild: warning:", msg) }))
}

// tuneGC trades memory for time in a short-lived process: a fully cached
// build allocates mostly short-lived key material, and collecting it four
// times less often saves about a seventh of its time. The soft limit of
// 64 MiB makes the collector run as often as needed to keep the heap
// under it once a big build gets there, so a whole build and push stays
// under 100 MB of RSS (see docs/performance.md); small builds never reach
// it and keep GOGC 400's speed. GOGC and GOMEMLIMIT in the environment
// win.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(64 << 20)
	}
}

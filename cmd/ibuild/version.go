package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/urfave/cli/v2"
)

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print ibuild's version and those of Go, containers/storage and the Dockerfile parser it was built with",
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return cli.Exit("version takes no arguments", 2)
			}
			printVersion(c.App.Writer)
			return nil
		},
	}
}

// versionModules are the dependencies whose versions `ibuild version`
// prints: they decide what a store and a Dockerfile mean.
var versionModules = []struct{ path, label string }{
	{"go.podman.io/storage", "containers/storage"},
	{"github.com/moby/buildkit", "buildkit (Dockerfile parser)"},
	{"github.com/google/go-containerregistry", "go-containerregistry"},
}

// printVersion writes ibuild's version, the Go version, the platform and
// the versions of versionModules, from the build information in the
// binary.
func printVersion(w io.Writer) {
	bi, ok := debug.ReadBuildInfo()
	v := version
	if v == "dev" && ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	fmt.Fprintf(w, "ibuild version %s\n", v)
	goVersion := runtime.Version()
	if ok && bi.GoVersion != "" {
		goVersion = bi.GoVersion
	}
	fmt.Fprintf(w, "  %-30s %s\n", "Go:", goVersion)
	fmt.Fprintf(w, "  %-30s %s/%s\n", "platform:", runtime.GOOS, runtime.GOARCH)
	for _, m := range versionModules {
		fmt.Fprintf(w, "  %-30s %s\n", m.label+":", moduleVersion(bi, ok, m.path))
	}
}

// moduleVersion is the version of module path in bi, following a
// replace directive; "unknown" without build information.
func moduleVersion(bi *debug.BuildInfo, ok bool, path string) string {
	if !ok {
		return "unknown"
	}
	for _, d := range bi.Deps {
		if d.Path != path {
			continue
		}
		if d.Replace != nil {
			return d.Replace.Version + " (replaces " + d.Version + ")"
		}
		return d.Version
	}
	return "not linked"
}

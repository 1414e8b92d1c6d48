package main

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/moby/buildkit/util/suggest"
	"github.com/urfave/cli/v2"
)

// Command-line shape, as docker and buildah users expect it:
//
//   - flags may follow arguments (`ibuild build ./app -t app:1`): the Go
//     flag package urfave/cli uses stops at the first argument, so the
//     arguments are reordered, flags first, before parsing. Commands whose
//     arguments end in a command of their own (run, unshare) keep
//     stopping at the first argument, as docker run and buildah run do;
//     `--` ends the flags everywhere.
//   - a usage error (unknown flag, bad value, unknown command) is one
//     message, one usage line and where to find help, not the whole help.

// trailingCommand names the commands whose arguments after the first end
// in a command line of its own: flags after the first argument are that
// command's.
var trailingCommand = map[string]bool{"run": true, "unshare": true}

// interspersed returns args (os.Args) with the flags of the command they
// name moved before its arguments, so flags may come after them. Global
// flags stay before the command name. Nothing after "--" moves, and a
// command line whose flags already come first is returned unchanged.
func interspersed(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	out := []string{args[0]}
	rest := args[1:]
	// Global flags, up to the command name.
	i := 0
	for i < len(rest) && isFlag(rest[i]) {
		i += flagWidth(app.Flags, rest, i)
	}
	if i >= len(rest) || rest[i] == "--" {
		return args
	}
	out = append(out, rest[:i+1]...)
	cmd := app.Command(rest[i])
	if cmd == nil {
		return args
	}
	return append(out, reorder(cmd, rest[i+1:])...)
}

// reorder puts cmd's flags in args before its arguments (or, for a
// command with subcommands, finds the subcommand and reorders for it).
func reorder(cmd *cli.Command, args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); {
		a := args[i]
		if a == "--" {
			if len(pos) == 0 {
				return append(flags, args[i:]...)
			}
			return append(append(flags, pos...), args[i:]...)
		}
		if !isFlag(a) {
			if len(pos) == 0 && len(cmd.Subcommands) > 0 {
				if sub := cmd.Command(a); sub != nil {
					return append(append(flags, a), reorder(sub, args[i+1:])...)
				}
			}
			if trailingCommand[cmd.Name] {
				return append(append(flags, pos...), args[i:]...)
			}
			pos = append(pos, a)
			i++
			continue
		}
		n := flagWidth(cmd.Flags, args, i)
		flags = append(flags, args[i:i+n]...)
		i += n
	}
	return append(flags, pos...)
}

// isFlag reports whether a command-line word is a flag ("-" alone is an
// argument: standard input).
func isFlag(a string) bool { return len(a) > 1 && a[0] == '-' && a != "--" }

// flagWidth is how many words the flag at args[i] spans: 2 for a flag
// that takes a value given as the next word, else 1 (a boolean flag, a
// flag=value word, an unknown flag).
func flagWidth(flags []cli.Flag, args []string, i int) int {
	name := strings.TrimLeft(args[i], "-")
	if strings.Contains(name, "=") || i+1 >= len(args) {
		return 1
	}
	for _, f := range flags {
		for _, n := range f.Names() {
			if n != name {
				continue
			}
			if v, ok := f.(cli.DocGenerationFlag); ok && v.TakesValue() {
				return 2
			}
			return 1
		}
	}
	return 1
}

// usageError is a command-line mistake: it prints as the problem, the
// command's usage line and how to get help, and exits with status 2.
type usageError struct {
	msg   string
	usage string
	help  string
}

func (e *usageError) Error() string {
	return fmt.Sprintf("%s\nUsage: %s\nRun '%s' for the options.", e.msg, e.usage, e.help)
}

// ExitCode implements cli.ExitCoder.
func (e *usageError) ExitCode() int { return 2 }

// withUsageErrors makes every command of app (and app itself) report
// usage errors as a usageError instead of printing its whole help.
func withUsageErrors(app *cli.App) {
	app.OnUsageError = func(c *cli.Context, err error, _ bool) error {
		return newUsageError(err, app.Flags, "ibuild [global options] COMMAND [options] [ARGS...]", "ibuild --help")
	}
	var set func(path string, cmds []*cli.Command)
	set = func(path string, cmds []*cli.Command) {
		for _, cmd := range cmds {
			name := path + " " + cmd.Name
			usage := name + " [options]"
			if cmd.ArgsUsage != "" {
				usage += " " + cmd.ArgsUsage
			}
			flags := cmd.Flags
			cmd.OnUsageError = func(c *cli.Context, err error, _ bool) error {
				return newUsageError(err, flags, usage, name+" --help")
			}
			set(name, cmd.Subcommands)
		}
	}
	set("ibuild", app.Commands)
	app.Action = func(c *cli.Context) error {
		name := c.Args().First()
		if name == "help" { // ibuild help [COMMAND]
			if c.NArg() == 1 {
				return cli.ShowAppHelp(c)
			}
			if name = c.Args().Get(1); app.Command(name) != nil {
				return cli.ShowCommandHelp(c, name)
			}
		}
		if !c.Args().Present() {
			return cli.ShowAppHelp(c)
		}
		var names []string
		for _, cmd := range app.Commands {
			names = append(names, cmd.Names()...)
		}
		msg := fmt.Sprintf("unknown command %q", name)
		if s, ok := suggest.Search(name, names, true); ok {
			msg += fmt.Sprintf(" (did you mean %s?)", s)
		}
		return &usageError{msg: msg, usage: "ibuild [global options] COMMAND [options] [ARGS...]", help: "ibuild --help"}
	}
}

// newUsageError turns a flag parsing error into a usageError naming the
// flag as it is written on the command line, with the closest known flag.
func newUsageError(err error, flags []cli.Flag, usage, help string) error {
	msg := err.Error()
	const undefined = "flag provided but not defined: -"
	if name, ok := strings.CutPrefix(msg, undefined); ok {
		msg = "unknown flag " + dashed(name)
		var names []string
		for _, f := range flags {
			names = append(names, f.Names()...)
		}
		names = append(names, "help")
		if s, ok := suggest.Search(name, names, true); ok {
			msg += " (did you mean " + dashed(s) + "?)"
		}
	} else {
		// "invalid value "x" for flag -jobs", "flag needs an argument: -t"
		msg = goFlagName.ReplaceAllStringFunc(msg, func(m string) string { return " -" + m[1:] })
	}
	return &usageError{msg: msg, usage: usage, help: help}
}

// goFlagName is a long flag name as the Go flag package writes it in its
// errors, with one dash (" -jobs").
var goFlagName = regexp.MustCompile(` -[a-zA-Z][a-zA-Z0-9-]+`)

// dashed writes a flag name as typed: -t, --tag.
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

var _ cli.ExitCoder = (*usageError)(nil)

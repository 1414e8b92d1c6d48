package dockerfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/command"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/util/suggest"

	"github.com/ibuild/ibuild/builder/printable"
)

// Dockerfile is a parsed Dockerfile.
type Dockerfile struct {
	// Path names the Dockerfile in errors.
	Path string
	// Stages in file order. Stage names are lower case.
	Stages []instructions.Stage
	// MetaArgs are the ARG instructions before the first FROM.
	MetaArgs []instructions.ArgCommand
	// EscapeToken is the escape character (the escape directive).
	EscapeToken rune
	// Syntax is the value of the syntax directive, if any (informational:
	// ibuild always uses its built-in front end).
	Syntax string
	// Warnings are non-fatal findings (deprecated or suspicious syntax),
	// each already prefixed with path:line.
	Warnings []string
	// lines holds the source lines, for error messages.
	lines []string
	// mountExtras are the buildah options of RUN --mount flags (see
	// RunMountExtras).
	mountExtras map[*instructions.RunCommand][]MountExtras
}

// Parse parses the Dockerfile content data. path is only used in messages.
func Parse(path string, data []byte) (*Dockerfile, error) {
	return ParseContext(context.Background(), path, data)
}

// ParseContext is Parse that stops soon after ctx is done, with ctx's
// error.
func ParseContext(ctx context.Context, path string, data []byte) (*Dockerfile, error) {
	if len(data) > MaxFileSize {
		return nil, &Error{Path: path, Err: &LimitError{What: "the Dockerfile", Size: int64(len(data)), Limit: MaxFileSize, Hint: fileHint}}
	}
	df := &Dockerfile{Path: path, lines: strings.Split(string(data), "\n")}
	if err := df.checkLines(); err != nil {
		return nil, err
	}
	if err := df.checkHeredocNesting(); err != nil {
		return nil, err
	}
	res, err := parser.Parse(ctxReader{ctx, bytes.NewReader(data)})
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return nil, cerr
		}
		return nil, df.wrap(err, nil)
	}
	df.EscapeToken = res.EscapeToken
	if syntax, _, _, ok := parser.DetectSyntax(data); ok {
		df.Syntax = syntax
	}
	for _, w := range res.Warnings {
		line := 0
		if w.Location != nil {
			line = w.Location.Start.Line
		}
		df.Warnings = append(df.Warnings, fmt.Sprintf("%s:%d: %s", path, line, w.Short))
	}
	lint := linter.New(&linter.Config{Warn: func(rule, desc, url, msg string, loc []parser.Range) {
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		df.Warnings = append(df.Warnings, fmt.Sprintf("%s:%d: %s: %s", path, line, rule, msg))
	}})
	if len(res.AST.Children) == 0 {
		return nil, &Error{Path: path, Err: errors.New("the Dockerfile has no instructions")}
	}
	for _, n := range res.AST.Children {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		extras, err := takeBuildahMountOptions(n)
		if err != nil {
			return nil, df.wrap(err, n)
		}
		cmd, err := instructions.ParseInstructionWithLinter(n, lint)
		if err != nil {
			return nil, df.wrap(err, n)
		}
		if rc, ok := cmd.(*instructions.RunCommand); ok && extras != nil {
			if df.mountExtras == nil {
				df.mountExtras = map[*instructions.RunCommand][]MountExtras{}
			}
			df.mountExtras[rc] = extras
		}
		if len(df.Stages) == 0 {
			if a, ok := cmd.(*instructions.ArgCommand); ok {
				df.MetaArgs = append(df.MetaArgs, *a)
				continue
			}
		}
		switch c := cmd.(type) {
		case *instructions.Stage:
			df.Stages = append(df.Stages, *c)
		case instructions.Command:
			if len(df.Stages) == 0 {
				return nil, df.wrap(errors.New("no build stage: the first instruction must be FROM (only ARG may come before it)"), n)
			}
			st := &df.Stages[len(df.Stages)-1]
			st.AddCommand(c)
		default:
			return nil, df.wrap(fmt.Errorf("%T is not an instruction", cmd), n)
		}
	}
	if len(df.Stages) == 0 {
		return nil, &Error{Path: path, Err: errors.New("no FROM instruction: a Dockerfile needs at least one stage")}
	}
	seen := map[string]int{}
	for i, st := range df.Stages {
		if st.Name == "" {
			continue
		}
		if j, dup := seen[st.Name]; dup {
			return nil, df.ErrorAt(st.Location, fmt.Errorf("duplicate stage name %q (also used by stage %d)", st.Name, j))
		}
		seen[st.Name] = i
	}
	df.lintSecretNames()
	return df, nil
}

// ctxReader fails with ctx's error once ctx is done: the parser reads its
// input as it goes, so a parse stops at its next read.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// wrap turns a parser error into an Error carrying path, line and text.
func (df *Dockerfile) wrap(err error, n *parser.Node) error {
	var le *parser.LocationError
	var loc []parser.Range
	if errors.As(err, &le) && len(le.Locations) > 0 {
		loc = le.Locations[0]
	} else if n != nil {
		loc = n.Location()
	}
	inner := err
	if le != nil {
		inner = le.Unwrap()
	}
	var ui *instructions.UnknownInstructionError
	if errors.As(err, &ui) {
		name := df.instructionName(loc, ui.Instruction)
		inner = fmt.Errorf("unknown instruction: %s", name)
		if printable.Escape(name) != name {
			inner = fmt.Errorf("%w (it holds control characters or bytes that are not UTF-8: save the Dockerfile as UTF-8 text)", inner)
		} else if s := closestInstruction(name); s != "" {
			inner = fmt.Errorf("%w (did you mean %s?)", inner, s)
		}
	}
	return df.ErrorAt(loc, inner)
}

// closestInstruction is the instruction name a misspelt one (COPPY)
// most likely meant (COPY), as BuildKit suggests it, or "".
func closestInstruction(name string) string {
	names := make([]string, 0, len(command.Commands))
	for n := range command.Commands {
		names = append(names, strings.ToUpper(n))
	}
	sort.Strings(names) // ties go to the first in order, every time
	s, _ := suggest.Search(strings.ToUpper(name), names, true)
	return s
}

// instructionName is the instruction word at loc as written, upper-cased
// (ASCII letters only: the parser's lower-casing turns bytes that are not
// UTF-8 into U+FFFD, hiding them), or parsed if the line is not known.
func (df *Dockerfile) instructionName(loc []parser.Range, parsed string) string {
	word := parsed
	if len(loc) > 0 && loc[0].Start.Line >= 1 && loc[0].Start.Line <= len(df.lines) {
		if f := strings.Fields(df.lines[loc[0].Start.Line-1]); len(f) > 0 {
			word = f[0]
		}
	}
	b := []byte(word)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// ErrorAt wraps err with the position loc (as given by an instruction's
// Location) and the source text of that position.
func (df *Dockerfile) ErrorAt(loc []parser.Range, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) && e.Line > 0 {
		return err
	}
	line := 0
	if len(loc) > 0 {
		line = loc[0].Start.Line
	}
	return &Error{Path: df.Path, Line: line, Text: df.Line(line), Err: err}
}

// Line returns the trimmed source text of line n (1-based), or "".
func (df *Dockerfile) Line(n int) string {
	if n < 1 || n > len(df.lines) {
		return ""
	}
	t := strings.TrimSpace(df.lines[n-1])
	if len(t) > 120 {
		t = t[:117] + "..."
	}
	return t
}

// Error is an error located in a Dockerfile. Its text reads
// "Dockerfile:12: COPY app.jar /app/: no such file", with control
// characters shown escaped (see package printable): the text comes from
// the Dockerfile.
type Error struct {
	Path string
	Line int
	Text string
	Err  error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Path)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Text != "" {
		b.WriteString(": ")
		b.WriteString(e.Text)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return printable.Escape(b.String())
}

func (e *Error) Unwrap() error { return e.Err }

package dockerfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"
)

// Limits of the front end. They stop broken or hostile input (a Dockerfile
// that is /dev/zero, an ARG that doubles on every line) with an error
// before it takes the machine's memory. docs/build.md ("Limits") lists
// them; each is far above what a real Dockerfile needs.
const (
	// MaxFileSize bounds a Dockerfile and an ignore file (.dockerignore):
	// 16 MiB, the limit of docker build (BuildKit's front end reads these
	// files in one message of at most 16 MiB).
	MaxFileSize = 16 << 20
	// MaxLineSize bounds one physical line of a Dockerfile, without its
	// newline: 65535 bytes, the most BuildKit's parser reads as one line.
	// Continuation lines (ending in the escape token) join shorter lines.
	MaxLineSize = bufio.MaxScanTokenSize - 1
)

// LimitError is input over one of the front end's limits.
type LimitError struct {
	// What is over the limit, e.g. "the Dockerfile", "the expanded word".
	What string
	// Size is the size found and Limit the limit, in bytes. AtLeast means
	// reading or expanding stopped past the limit, so Size is a lower
	// bound.
	Size, Limit int64
	AtLeast     bool
	// Unit names what Size and Limit count, when not bytes.
	Unit string
	// Hint says what to do.
	Hint string
}

func (e *LimitError) Error() string {
	if e.Unit != "" {
		return fmt.Sprintf("%s is more than %d %s, over the limit: %s", e.What, e.Limit, e.Unit, e.Hint)
	}
	var size string
	switch {
	case e.AtLeast:
		size = "more than " + limitBytes(e.Limit)
	case e.Size < 1<<10:
		size = fmt.Sprintf("%d bytes", e.Size)
	default:
		size = fmt.Sprintf("%s (%d bytes)", humanBytes(e.Size), e.Size)
	}
	msg := fmt.Sprintf("%s is %s, over the limit of %s", e.What, size, limitBytes(e.Limit))
	if e.Hint != "" {
		msg += ": " + e.Hint
	}
	return msg
}

// humanBytes formats n in binary units, to one decimal.
func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

// limitBytes formats a limit exactly: "16 MiB", or "65535 bytes".
func limitBytes(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// fileHint is what to do about an oversized Dockerfile or ignore file.
const fileHint = "check that it is the right file; no real Dockerfile or .dockerignore is this large"

// ReadFile reads a Dockerfile or ignore file at path. It refuses anything
// but a regular file (a device such as /dev/zero, a FIFO, a directory)
// without reading from it, and files over MaxFileSize; the read itself
// stops at the limit, so a file that grows while it is read cannot make it
// take more. Errors wrap fs.ErrNotExist when the file does not exist.
func ReadFile(path string) ([]byte, error) {
	// O_NONBLOCK: opening a FIFO must not wait for a writer; it is
	// refused below. Regular files ignore the flag.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is %s, %w", path, fileKind(fi.Mode()), ErrNotRegular)
	}
	if fi.Size() > MaxFileSize {
		return nil, &LimitError{What: path, Size: fi.Size(), Limit: MaxFileSize, Hint: fileHint}
	}
	return ReadLimited(f, path)
}

// ErrNotRegular is the error ReadFile wraps for a path that is not a
// regular file.
var ErrNotRegular = errors.New("not a regular file")

// ReadLimited reads a Dockerfile or ignore file from r (standard input,
// for -f -), at most MaxFileSize bytes; name names it in the error when r
// holds more.
func ReadLimited(r io.Reader, name string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxFileSize {
		return nil, &LimitError{What: name, Size: int64(len(data)), Limit: MaxFileSize, AtLeast: true, Hint: fileHint}
	}
	return data, nil
}

// fileKind names the type of a file that is not regular.
func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	}
	return "an irregular file"
}

// checkLines refuses lines over MaxLineSize, naming the line, before the
// parser sees them (it would blame the line before).
func (df *Dockerfile) checkLines() error {
	for n, l := range df.lines {
		if len(l) > MaxLineSize {
			return &Error{Path: df.Path, Line: n + 1, Text: df.Line(n + 1), Err: &LimitError{What: "the line", Size: int64(len(l)), Limit: MaxLineSize,
				Hint: "the parser reads at most this much as one line; split it into shorter lines, each ending in the escape character (\\ unless an escape directive says otherwise)"}}
		}
	}
	return nil
}

// checkHeredocNesting refuses an instruction that could hold a heredoc
// (its text has "<<") in which ${...} and quotes nest deeper than
// MaxNesting. The parser runs the shell lexer over such an instruction to
// find its heredocs, and the lexer recurses once per level: a million
// levels (a few MB of continuation lines) overflow the goroutine stack, a
// fatal error no recover catches.
//
// Instructions are found as the parser finds them, erring towards longer
// ones: lines ending in either escape character continue, comment and
// empty lines in between are skipped. Scanning more text than the parser
// lexes can only find deeper nesting, never shallower.
func (df *Dockerfile) checkHeredocNesting() error {
	for start := 0; start < len(df.lines); {
		end := start
		for end < len(df.lines) {
			l := strings.TrimRight(df.lines[end], " \t\r")
			end++
			if t := strings.TrimLeft(l, " \t"); t == "" || t[0] == '#' {
				if end-1 == start {
					break
				}
				continue
			}
			if !strings.HasSuffix(l, "\\") && !strings.HasSuffix(l, "`") {
				break
			}
		}
		if err := df.checkInstructionNesting(start, end); err != nil {
			return err
		}
		start = end
	}
	return nil
}

// checkInstructionNesting checks the instruction on lines [start, end).
func (df *Dockerfile) checkInstructionNesting(start, end int) error {
	levels, heredoc := 0, false
	for _, l := range df.lines[start:end] {
		levels += strings.Count(l, "${") + strings.Count(l, `"`)
		heredoc = heredoc || strings.Contains(l, "<<")
	}
	if !heredoc || levels <= MaxNesting {
		return nil
	}
	var joined strings.Builder
	for _, l := range df.lines[start:end] {
		l = strings.TrimRight(l, " \t\r")
		if t := strings.TrimLeft(l, " \t"); t == "" || t[0] == '#' {
			continue
		}
		joined.WriteString(strings.TrimSuffix(strings.TrimSuffix(l, "\\"), "`"))
	}
	if scanWord(joined.String(), '\\').depth > MaxNesting {
		return &Error{Path: df.Path, Line: start + 1, Text: df.Line(start + 1),
			Err: fmt.Errorf("${...} and quotes nest more than %d deep in this instruction, over the limit: finding its heredocs would recurse that deep; simplify it", MaxNesting)}
	}
	return nil
}

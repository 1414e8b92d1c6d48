// Package progress carries build progress events from the builder to a
// renderer: plain lines for logs and CI, a compact redrawn view for
// terminals, and JSON lines for other tools. The builder only emits Events;
// how they look is decided here. The plain and terminal renderers print
// text from the Dockerfile (instructions, stage names, warnings) with
// control characters escaped (package printable); JSON escapes them
// itself.
package progress

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ibuild/ibuild/builder/printable"
)

// Kind is the kind of an event.
type Kind string

// Event kinds.
const (
	StepStart Kind = "step-start"
	StepDone  Kind = "step-done"
	StepError Kind = "step-error"
	Log       Kind = "log"
	Warning   Kind = "warning"
	BuildDone Kind = "build-done"
	// Transfer is a layer moving from or to a registry (Action "pull" or
	// "push" of Ref): Digest, Bytes moved so far of LayerSize, Duration
	// since it started. TransferDone is its last event, once it arrived.
	Transfer     Kind = "transfer"
	TransferDone Kind = "transfer-done"
)

// Event is one thing that happened during a build.
type Event struct {
	Kind     Kind      `json:"kind"`
	Time     time.Time `json:"time"`
	Platform string    `json:"platform,omitempty"`
	Stage    string    `json:"stage,omitempty"`
	// Step is 1-based within the stage; Steps is the stage's step count.
	Step        int    `json:"step,omitempty"`
	Steps       int    `json:"steps,omitempty"`
	Instruction string `json:"instruction,omitempty"`
	// Location is "path:line" of the instruction.
	Location string `json:"location,omitempty"`
	Cached   bool   `json:"cached,omitempty"`
	// MissReason says why a cacheable step was not a cache hit.
	MissReason string        `json:"miss_reason,omitempty"`
	Duration   time.Duration `json:"duration_ns,omitempty"`
	LayerSize  int64         `json:"layer_size,omitempty"`
	Digest     string        `json:"digest,omitempty"`
	Message    string        `json:"message,omitempty"`
	Error      string        `json:"error,omitempty"`
	// Action ("pull", "push"), Ref and Bytes describe a Transfer.
	Action string `json:"action,omitempty"`
	Ref    string `json:"ref,omitempty"`
	Bytes  int64  `json:"bytes,omitempty"`
}

// Sink receives events. Implementations must be safe for concurrent use:
// stages build concurrently.
type Sink interface {
	Emit(Event)
}

// Discard drops every event.
type Discard struct{}

// Emit implements Sink.
func (Discard) Emit(Event) {}

// Func adapts a function to a Sink.
type Func func(Event)

// Emit implements Sink.
func (f Func) Emit(e Event) { f(e) }

// New returns the renderer for mode (auto, plain, tty, json) writing to w.
// auto picks tty when w is a terminal, else plain.
func New(mode string, w io.Writer) (Sink, error) {
	switch mode {
	case "", "auto":
		if isTerminal(w) {
			return NewTTY(w), nil
		}
		return NewPlain(w), nil
	case "plain":
		return NewPlain(w), nil
	case "tty":
		return NewTTY(w), nil
	case "json":
		return NewJSON(w), nil
	}
	return nil, fmt.Errorf("unknown progress mode %q (want auto, plain, tty or json)", mode)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// Plain writes one line per event, suitable for CI logs.
type Plain struct {
	mu sync.Mutex
	w  io.Writer
}

// NewPlain returns a plain renderer.
func NewPlain(w io.Writer) *Plain { return &Plain{w: w} }

// Emit implements Sink.
func (p *Plain) Emit(e Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	prefix := stepPrefix(e)
	switch e.Kind {
	case StepStart:
		fmt.Fprintf(p.w, "%s %s\n", prefix, printable.Escape(e.Instruction))
	case StepDone:
		var extra []string
		if e.Cached {
			extra = append(extra, "CACHED")
		}
		if e.LayerSize > 0 {
			extra = append(extra, "layer "+HumanSize(e.LayerSize))
		}
		extra = append(extra, fmt.Sprintf("%.2fs", e.Duration.Seconds()))
		fmt.Fprintf(p.w, "%s done (%s)\n", prefix, strings.Join(extra, ", "))
	case StepError:
		fmt.Fprintf(p.w, "%s failed after %.2fs\n", prefix, e.Duration.Seconds())
	case Log:
		if prefix == "[]" { // not a step's: a pull's or push's
			fmt.Fprintf(p.w, "%s\n", printable.Escape(strings.TrimRight(e.Message, "\n")))
			return
		}
		// A step's own output is shown as it is (colours included), as
		// docker build's plain progress does.
		for _, line := range strings.Split(strings.TrimRight(e.Message, "\n"), "\n") {
			fmt.Fprintf(p.w, "%s | %s\n", prefix, line)
		}
	case TransferDone:
		fmt.Fprintf(p.w, "%s %s\n", transferPrefix(e), transferSummary(e, true))
	case Warning:
		fmt.Fprintf(p.w, "WARNING: %s\n", printable.Escape(e.Message))
	case BuildDone:
		fmt.Fprintf(p.w, "%s\n", printable.Escape(e.Message))
	}
}

// stepPrefix is "[platform stage step/steps]", escaped for printing (stage
// names come from the Dockerfile).
func stepPrefix(e Event) string {
	var b strings.Builder
	b.WriteString("[")
	if e.Platform != "" {
		b.WriteString(e.Platform + " ")
	}
	if e.Stage != "" {
		b.WriteString(e.Stage + " ")
	}
	if e.Steps > 0 {
		fmt.Fprintf(&b, "%d/%d", e.Step, e.Steps)
	}
	b.WriteString("]")
	return printable.Escape(b.String())
}

// transferPrefix is "[pull REF]", escaped for printing.
func transferPrefix(e Event) string {
	return printable.Escape("[" + e.Action + " " + e.Ref + "]")
}

// ShortDigest is the first 12 hex digits of a digest ("sha256:HEX"), as
// docker shows image and layer IDs.
func ShortDigest(d string) string {
	if _, hex, ok := strings.Cut(d, ":"); ok {
		d = hex
	}
	return d[:min(12, len(d))]
}

// transferSummary is "layer 1a2b3c4d5e6f: 2.1 MB in 0.31s (6.8 MB/s)" for
// a finished transfer (without " in 0.31s" when !withTime), or its
// progress so far: "layer 1a2b3c4d5e6f: 1.0 MB of 2.1 MB, 3.3 MB/s".
func transferSummary(e Event, withTime bool) string {
	name := "layer " + printable.Escape(ShortDigest(e.Digest))
	rate := Rate(e.Bytes, e.Duration)
	switch {
	case e.Kind == TransferDone && withTime:
		return fmt.Sprintf("%s: %s in %.2fs (%s)", name, HumanSize(e.Bytes), e.Duration.Seconds(), rate)
	case e.Kind == TransferDone:
		return fmt.Sprintf("%s: %s, %s", name, HumanSize(e.Bytes), rate)
	case e.LayerSize > 0:
		return fmt.Sprintf("%s: %s of %s, %s", name, HumanSize(e.Bytes), HumanSize(e.LayerSize), rate)
	}
	return fmt.Sprintf("%s: %s, %s", name, HumanSize(e.Bytes), rate)
}

// Rate is n bytes over d as "6.8 MB/s".
func Rate(n int64, d time.Duration) string {
	if d <= 0 {
		return "- B/s"
	}
	return HumanSize(int64(float64(n)/d.Seconds())) + "/s"
}

// JSON writes one JSON object per event and line.
type JSON struct {
	mu  sync.Mutex
	enc *json.Encoder
}

// NewJSON returns a JSON-lines renderer.
func NewJSON(w io.Writer) *JSON { return &JSON{enc: json.NewEncoder(w)} }

// Emit implements Sink.
func (j *JSON) Emit(e Event) {
	j.mu.Lock()
	defer j.mu.Unlock()
	_ = j.enc.Encode(e)
}

// HumanSize formats n bytes as B, kB, MB or GB.
func HumanSize(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTPE"[exp])
}

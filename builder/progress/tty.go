package progress

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/ibuild/ibuild/builder/printable"
)

// TTY redraws a compact view: one line per running or finished step, the
// last few log lines of running steps, updated in place, with the clocks of
// running steps ticking. Close stops the ticking.
type TTY struct {
	mu      sync.Mutex
	w       io.Writer
	lines   []*ttyLine
	byKey   map[string]*ttyLine
	drawn   int
	logTail map[string][]string
	stop    chan struct{}
	ticking bool
	closed  bool
}

// tick is how often running steps' clocks are redrawn.
const tick = 200 * time.Millisecond

type ttyLine struct {
	key   string
	text  string
	start time.Time
	state string // running, done, cached, error
	dur   time.Duration
	size  int64
}

// NewTTY returns a terminal renderer.
func NewTTY(w io.Writer) *TTY {
	return &TTY{w: w, byKey: map[string]*ttyLine{}, logTail: map[string][]string{}, stop: make(chan struct{})}
}

// Close stops the ticking clock; the view stays as last drawn.
func (t *TTY) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closed {
		t.closed = true
		close(t.stop)
	}
	return nil
}

// startTicking redraws while the TTY is open; t.mu is held by the caller.
func (t *TTY) startTicking() {
	if t.ticking || t.closed {
		return
	}
	t.ticking = true
	go func() {
		tk := time.NewTicker(tick)
		defer tk.Stop()
		for {
			select {
			case <-t.stop:
				return
			case <-tk.C:
				t.mu.Lock()
				if t.running() {
					t.redraw()
				}
				t.mu.Unlock()
			}
		}
	}()
}

func (t *TTY) running() bool {
	for _, l := range t.lines {
		if l.state == "running" {
			return true
		}
	}
	return false
}

// Emit implements Sink.
func (t *TTY) Emit(e Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	key := stepPrefix(e)
	switch e.Kind {
	case StepStart:
		l := &ttyLine{key: key, text: printable.Escape(e.Instruction), start: time.Now(), state: "running"}
		t.lines = append(t.lines, l)
		t.byKey[key] = l
		t.startTicking()
	case StepDone, StepError:
		if t.byKey[key] == nil {
			l := &ttyLine{key: key, text: printable.Escape(e.Instruction), start: e.Time}
			t.lines = append(t.lines, l)
			t.byKey[key] = l
		}
		if l := t.byKey[key]; l != nil {
			l.state = "done"
			if e.Cached {
				l.state = "cached"
			}
			if e.Kind == StepError {
				l.state = "error"
			}
			l.dur, l.size = e.Duration, e.LayerSize
			delete(t.logTail, key)
		}
	case Transfer, TransferDone:
		id := transferPrefix(e) + " " + e.Digest
		l := t.byKey[id]
		if l == nil {
			l = &ttyLine{key: transferPrefix(e), start: time.Now().Add(-e.Duration), state: "running"}
			t.lines = append(t.lines, l)
			t.byKey[id] = l
			t.startTicking()
		}
		l.text = transferSummary(e, false)
		if e.Kind == TransferDone {
			l.state, l.dur = "done", e.Duration
		}
	case Log:
		if key == "[]" { // not a step's: a pull's or push's
			t.clear()
			fmt.Fprintf(t.w, "%s\n", printable.Escape(strings.TrimRight(e.Message, "\n")))
			t.drawn = 0
			break
		}
		tail := t.logTail[key]
		for _, line := range strings.Split(strings.TrimRight(e.Message, "\n"), "\n") {
			tail = append(tail, tailLine(line))
		}
		if len(tail) > 5 {
			tail = tail[len(tail)-5:]
		}
		t.logTail[key] = tail
	case Warning:
		t.clear()
		fmt.Fprintf(t.w, "WARNING: %s\n", printable.Escape(e.Message))
		t.drawn = 0
	case BuildDone:
		t.redraw()
		fmt.Fprintf(t.w, "%s\n", printable.Escape(e.Message))
		t.lines, t.byKey, t.drawn = nil, map[string]*ttyLine{}, 0
		if !t.closed {
			t.closed = true
			close(t.stop)
		}
		return
	}
	t.redraw()
}

func (t *TTY) clear() {
	if t.drawn > 0 {
		fmt.Fprintf(t.w, "\x1b[%dA\x1b[J", t.drawn)
	}
}

func (t *TTY) redraw() {
	t.clear()
	var b strings.Builder
	n := 0
	for _, l := range t.lines {
		mark := map[string]string{"running": "=>", "done": "OK", "cached": "CACHED", "error": "ERROR"}[l.state]
		dur := l.dur
		if l.state == "running" {
			dur = time.Since(l.start)
		}
		size := ""
		if l.size > 0 {
			size = " " + HumanSize(l.size)
		}
		fmt.Fprintf(&b, "%s %-6s %s%s %.1fs\n", l.key, mark, truncate(l.text, 70), size, dur.Seconds())
		n++
		for _, tl := range t.logTail[l.key] {
			fmt.Fprintf(&b, "    | %s\n", truncate(tl, 100))
			n++
		}
	}
	io.WriteString(t.w, b.String())
	t.drawn = n
}

// tailLine is a line of a step's output as the view shows it: what a
// terminal would leave of it after its carriage returns (progress bars
// redraw themselves so), with control characters escaped, since the view
// redraws its lines in place and counts them.
func tailLine(s string) string {
	if i := strings.LastIndexByte(strings.TrimRight(s, "\r"), '\r'); i >= 0 {
		s = s[i+1:]
	}
	return printable.Escape(strings.TrimRight(s, "\r"))
}

func truncate(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

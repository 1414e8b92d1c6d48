package progress

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"
)

func events() []Event {
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	return []Event{
		{Kind: StepStart, Time: t0, Stage: "build", Step: 2, Steps: 3, Instruction: "COPY a /b", Location: "Dockerfile:4"},
		{Kind: Log, Time: t0, Stage: "build", Step: 2, Steps: 3, Message: "line one\nline two\n"},
		{Kind: StepDone, Time: t0, Stage: "build", Step: 2, Steps: 3, Instruction: "COPY a /b", Duration: 1500 * time.Millisecond, LayerSize: 2048},
		{Kind: StepDone, Time: t0, Stage: "build", Step: 3, Steps: 3, Instruction: "ENV A=1", Cached: true},
		{Kind: Warning, Time: t0, Message: "one or more build args were not consumed: X"},
		{Kind: BuildDone, Time: t0, Message: "built sha256:abc"},
	}
}

func TestPlain(t *testing.T) {
	var b bytes.Buffer
	p := NewPlain(&b)
	for _, e := range events() {
		p.Emit(e)
	}
	want := []string{
		"[build 2/3] COPY a /b",
		"[build 2/3] | line one",
		"[build 2/3] | line two",
		"[build 2/3] done (layer 2.0 kB, 1.50s)",
		"[build 3/3] done (CACHED, 0.00s)",
		"WARNING: one or more build args were not consumed: X",
		"built sha256:abc",
	}
	if got := strings.Split(strings.TrimSpace(b.String()), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got:\n%s\nwant:\n%s", b.String(), strings.Join(want, "\n"))
	}
}

func TestJSONOneEventPerLine(t *testing.T) {
	var b bytes.Buffer
	j := NewJSON(&b)
	for _, e := range events() {
		j.Emit(e)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != len(events()) {
		t.Fatalf("%d lines for %d events", len(lines), len(events()))
	}
	var e Event
	if err := json.Unmarshal([]byte(lines[2]), &e); err != nil {
		t.Fatal(err)
	}
	if e.Kind != StepDone || e.LayerSize != 2048 || e.Stage != "build" || e.Duration != 1500*time.Millisecond {
		t.Fatalf("decoded %+v", e)
	}
}

func TestTTYRedrawsInPlace(t *testing.T) {
	var b bytes.Buffer
	tty := NewTTY(&b)
	for _, e := range events() {
		tty.Emit(e)
	}
	out := b.String()
	if !strings.Contains(out, "\x1b[") {
		t.Fatal("tty output never moves the cursor")
	}
	if !strings.Contains(out, "CACHED") || !strings.Contains(out, "2.0 kB") || !strings.HasSuffix(out, "built sha256:abc\n") {
		t.Fatalf("tty output:\n%q", out)
	}
}

func TestNewModes(t *testing.T) {
	for _, m := range []string{"", "auto", "plain", "tty", "json"} {
		if _, err := New(m, &bytes.Buffer{}); err != nil {
			t.Errorf("%s: %v", m, err)
		}
	}
	if _, err := New("fancy", &bytes.Buffer{}); err == nil {
		t.Error("want an error for an unknown mode")
	}
	if s, _ := New("auto", &bytes.Buffer{}); func() bool { _, ok := s.(*Plain); return !ok }() {
		t.Error("auto on a non-terminal should be plain")
	}
	if HumanSize(999) != "999 B" || HumanSize(1500000) != "1.5 MB" {
		t.Errorf("HumanSize: %s %s", HumanSize(999), HumanSize(1500000))
	}
}

func TestTTYClockTicksWhileStepsRun(t *testing.T) {
	var mu sync.Mutex
	var b bytes.Buffer
	w := writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return b.Write(p)
	})
	tty := NewTTY(w)
	tty.Emit(Event{Kind: StepStart, Stage: "s", Step: 1, Steps: 1, Instruction: "RUN sleep"})
	time.Sleep(3*tick + tick/2)
	tty.Close()
	mu.Lock()
	redraws := strings.Count(b.String(), "RUN sleep")
	mu.Unlock()
	if redraws < 3 {
		t.Fatalf("a running step was drawn %d times in 3.5 ticks", redraws)
	}
	tty.Close() // idempotent
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestRenderersEscapeDockerfileText checks text from the Dockerfile
// (instructions, stage names, warnings quoting it) cannot drive the
// terminal: plain and tty output show control characters escaped, JSON
// output carries them JSON-escaped, with the text intact once decoded.
func TestRenderersEscapeDockerfileText(t *testing.T) {
	const instr = "LABEL a=\x1b]0;owned\x07\x1b[2J\rFAKE"
	const stage = "st\x1b[31m"
	evs := []Event{
		{Kind: StepStart, Stage: stage, Step: 1, Steps: 1, Instruction: instr},
		{Kind: Log, Stage: stage, Step: 1, Steps: 1, Message: "10%\r50%\r100%\n\x1b[1Aup\n"},
		{Kind: StepDone, Stage: stage, Step: 1, Steps: 1, Instruction: instr},
		{Kind: Warning, Message: "Dockerfile:1: bad \x1b[8mhidden\x1b[0m"},
	}
	raw := []string{"\x1b]0;owned", "\x1b[2J", "\x1b[31m", "\x1b[8m", "\rFAKE"}
	for _, tc := range []struct {
		name string
		sink func(*bytes.Buffer) Sink
		want []string
	}{
		{"plain", func(b *bytes.Buffer) Sink { return NewPlain(b) }, []string{
			`[st\x1b[31m 1/1] LABEL a=\x1b]0;owned\x07\x1b[2J\x0dFAKE`,
			`WARNING: Dockerfile:1: bad \x1b[8mhidden\x1b[0m`,
		}},
		{"tty", func(b *bytes.Buffer) Sink { return NewTTY(b) }, []string{
			`[st\x1b[31m 1/1] =>     LABEL a=\x1b]0;owned\x07\x1b[2J\x0dFAKE`,
			"    | 100%\n",
			`    | \x1b[1Aup`,
			`WARNING: Dockerfile:1: bad \x1b[8mhidden\x1b[0m`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			s := tc.sink(&b)
			for _, e := range evs {
				s.Emit(e)
			}
			if c, ok := s.(interface{ Close() error }); ok {
				c.Close()
			}
			out := b.String()
			for _, r := range raw {
				if strings.Contains(out, r) {
					t.Errorf("output holds the raw sequence %q:\n%q", r, out)
				}
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%q", w, out)
				}
			}
		})
	}
	t.Run("json", func(t *testing.T) {
		var b bytes.Buffer
		j := NewJSON(&b)
		for _, e := range evs {
			j.Emit(e)
		}
		if bytes.ContainsAny(b.Bytes(), "\x1b\r\x07") {
			t.Fatalf("JSON output holds raw control characters:\n%q", b.String())
		}
		var e Event
		if err := json.Unmarshal([]byte(strings.Split(b.String(), "\n")[0]), &e); err != nil || e.Instruction != instr || e.Stage != stage {
			t.Fatalf("decoded %+v, %v: want the text intact", e, err)
		}
	})
}

// TestTransfers: a layer moving from or to a registry is named by its
// short digest under its reference in plain mode (one line, when done),
// and shows its bytes and rate while it moves in tty mode.
func TestTransfers(t *testing.T) {
	const dg = "sha256:1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d1a2b"
	evs := []Event{
		{Kind: Log, Message: "resolving reg.io/app:1"},
		{Kind: Transfer, Action: "pull", Ref: "reg.io/app:1", Digest: dg, LayerSize: 4_000_000, Bytes: 1_000_000, Duration: 500 * time.Millisecond},
		{Kind: TransferDone, Action: "pull", Ref: "reg.io/app:1", Digest: dg, LayerSize: 4_000_000, Bytes: 4_000_000, Duration: time.Second},
	}
	var plain bytes.Buffer
	p := NewPlain(&plain)
	for _, e := range evs {
		p.Emit(e)
	}
	want := "resolving reg.io/app:1\n[pull reg.io/app:1] layer 1a2b3c4d5e6f: 4.0 MB in 1.00s (4.0 MB/s)\n"
	if plain.String() != want {
		t.Errorf("plain:\n%q\nwant\n%q", plain.String(), want)
	}
	var tty bytes.Buffer
	tt := NewTTY(&tty)
	for _, e := range evs {
		tt.Emit(e)
	}
	tt.Close()
	for _, w := range []string{"resolving reg.io/app:1\n", "[pull reg.io/app:1] =>     layer 1a2b3c4d5e6f: 1.0 MB of 4.0 MB, 2.0 MB/s", "[pull reg.io/app:1] OK     layer 1a2b3c4d5e6f: 4.0 MB, 4.0 MB/s"} {
		if !strings.Contains(tty.String(), w) {
			t.Errorf("tty output lacks %q:\n%q", w, tty.String())
		}
	}
	if strings.Contains(plain.String()+tty.String(), "[]") {
		t.Errorf("an empty [] prefix:\n%s\n%s", plain.String(), tty.String())
	}
}

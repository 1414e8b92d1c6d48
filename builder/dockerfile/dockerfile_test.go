package dockerfile

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

func TestParseErrorsNamePathAndLine(t *testing.T) {
	tests := []struct {
		name     string
		src      string
		wantLine string
		wantText string
	}{
		{"unknown instruction", "FROM scratch\nFOO bar\n", "Dockerfile:2", "unknown instruction: FOO"},
		{"misspelt instruction", "FROM scratch\nCOPPY a /a\n", "Dockerfile:2", "COPPY a /a: unknown instruction: COPPY (did you mean COPY?)"},
		{"misspelt lower case", "FROM scratch\nworkdri /a\n", "Dockerfile:2", "unknown instruction: WORKDRI (did you mean WORKDIR?)"},
		{"bad flag", "FROM scratch\nCOPY --nope=1 a /b\n", "Dockerfile:2", "--nope"},
		{"missing dest", "FROM scratch\nCOPY a\n", "Dockerfile:2", "COPY requires at least two arguments"},
		{"no FROM first", "LABEL a=b\nFROM scratch\n", "Dockerfile:1", "LABEL a=b"},
		{"empty", "# just a comment\n", "Dockerfile", "no instructions"},
		{"duplicate stage", "FROM scratch AS a\nFROM scratch AS a\n", "Dockerfile:2", "duplicate stage name"},
		{"bad healthcheck", "FROM scratch\nHEALTHCHECK --interval=abc CMD true\n", "Dockerfile:2", "HEALTHCHECK --interval=abc CMD true"},
		{"onbuild onbuild", "FROM scratch\nONBUILD ONBUILD RUN x\n", "Dockerfile:2", "ONBUILD"},
		{"bad escape", "# escape=x\nFROM scratch\n", "Dockerfile", "escape"},
		{"continuation line reported", "FROM scratch\nLABEL a=b \\\n  c\n", "Dockerfile:2", "LABEL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("Dockerfile", []byte(tc.src))
			if err == nil {
				t.Fatal("want an error")
			}
			var de *Error
			if !errors.As(err, &de) {
				t.Fatalf("error %T is not a *dockerfile.Error: %v", err, err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, tc.wantLine) {
				t.Errorf("error %q does not start with %q", msg, tc.wantLine)
			}
			if !strings.Contains(msg, tc.wantText) {
				t.Errorf("error %q does not mention %q", msg, tc.wantText)
			}
		})
	}
}

func TestParseStagesAndMetaArgs(t *testing.T) {
	src := "# syntax=docker/dockerfile:1\n" +
		"ARG BASE=scratch\n" +
		"ARG V\n" +
		"FROM ${BASE} AS Build\n" +
		"COPY a /a\n" +
		"FROM build\n" +
		"RUN <<EOF\necho hi\nEOF\n" +
		"COPY <<EOT /greeting\nhello $V\nEOT\n"
	df, err := Parse("Dockerfile", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if df.Syntax != "docker/dockerfile:1" {
		t.Errorf("syntax %q", df.Syntax)
	}
	if len(df.MetaArgs) != 2 || len(df.Stages) != 2 {
		t.Fatalf("got %d meta args, %d stages", len(df.MetaArgs), len(df.Stages))
	}
	if df.Stages[0].Name != "build" {
		t.Errorf("stage names are lower-cased: got %q", df.Stages[0].Name)
	}
	if len(df.Stages[1].Commands) != 2 {
		t.Fatalf("stage 1 has %d commands", len(df.Stages[1].Commands))
	}
	if len(df.Warnings) == 0 {
		t.Error("want a lint warning for the upper-case stage name")
	}
}

func TestEscapeDirective(t *testing.T) {
	df, err := Parse("Dockerfile", []byte("# escape=`\nFROM scratch\nLABEL a=b `\n  c=d\n"))
	if err != nil {
		t.Fatal(err)
	}
	if df.EscapeToken != '`' {
		t.Fatalf("escape token %q", df.EscapeToken)
	}
}

func TestExpander(t *testing.T) {
	env := NewVars([]string{"A=1", "EMPTY=", "PATHV=/usr/bin"})
	tests := []struct{ in, want string }{
		{"$A", "1"},
		{"${A}x", "1x"},
		{"${UNSET:-dflt}", "dflt"},
		{"${EMPTY:-dflt}", "dflt"},
		{"${A:-dflt}", "1"},
		{"${A:+alt}", "alt"},
		{"${UNSET:+alt}", ""},
		{`'$A'`, "$A"},
		{`"$A"`, "1"},
		{`\$A`, "$A"},
		{"${PATHV}:/bin", "/usr/bin:/bin"},
	}
	e := NewExpander('\\')
	for _, tc := range tests {
		got, err := e.Word(tc.in, env)
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if got != tc.want {
			t.Errorf("expand %q = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestVarsOverlayAndOrder(t *testing.T) {
	a := NewVars([]string{"X=1", "Y=2"})
	b := NewVars([]string{"Y=3", "Z=4"})
	o := a.Overlay(b)
	if got := strings.Join(o.Environ(), " "); got != "X=1 Y=3 Z=4" {
		t.Fatalf("overlay = %q", got)
	}
	if got := strings.Join(a.Environ(), " "); got != "X=1 Y=2" {
		t.Fatalf("overlay changed its base: %q", got)
	}
	o.Delete("X")
	if _, ok := o.Get("X"); ok || o.Len() != 2 {
		t.Fatal("delete failed")
	}
}

// TestParseFixtures parses every Dockerfile the builder's tests use, so the
// front end and the fixtures stay in step. Fixtures named bad-parse-* must
// fail to parse; all others must parse.
func TestParseFixtures(t *testing.T) {
	files, err := filepath.Glob("../../testdata/dockerfiles/*/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no fixtures found")
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		_, err = Parse(f, data)
		bad := strings.Contains(f, "/bad-parse-")
		if bad && err == nil {
			t.Errorf("%s: want a parse error", f)
		}
		if !bad && err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestBuildahMountOptions(t *testing.T) {
	tests := []struct {
		name    string
		run     string
		want    []MountExtras // nil: none recorded
		source  []string      // the mounts' sources as BuildKit parsed them
		wantErr string
	}{
		{name: "none", run: "RUN --mount=type=cache,target=/c true", source: []string{""}},
		{name: "z and U on a bind", run: "RUN --mount=type=bind,source=src,target=/b,z,U true",
			want: []MountExtras{{Relabel: "shared", RelabelOption: "z", Chown: true}}, source: []string{"src"}},
		{name: "per mount", run: "RUN --mount=type=cache,target=/c --mount=type=bind,target=/b,relabel=private,Z true",
			want: []MountExtras{{}, {Relabel: "private", RelabelOption: "relabel=private"}}, source: []string{"", ""}},
		{name: "quoted fields kept", run: `RUN --mount=type=bind,\"source=a,b\",target=/b,U true`,
			want: []MountExtras{{Chown: true}}, source: []string{"a,b"}},
		{name: "a quoted z is not the option", run: `RUN --mount=type=bind,target=/b,\"z\" true`,
			wantErr: "invalid field 'z'"},
		{name: "lower-case u is not buildah's", run: "RUN --mount=type=bind,target=/b,u true", wantErr: "invalid field 'u'"},
		{name: "bad relabel", run: "RUN --mount=type=bind,target=/b,relabel=yes true", wantErr: "relabel=yes: want relabel=shared or relabel=private"},
		{name: "conflicting relabel", run: "RUN --mount=type=bind,target=/b,z,Z true", wantErr: "options z and Z ask for different relabeling"},
		{name: "value on U", run: "RUN --mount=type=bind,target=/b,U=1 true", wantErr: "option U takes no value"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			df, err := Parse("Dockerfile", []byte("FROM scratch\n"+tc.run+"\n"))
			var run *instructions.RunCommand
			if err == nil {
				run = df.Stages[0].Commands[0].(*instructions.RunCommand)
				// BuildKit parses the mounts when the words are expanded.
				err = run.Expand(func(w string) (string, error) { return w, nil })
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := df.RunMountExtras(run); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("extras %+v, want %+v", got, tc.want)
			}
			ms := instructions.GetMounts(run)
			if len(ms) != len(tc.source) {
				t.Fatalf("%d mounts, want %d", len(ms), len(tc.source))
			}
			for i, m := range ms {
				if m.Source != tc.source[i] {
					t.Errorf("mount %d: source %q, want %q", i, m.Source, tc.source[i])
				}
			}
			// The instruction's text keeps what was written.
			if !strings.Contains(run.String(), strings.TrimPrefix(tc.run, "RUN ")) {
				t.Errorf("text %q lost options of %q", run.String(), tc.run)
			}
		})
	}
}

// TestParseContextStopsWhenCancelled parses a long Dockerfile with a
// cancelled context: the parse stops with the context's error instead of
// reading every line.
func TestParseContextStopsWhenCancelled(t *testing.T) {
	var b strings.Builder
	b.WriteString("FROM scratch\n")
	for range 100000 {
		b.WriteString("LABEL a=b\n")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ParseContext(ctx, "Dockerfile", []byte(b.String())); !errors.Is(err, context.Canceled) {
		t.Fatalf("ParseContext with a cancelled context: %v", err)
	}
	if _, err := ParseContext(context.Background(), "Dockerfile", []byte(b.String())); err != nil {
		t.Fatal(err)
	}
}

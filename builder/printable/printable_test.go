package printable

import "testing"

func TestEscape(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"plain text unchanged", "FROM scratch AS build", "FROM scratch AS build"},
		{"tab and newline kept", "a\tb\nc", "a\tb\nc"},
		{"UTF-8 text kept", "LABEL name=\"café ☕ \ufffd\"", "LABEL name=\"café ☕ \ufffd\""},
		{"NUL before an instruction", "\x00FROM", `\x00FROM`},
		{"ANSI colour and title sequences", "\x1b[31mred\x1b]0;title\a", `\x1b[31mred\x1b]0;title\x07`},
		{"carriage return", "ok\rFAKE", `ok\x0dFAKE`},
		{"DEL", "a\x7fb", `a\x7fb`},
		{"C1 CSI", "a\u009b2Jb", `a\u009b2Jb`},
		{"bidi override", "x\u202eevil\u2066", `x\u202eevil\u2066`},
		{"invalid UTF-8 byte", "a\xffb\xc3", `a\xffb\xc3`},
		{"UTF-16 byte order mark", "\xff\xfeF\x00R\x00", `\xff\xfeF\x00R\x00`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Escape(tc.in)
			if got != tc.want {
				t.Errorf("Escape(%q) = %q, want %q", tc.in, got, tc.want)
			}
			if again := Escape(got); again != got {
				t.Errorf("Escape is not idempotent: %q then %q", got, again)
			}
		})
	}
}

func FuzzEscape(f *testing.F) {
	for _, s := range []string{"FROM scratch", "\x1b[2J", "\xff\xfe", "a\u202eb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := Escape(s)
		for _, r := range out {
			if mustEscape(r) {
				t.Fatalf("Escape(%q) = %q still holds %U", s, out, r)
			}
		}
		if !clean(out) {
			t.Fatalf("Escape(%q) = %q is not clean", s, out)
		}
		if Escape(out) != out {
			t.Fatalf("Escape is not idempotent on %q", s)
		}
	})
}

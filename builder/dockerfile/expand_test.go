package dockerfile

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// allocated runs f and returns the bytes it allocated.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestExpansionStopsDoubling is the ARG bomb of the security audit:
// A<i>=${A<i-1>}${A<i-1>}. From 1 KiB, the 11th doubling would give 2 MiB
// to one word; it must fail there, having allocated a few MiB, not go on.
func TestExpansionStopsDoubling(t *testing.T) {
	for _, form := range []string{"${A%d}${A%d}", "$A%d$A%d", `"${A%d}""$A%d"`} {
		t.Run(form, func(t *testing.T) {
			e := NewExpander('\\')
			env := NewVars([]string{"A0=" + strings.Repeat("x", 1024)})
			failedAt := 0
			var err error
			alloc := allocated(func() {
				for i := 1; i <= 16; i++ {
					var v string
					v, err = e.Word(fmt.Sprintf(form, i-1, i-1), env)
					if err != nil {
						failedAt = i
						return
					}
					env.Set(fmt.Sprintf("A%d", i), v)
				}
			})
			if failedAt != 11 {
				t.Fatalf("doubling failed at step %d (%v), want 11 (the first over 1 MiB)", failedAt, err)
			}
			var le *LimitError
			if !errors.As(err, &le) || le.Limit != MaxWordSize {
				t.Fatalf("error %v is not the word limit", err)
			}
			for _, want := range []string{"one word", "over the limit of 1 MiB", "doubles itself"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			// The values made hold 2 MiB (each copied a few times while
			// it is built); sixteen doublings would make 64 MiB.
			if alloc > 32<<20 {
				t.Errorf("the doubling allocated %d MiB before failing", alloc>>20)
			}
		})
	}
}

// TestExpansionStopsSubstitutionBombs covers the forms where the result
// outgrows the sum of the values used: ${v//p/r} puts r at every match.
// Each would make 16 MiB or more; each must fail having allocated little.
func TestExpansionStopsSubstitutionBombs(t *testing.T) {
	k4 := strings.Repeat("y", 4096)
	env := NewVars([]string{"A=" + k4, "B=" + k4, "EMPTY="})
	tests := []struct{ name, word string }{
		{"replace all with a variable", "${A//?/${B}}"},
		{"replace all with a literal", "${A//?/" + k4 + "}"},
		{"replace all nested in a default", "${EMPTY:-${A//?/$B}}"},
		{"replace all in double quotes", `"${A//y/"$B"}"`},
		{"replace all with the match repeated", "${A//y/" + strings.Repeat(`\$0`, 2048) + "}"},
		{"many references", strings.Repeat("$A", 4096)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := NewExpander('\\')
			var err error
			alloc := allocated(func() { _, err = e.Word(tc.word, env) })
			var le *LimitError
			if !errors.As(err, &le) {
				t.Fatalf("expanding gave %v, want a limit error", err)
			}
			if alloc > 16<<20 {
				t.Errorf("allocated %d MiB before failing", alloc>>20)
			}
		})
	}
}

// TestExpansionBoundsPatternWork covers the time bomb among pattern
// matches: matching a long pattern against a long value takes their
// product in steps (minutes for values of a few hundred KiB), though the
// result is small.
func TestExpansionBoundsPatternWork(t *testing.T) {
	env := NewVars([]string{"A=" + strings.Repeat("a", 32<<10), "P=" + strings.Repeat("?", 16<<10) + "b"})
	for _, word := range []string{"${A/${P}/x}", "${A//${P}/x}", "${A#*${P}}", "${A%%${P}*}", "${A/" + strings.Repeat("?", 16<<10) + "b/x}"} {
		t.Run(word[:min(len(word), 12)], func(t *testing.T) {
			_, err := NewExpander('\\').Word(word, env)
			var le *LimitError
			if !errors.As(err, &le) || (le.Limit != MaxPatternWork && le.Limit != MaxWordSize) {
				t.Fatalf("expanding gave %v, want a limit error", err)
			}
		})
	}
	// The work adds up over a build.
	e := NewExpander('\\')
	e.limits.work = 15_000
	env = NewVars([]string{"A=" + strings.Repeat("a", 999), "P=abc"})
	for i := 1; i <= 4; i++ {
		// 1000 × 5 steps: the pattern as written ($P) and P's value
		_, err := e.Words(env).Word("${A/$P/x}")
		if i <= 3 && err != nil {
			t.Fatalf("substitution %d: %v", i, err)
		}
		if i == 4 && (err == nil || !strings.Contains(err.Error(), "pattern matching")) {
			t.Fatalf("substitution %d: %v, want the work limit", i, err)
		}
	}
}

// TestExpansionWithinLimits checks the limits do not get in the way of
// ordinary words, pattern substitutions included, nor of long text
// written in the Dockerfile (it is bounded by the file size, not these).
func TestExpansionWithinLimits(t *testing.T) {
	env := NewVars([]string{"LIST=a,b,c", "PATHV=/usr/local/bin:/usr/bin", "V=1.2.3", "K=" + strings.Repeat("k", 100<<10)})
	tests := []struct{ in, want string }{
		{"${LIST//,/ }", "a b c"},
		{"${PATHV/usr/opt}", "/opt/local/bin:/usr/bin"},
		{"${V%.*}", "1.2"},
		{"${V#*.}", "2.3"},
		{"${UNSET:-${V}}", "1.2.3"},
		{"${K//k/kk}", strings.Repeat("k", 200<<10)},
		{strings.Repeat("z", 3<<20), strings.Repeat("z", 3<<20)},
	}
	e := NewExpander('\\')
	for _, tc := range tests {
		got, err := e.Word(tc.in, env)
		if err != nil {
			t.Fatalf("%.40s: %v", tc.in, err)
		}
		if got != tc.want {
			t.Errorf("expand %.40q = %.40q, want %.40q", tc.in, got, tc.want)
		}
	}
}

// TestExpansionInstructionAndBuildLimits checks what variables add is
// bounded across the words of one instruction, and across a build.
func TestExpansionInstructionAndBuildLimits(t *testing.T) {
	env := NewVars([]string{"A=" + strings.Repeat("a", 300)})
	small := expansionLimits{word: 1000, instruction: 2500, total: 6000}

	e := NewExpander('\\')
	e.limits = small
	w := e.Words(env)
	for i := 0; i < 8; i++ {
		_, err := w.Word("$A")
		var le *LimitError
		switch {
		case i < 8 && (i+1)*300 <= 2500 && err != nil:
			t.Fatalf("word %d: %v", i, err)
		case (i+1)*300 > 2500:
			if !errors.As(err, &le) || le.Limit != 2500 || !strings.Contains(err.Error(), "this instruction") {
				t.Fatalf("word %d of the instruction: %v, want the instruction limit", i, err)
			}
		}
	}

	e = NewExpander('\\')
	e.limits = small
	var err error
	n := 0
	for ; n < 100 && err == nil; n++ {
		_, err = e.Words(env).Word("$A$A")
	}
	var le *LimitError
	if !errors.As(err, &le) || le.Limit != 6000 || !strings.Contains(err.Error(), "this build") {
		t.Fatalf("after %d instructions: %v, want the build limit", n, err)
	}
	if n != 11 { // 10 × 600 bytes fit in 6000
		t.Errorf("the build limit stopped instruction %d, want 11", n)
	}
}

// TestExpansionNesting checks deep ${...} nesting is refused before the
// lexer recurses (a million levels overflow the goroutine stack, a fatal
// error), and that the scan counts what the lexer recurses into.
func TestExpansionNesting(t *testing.T) {
	nest := func(n int, open, close string) string {
		return strings.Repeat(open, n) + "x" + strings.Repeat(close, n)
	}
	tests := []struct {
		name  string
		word  string
		depth int
	}{
		{"plain", "$A ${A} ${A:-b} ${A/x/y}", 1},
		{"defaults", nest(5, "${A:-", "}"), 5},
		{"quotes inside", nest(5, `"${A:-`, `}"`), 10},
		{"braces in single quotes do not close", "${A:-'}}}'${A:-x}}", 2},
		{"escaped braces do not close", `${A:-\}${A:-x}}`, 2},
		{"replacement", "${A//x/${B:-${C}}}", 2},
		{"pattern then replacement is one level", "${A/${B:-x}/${C:-y}}", 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := scanWord(tc.word, '\\').depth; got != tc.depth {
				t.Errorf("depth of %q = %d, want %d", tc.word, got, tc.depth)
			}
		})
	}
	e := NewExpander('\\')
	env := NewVars(nil)
	if got, err := e.Word(nest(MaxNesting, "${A:-", "}"), env); err != nil || got != "x" {
		t.Fatalf("%d levels: %q, %v", MaxNesting, got, err)
	}
	for _, n := range []int{MaxNesting + 1, 2_000_000} {
		_, err := e.Word(nest(n, "${A:-", "}"), env)
		if err == nil || !strings.Contains(err.Error(), "nest") {
			t.Fatalf("%d levels: %v, want the nesting limit", n, err)
		}
	}
}

// TestScanWordMatchesLexerSubstitutions checks scanWord finds the
// subjects of pattern substitutions the lexer sees, and only as subjects.
func TestScanWordMatchesLexerSubstitutions(t *testing.T) {
	tests := []struct {
		word string
		want map[string]subject
	}{
		{"$A ${B} ${C:-d}", nil},
		{"${A/x/y}", map[string]subject{"A": {substOne, 1, 1}}},
		{"${A//x/y} ${A/xx/yyy}", map[string]subject{"A": {substAll, 2, 3}}},
		{`"${A//x/${B//y/z}}"`, map[string]subject{"A": {substAll, 1, 9}, "B": {substAll, 1, 1}}},
		{"${A#abc} ${A%%*.}", map[string]subject{"A": {substTrim, 3, 0}}},
		{`'${A//x/y}'`, nil},
		{"`${A//x/y}", nil}, // escape=` below
	}
	for _, tc := range tests {
		esc := '\\'
		if strings.HasPrefix(tc.word, "`") {
			esc = '`'
		}
		got := scanWord(tc.word, esc).subst
		if fmt.Sprint(got) != fmt.Sprint(tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
			t.Errorf("scanWord(%q).subst = %v, want %v", tc.word, got, tc.want)
		}
	}
}

// FuzzExpandBound checks the bound the expansion limits rest on: what the
// lexer makes of a word is never longer than the word plus what guardEnv
// charged for the values it handed out (the word counts three times: the
// lexer turns each byte that is not UTF-8 into U+FFFD, three bytes). If
// the scan missed a substitution or a form multiplied text uncharged,
// this fails.
func FuzzExpandBound(f *testing.F) {
	seeds := []string{
		"$A$B", "${A//?/${B}}", "${A/x/$B}", `"${A//a/"$B$B"}"`, "${A:-${B//b/$A}}",
		`${A//a/\$0\$0}`, "${A##*a}${B%%b*}", "'${A//a/b}'${A}", "${A//${B}/x}", `${A//\//$B}`,
	}
	for _, s := range seeds {
		f.Add(s, "aaaa/b", "bb", false)
		f.Add(s, "a", "", true)
	}
	f.Fuzz(func(t *testing.T, word, a, b string, raw bool) {
		env := NewVars([]string{"A=" + a, "B=" + b})
		g, err := newGuard('\\', word, env, MaxWordSize, 1<<20)
		if err != nil {
			return
		}
		lex := shell.NewLex('\\')
		lex.RawQuotes, lex.RawEscapes = raw, raw
		out, _, err := lex.ProcessWord(word, g)
		if err != nil || g.over != notOver {
			return
		}
		if int64(len(out)) > 3*int64(len(word))+g.charged {
			t.Fatalf("expanding %q (A=%q B=%q) gave %d bytes, more than three times the word (%d) plus what was charged (%d)", word, a, b, len(out), len(word), g.charged)
		}
	})
}

package dockerfile

import (
	"fmt"
	"sync/atomic"
	"unicode"
	"unicode/utf8"

	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// Limits of variable expansion. Expanding variables can grow text
// exponentially (ARG A2=${A1}${A1}, once a line) or multiply it
// (${A//?/$B}); these limits bound what expansion adds to the text as
// written, and stop it before the memory is taken, not after. Text written
// in the Dockerfile is bounded by MaxFileSize and does not count.
const (
	// MaxWordSize bounds what variables add to one word (an ARG, ENV or
	// LABEL value, a path, a flag, a heredoc body): 1 MiB, eight times the
	// longest environment variable Linux passes to a RUN (128 KiB).
	MaxWordSize = 1 << 20
	// MaxInstructionSize bounds what variables add to the words of one
	// instruction together: 4 MiB.
	MaxInstructionSize = 4 << 20
	// MaxExpansionSize bounds what variables add to all the words one
	// Expander expands, that is one build for one platform: 256 MiB.
	MaxExpansionSize = 256 << 20
	// MaxPatternWork bounds the pattern matching of one build (for one
	// platform): the sum over ${v/p/r}, ${v//p/r}, ${v#p} and ${v%p} of
	// len(v) × len(p), at most 2^28, about two seconds of matching.
	MaxPatternWork = 1 << 28
	// MaxNesting bounds how deep ${...} and double quotes nest in one word
	// (the expansion recurses once per level): 100.
	MaxNesting = 100
)

// expansionHint says what to do about an expansion over a limit.
const expansionHint = "this looks like a runaway expansion (such as an ARG or ENV that doubles itself on every line); shorten the values, or put large data in a file and COPY it"

// Expander expands words as a Dockerfile does ($v, ${v}, ${v:-d}, ${v:+a},
// ${v#p}, ${v%p}, ${v/p/r}, quotes and the escape token), within the
// expansion limits. One Expander serves one build; it is safe for
// concurrent use.
type Expander struct {
	escape rune
	limits expansionLimits
	// added is what expansion added to words so far, against
	// limits.total; work the pattern matching work, against limits.work.
	added, work atomic.Int64
}

// expansionLimits are the limits an Expander applies (the Max*Size
// constants; tests use smaller ones).
type expansionLimits struct {
	word, instruction, total, work int64
}

// NewExpander returns an expander for the given escape token.
func NewExpander(escape rune) *Expander {
	if escape == 0 {
		escape = '\\'
	}
	return &Expander{escape: escape, limits: expansionLimits{word: MaxWordSize, instruction: MaxInstructionSize, total: MaxExpansionSize, work: MaxPatternWork}}
}

// Words expands the words of one instruction against env: what variables
// add is bounded per word (MaxWordSize) and for all the words together
// (MaxInstructionSize). A Words is not safe for concurrent use.
func (e *Expander) Words(env shell.EnvGetter) *Words {
	return &Words{e: e, env: env}
}

// Word expands one word against env, as an instruction of its own.
func (e *Expander) Word(word string, env shell.EnvGetter) (string, error) {
	return e.Words(env).Word(word)
}

// Raw expands variables in s without removing quotes or escapes, as used
// for heredoc bodies, as an instruction of its own.
func (e *Expander) Raw(s string, env shell.EnvGetter) (string, error) {
	return e.Words(env).Raw(s)
}

// Func returns a word expander bound to env, in the form buildkit's
// instructions take; the words it expands share one instruction's limit.
func (e *Expander) Func(env shell.EnvGetter) func(string) (string, error) {
	return e.Words(env).Word
}

// Words is the expansion of one instruction's words (see Expander.Words).
type Words struct {
	e     *Expander
	env   shell.EnvGetter
	added int64
}

// Word expands one word.
func (w *Words) Word(word string) (string, error) { return w.expand(word, expandWord) }

// Raw expands variables in s, keeping quotes and escapes (heredoc bodies).
func (w *Words) Raw(s string) (string, error) { return w.expand(s, expandRaw) }

// HeredocFile expands the body of a COPY or ADD heredoc as BuildKit does:
// variables and backslash escapes (always "\\", whatever the escape
// directive says) are processed, quotes are kept.
func (w *Words) HeredocFile(s string) (string, error) { return w.expand(s, expandHeredocFile) }

// expandMode is how a word's quotes and escapes are treated.
type expandMode int

const (
	expandWord        expandMode = iota // quotes and escapes processed
	expandRaw                           // both kept
	expandHeredocFile                   // escapes (always backslash) processed, quotes kept
)

func (w *Words) expand(word string, mode expandMode) (string, error) {
	lim := w.e.limits
	limit, full, what := lim.word, lim.word, "the text that variables add to one word"
	if r := lim.instruction - w.added; r < limit {
		limit, full, what = r, lim.instruction, "the text that variables add to the words of this instruction"
	}
	if r := lim.total - w.e.added.Load(); r < limit {
		limit, full, what = r, lim.total, "the text that variables add to the words of this build"
	}
	escape := w.e.escape
	if mode == expandHeredocFile {
		escape = '\\'
	}
	g, err := newGuard(escape, word, w.env, limit, lim.work-w.e.work.Load())
	if err != nil {
		return "", err
	}
	lex := shell.NewLex(escape)
	switch mode {
	case expandRaw:
		lex.RawQuotes, lex.RawEscapes = true, true
	case expandHeredocFile:
		lex.SkipProcessQuotes = true
	}
	out, _, err := lex.ProcessWord(word, g)
	w.e.work.Add(g.work)
	switch g.over {
	case overSize:
		return "", &LimitError{What: what, Size: full, Limit: full, AtLeast: true, Hint: expansionHint}
	case overWork:
		return "", &LimitError{What: "the pattern matching of this build (${v/p/r}, ${v#p} and ${v%p}, counted as value length × pattern length)", Size: lim.work, Limit: lim.work, AtLeast: true, Unit: "steps",
			Hint: "a long pattern matched against a long value takes minutes; shorten the pattern or the value"}
	}
	if err != nil {
		return "", err
	}
	if grown := int64(len(out) - len(word)); grown > 0 {
		w.added += grown
		w.e.added.Add(grown)
	}
	return out, nil
}

// newGuard scans word and returns the guardEnv to expand it against
// within the size and work budgets, or an error if its ${...} nest deeper
// than MaxNesting.
func newGuard(escape rune, word string, env shell.EnvGetter, limit, workLimit int64) (*guardEnv, error) {
	scan := scanWord(word, escape)
	if scan.depth > MaxNesting {
		return nil, fmt.Errorf("${...} and quotes nest more than %d deep in one word, over the limit: the expansion would recurse that deep; simplify the word", MaxNesting)
	}
	return &guardEnv{env: env, subst: scan.subst, limit: limit, workLimit: workLimit}, nil
}

// guardEnv is the EnvGetter a word is expanded against: it charges every
// value the lexer takes to the word's budgets, before the lexer uses it,
// and once a budget is spent it hands out empty values, so the lexer
// finishes quickly and small; expand then reports the limit.
//
// The size charge of a value bounds what it can add to the result: its
// length, except for the subject of a pattern match, which the lexer
// handles as runes (each byte that is not UTF-8 becomes U+FFFD, three
// bytes): three times its length, and for a substitution more. ${v//p/r}
// puts r in place of each match, and there are at most len(v)+1 matches;
// r was expanded before v is looked up, so it is at most three times its
// text as written (the lexer turns each byte that is not UTF-8 into
// U+FFFD, three bytes) plus everything charged so far. ${v/p/r} adds r
// once.
//
// The work charge bounds the time pattern matching takes: matching a
// pattern p against v (${v/p/r}, ${v//p/r}, ${v#p}, ${v%p}) costs up to
// len(v) × len(p) steps, p again bounded by its text plus what was
// charged before.
type guardEnv struct {
	env     shell.EnvGetter
	subst   map[string]subject
	limit   int64 // size budget
	charged int64
	// workLimit is the work budget; work is what was charged to it.
	workLimit int64
	work      int64
	over      overKind
}

// overKind says which budget a guardEnv found spent.
type overKind int

const (
	notOver overKind = iota
	overSize
	overWork
)

func (g *guardEnv) Get(k string) (string, bool) {
	v, ok := g.env.Get(k)
	if !ok || g.over != notOver {
		return "", ok
	}
	n := int64(len(v))
	cost := n
	if sub, ok := g.subst[k]; ok {
		pattern := sub.pattern + g.charged
		if pattern > 0 && n+1 > (g.workLimit-g.work)/pattern {
			g.over = overWork
			return "", true
		}
		g.work += (n + 1) * pattern
		// A subject goes through the pattern code as runes: charged
		// three times, as bytes that are not UTF-8 become U+FFFD.
		repl := 3*sub.repl + g.charged
		switch {
		case sub.kind == substTrim:
			cost = 3 * n
		case sub.kind == substOne:
			cost = 3*n + repl
		case repl > 0 && n+1 > (g.limit-g.charged)/repl:
			g.over = overSize
			return "", true
		default:
			cost = 3*n + (n+1)*repl
		}
	}
	if cost > g.limit-g.charged {
		g.over = overSize
		return "", true
	}
	g.charged += cost
	return v, true
}

func (g *guardEnv) Keys() []string { return g.env.Keys() }

// subject is how a variable is used as the subject of pattern matches:
// the widest kind, and the longest pattern and replacement as written (in
// bytes of the word).
type subject struct {
	kind          substKind
	pattern, repl int64
}

// substKind is a kind of pattern match, in order of what it can add.
type substKind int

const (
	substNone substKind = iota
	substTrim           // ${v#p}, ${v%p}: a prefix or suffix removed
	substOne            // ${v/p/r}: the first match replaced
	substAll            // ${v//p/r}: every match replaced
)

// wordScan is what expand needs to know about a word before the lexer
// runs: how deep ${...} nest, and which variables are subjects of a
// pattern substitution.
type wordScan struct {
	depth int
	subst map[string]subject
}

// scanWord follows the structure buildkit's shell lexer gives a word (its
// quotes, escapes and ${...} forms) to find what wordScan holds. It never
// reports less than the lexer would do: where it cannot follow (input the
// lexer rejects), it stops with what it found. It stops too once the
// depth is over MaxNesting.
func scanWord(word string, escape rune) wordScan {
	var ws wordScan
	// stack holds the open levels the lexer recurses into: a ${...}
	// part ends at '}', the pattern of a ${v/p/r} at '/' (then its
	// replacement at '}'), a double-quoted string at '"'. The word
	// itself, at the bottom, ends at its end (0).
	type level struct {
		end  byte
		name string // the subject of a pattern match
		kind substKind
		// pattern and repl are where the pattern and the replacement
		// start in word.
		pattern, repl int
	}
	stack := []level{{}}
	push := func(l level) {
		stack = append(stack, l)
		if d := len(stack) - 1; d > ws.depth {
			ws.depth = d
		}
	}
	// The scan stops once the nesting is over the limit: the word is
	// refused, and the rest need not be looked at.
	esc := byte(escape)
	i := 0
	// dollar handles the "$" at i; it returns false where the lexer
	// would fail.
	dollar := func() bool {
		i++ // $
		if i >= len(word) || word[i] != '{' {
			i = skipName(word, i)
			return true
		}
		i++ // {
		if i >= len(word) {
			return false
		}
		switch word[i] {
		case '{', '}', ':':
			return false
		}
		start := i
		i = skipName(word, i)
		name := word[start:i]
		if i >= len(word) {
			return false
		}
		op := word[i]
		i++
		switch op {
		case '}':
		case ':':
			if i >= len(word) {
				return false
			}
			i++ // the modifier; the lexer reads the rest up to '}'
			push(level{end: '}'})
		case '+', '-', '?':
			push(level{end: '}'})
		case '#', '%':
			push(level{end: '}', name: name, kind: substTrim, pattern: i, repl: -1})
		case '/':
			kind := substOne
			if i < len(word) && word[i] == '/' {
				kind = substAll
				i++
			}
			push(level{end: '/', name: name, kind: kind, pattern: i})
		default:
			return false
		}
		return true
	}
	for i < len(word) && ws.depth <= MaxNesting {
		top := &stack[len(stack)-1]
		c := word[i]
		if top.end == '"' {
			switch {
			case c == '"':
				stack = stack[:len(stack)-1]
				i++
			case c == '$':
				if !dollar() {
					return ws
				}
			case c == esc:
				i += 2
			default:
				i++
			}
			continue
		}
		switch {
		case top.end == '/' && c == '/':
			// The pattern of ${v/p/r} ends; the replacement runs to '}'.
			top.end, top.repl = '}', i+1
			i++
		case top.end != 0 && c == top.end:
			if top.kind != substNone {
				if ws.subst == nil {
					ws.subst = map[string]subject{}
				}
				sub := ws.subst[top.name]
				sub.kind = max(sub.kind, top.kind)
				if top.repl < 0 { // ${v#p}, ${v%p}: all pattern
					sub.pattern = max(sub.pattern, int64(i-top.pattern))
				} else {
					sub.pattern = max(sub.pattern, int64(top.repl-1-top.pattern))
					sub.repl = max(sub.repl, int64(i-top.repl))
				}
				ws.subst[top.name] = sub
			}
			stack = stack[:len(stack)-1]
			i++
		case c == '$':
			if !dollar() {
				return ws
			}
		case c == '\'':
			j := i + 1
			for j < len(word) && word[j] != '\'' {
				j++
			}
			if j >= len(word) {
				return ws
			}
			i = j + 1
		case c == '"':
			push(level{end: '"'})
			i++
		case c == esc:
			i += 2
		default:
			i++
		}
	}
	return ws
}

// skipName skips a variable name at i as the lexer reads one: digits, one
// special parameter, or letters, digits and underscores.
func skipName(word string, i int) int {
	if i >= len(word) {
		return i
	}
	r, n := utf8.DecodeRuneInString(word[i:])
	switch {
	case unicode.IsDigit(r):
		for i < len(word) {
			r, n := utf8.DecodeRuneInString(word[i:])
			if !unicode.IsDigit(r) {
				break
			}
			i += n
		}
		return i
	case r == '@' || r == '*' || r == '#' || r == '?' || r == '-' || r == '$' || r == '!' || r == '0':
		return i + n
	}
	for i < len(word) {
		r, n := utf8.DecodeRuneInString(word[i:])
		if !unicode.IsLetter(r) && !unicode.IsDigit(r) && r != '_' {
			break
		}
		i += n
	}
	return i
}

package dockerfile

import (
	"sort"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// Vars is an ordered set of variables, as an ENV list or an ARG scope.
// The zero value is empty and ready to use.
type Vars struct {
	keys []string
	m    map[string]string
}

// NewVars returns Vars holding the KEY=VALUE entries of env, in order.
func NewVars(env []string) *Vars {
	v := &Vars{}
	for _, kv := range env {
		k, val, _ := strings.Cut(kv, "=")
		v.Set(k, val)
	}
	return v
}

// Set sets k to val, keeping k's first position.
func (v *Vars) Set(k, val string) {
	if v.m == nil {
		v.m = map[string]string{}
	}
	if _, ok := v.m[k]; !ok {
		v.keys = append(v.keys, k)
	}
	v.m[k] = val
}

// Get implements shell.EnvGetter.
func (v *Vars) Get(k string) (string, bool) {
	if v == nil {
		return "", false
	}
	val, ok := v.m[k]
	return val, ok
}

// Keys implements shell.EnvGetter.
func (v *Vars) Keys() []string {
	if v == nil {
		return nil
	}
	return append([]string(nil), v.keys...)
}

// Delete removes k.
func (v *Vars) Delete(k string) {
	if _, ok := v.m[k]; !ok {
		return
	}
	delete(v.m, k)
	for i, key := range v.keys {
		if key == k {
			v.keys = append(v.keys[:i], v.keys[i+1:]...)
			break
		}
	}
}

// Len is the number of variables.
func (v *Vars) Len() int {
	if v == nil {
		return 0
	}
	return len(v.keys)
}

// Clone returns an independent copy.
func (v *Vars) Clone() *Vars {
	c := &Vars{}
	if v == nil {
		return c
	}
	for _, k := range v.keys {
		c.Set(k, v.m[k])
	}
	return c
}

// Environ returns KEY=VALUE entries in order.
func (v *Vars) Environ() []string {
	if v == nil {
		return nil
	}
	out := make([]string, 0, len(v.keys))
	for _, k := range v.keys {
		out = append(out, k+"="+v.m[k])
	}
	return out
}

// Sorted returns KEY=VALUE entries sorted by key (for cache keys).
func (v *Vars) Sorted() []string {
	out := v.Environ()
	sort.Strings(out)
	return out
}

// Overlay returns a view with the entries of top over those of v; neither
// is modified.
func (v *Vars) Overlay(top *Vars) *Vars {
	c := v.Clone()
	if top != nil {
		for _, k := range top.keys {
			c.Set(k, top.m[k])
		}
	}
	return c
}

// Expander expands words as a Dockerfile does ($v, ${v}, ${v:-d}, ${v:+a},
// quotes and the escape token).
type Expander struct {
	escape rune
}

// NewExpander returns an expander for the given escape token.
func NewExpander(escape rune) *Expander {
	if escape == 0 {
		escape = '\\'
	}
	return &Expander{escape: escape}
}

// Word expands one word against env.
func (e *Expander) Word(word string, env shell.EnvGetter) (string, error) {
	lex := shell.NewLex(e.escape)
	out, _, err := lex.ProcessWord(word, env)
	return out, err
}

// HeredocFile expands the body of a COPY or ADD heredoc as BuildKit does:
// variables and backslash escapes (always "\\", whatever the escape
// directive says) are processed, quotes are kept.
func (e *Expander) HeredocFile(s string, env shell.EnvGetter) (string, error) {
	lex := shell.NewLex('\\')
	lex.SkipProcessQuotes = true
	out, _, err := lex.ProcessWord(s, env)
	return out, err
}

// Func returns a single-word expander bound to env, in the form buildkit's
// instructions take.
func (e *Expander) Func(env shell.EnvGetter) func(string) (string, error) {
	return func(w string) (string, error) { return e.Word(w, env) }
}

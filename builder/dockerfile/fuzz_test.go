package dockerfile

import (
	"testing"
)

// FuzzParse checks that no input makes the front end panic, and that every
// error it returns has a message.
func FuzzParse(f *testing.F) {
	seeds := []string{
		"FROM scratch\n",
		"ARG A=1\nFROM ${A:-scratch} AS b\nCOPY --from=b --chown=1:1 a /b\n",
		"FROM scratch\nRUN <<EOF\necho hi\nEOF\n",
		"# escape=`\nFROM scratch\nENV a=b `\n c=d\n",
		"FROM scratch\nHEALTHCHECK --interval=5s CMD [\"a\"]\nONBUILD COPY a b\n",
		"FROM scratch\nCOPY <<A <<B /d/\na\nA\nb\nB\n",
		"FROM scratch\nRUN --mount=type=cache,target=/x --network=none true\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		df, err := Parse("Dockerfile", data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		exp := NewExpander(df.EscapeToken)
		env := NewVars([]string{"A=1"})
		for _, st := range df.Stages {
			_, _ = exp.Word(st.BaseName, env)
			for _, c := range st.Commands {
				_ = c.Location()
			}
		}
	})
}

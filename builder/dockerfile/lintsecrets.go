package dockerfile

import (
	"fmt"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"

	"github.com/ibuild/ibuild/builder/attest"
)

// lintSecretNames adds buildx's SecretsUsedInArgOrEnv warning for every
// ARG and ENV whose name looks like it holds a secret (attest.SecretName),
// worded as buildx words it: ARG and ENV values end up in the image
// config, the history or the provenance, where anyone can read them.
func (df *Dockerfile) lintSecretNames() {
	warn := func(instr, key string, loc []parser.Range) {
		if !attest.SecretName(key) {
			return
		}
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		df.Warnings = append(df.Warnings, fmt.Sprintf("%s:%d: SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (%s %q)", df.Path, line, instr, key))
	}
	for _, a := range df.MetaArgs {
		for _, kv := range a.Args {
			warn("ARG", kv.Key, a.Location())
		}
	}
	for _, st := range df.Stages {
		for _, cmd := range st.Commands {
			switch c := cmd.(type) {
			case *instructions.ArgCommand:
				for _, kv := range c.Args {
					warn("ARG", kv.Key, c.Location())
				}
			case *instructions.EnvCommand:
				for _, kv := range c.Env {
					warn("ENV", kv.Key, c.Location())
				}
			}
		}
	}
}

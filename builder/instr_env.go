package builder

import (
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// envCmd runs ENV: each pair replaces or appends a variable of the image.
func (s *stageRun) envCmd(c *instructions.EnvCommand) error {
	cfg := s.c.imageConfig()
	for _, kv := range c.Env {
		cfg.Env = setEnv(cfg.Env, kv.Key, kv.Value)
	}
	s.c.addHistory(cmdText(c))
	return nil
}

// setEnv sets k=v in env, keeping the position of an existing k.
func setEnv(env []string, k, v string) []string {
	for i, e := range env {
		if key, _, _ := strings.Cut(e, "="); key == k {
			out := append([]string(nil), env...)
			out[i] = k + "=" + v
			return out
		}
	}
	return append(append([]string(nil), env...), k+"="+v)
}

package builder

import (
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// envCmd runs ENV: each pair replaces or appends a variable of the image.
func (s *stageRun) envCmd(c *instructions.EnvCommand) error {
	for _, kv := range c.Env {
		s.c.setEnv(kv.Key, kv.Value)
	}
	s.c.addHistory(cmdText(c))
	return nil
}

// setEnv sets k=v in the image's ENV, in place, keeping the position of
// an existing k.
func (c *Container) setEnv(k, v string) {
	cfg := c.imageConfig()
	if i, ok := c.envAt(k); ok {
		cfg.Env[i] = k + "=" + v
		return
	}
	cfg.Env = append(cfg.Env, k+"="+v)
	c.env.at[k] = len(cfg.Env) - 1
	c.env.len = len(cfg.Env)
}

// envAt finds k in the image's ENV through an index of the positions of
// its keys, so that neither ENV nor an expansion costs a scan of every
// variable. The index is made again when the ENV list changed length
// behind it, and an entry that no longer names its key is looked for.
func (c *Container) envAt(k string) (int, bool) {
	env := c.config.Config.Env
	if c.env.at == nil || c.env.len != len(env) {
		c.env.at = make(map[string]int, len(env))
		for i, e := range env {
			key, _, _ := strings.Cut(e, "=")
			if _, dup := c.env.at[key]; !dup {
				c.env.at[key] = i
			}
		}
		c.env.len = len(env)
	}
	i, ok := c.env.at[k]
	if ok && !(len(env[i]) > len(k) && env[i][len(k)] == '=' && env[i][:len(k)] == k) {
		delete(c.env.at, k)
		for j, e := range env {
			if key, _, _ := strings.Cut(e, "="); key == k {
				c.env.at[k] = j
				return j, true
			}
		}
		return 0, false
	}
	return i, ok
}

// envGet is the value of k in the image's ENV.
func (c *Container) envGet(k string) (string, bool) {
	i, ok := c.envAt(k)
	if !ok {
		return "", false
	}
	return c.config.Config.Env[i][len(k)+1:], true
}

package builder

import (
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// label runs LABEL.
func (s *stageRun) label(c *instructions.LabelCommand) error {
	cfg := s.c.imageConfig()
	if cfg.Labels == nil {
		cfg.Labels = make(map[string]string, len(c.Labels))
	}
	// In place: copying the map would make n LABELs cost O(n^2).
	for _, kv := range c.Labels {
		cfg.Labels[kv.Key] = kv.Value
	}
	s.c.addHistory(cmdText(c))
	return nil
}

// maintainer runs MAINTAINER (deprecated): it sets the image author.
func (s *stageRun) maintainer(c *instructions.MaintainerCommand) error {
	s.c.config.Author = c.Maintainer
	s.c.addHistory(cmdText(c))
	return nil
}

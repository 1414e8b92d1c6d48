package builder

import (
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// label runs LABEL.
func (s *stageRun) label(c *instructions.LabelCommand) error {
	cfg := s.c.imageConfig()
	labels := make(map[string]string, len(cfg.Labels)+len(c.Labels))
	for k, v := range cfg.Labels {
		labels[k] = v
	}
	for _, kv := range c.Labels {
		labels[kv.Key] = kv.Value
	}
	cfg.Labels = labels
	s.c.addHistory(cmdText(c))
	return nil
}

// maintainer runs MAINTAINER (deprecated): it sets the image author.
func (s *stageRun) maintainer(c *instructions.MaintainerCommand) error {
	s.c.config.Author = c.Maintainer
	s.c.addHistory(cmdText(c))
	return nil
}

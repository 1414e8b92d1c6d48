package builder

import (
	"errors"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// volume runs VOLUME.
func (s *stageRun) volume(c *instructions.VolumeCommand) error {
	cfg := s.c.imageConfig()
	for _, v := range c.Volumes {
		if strings.TrimSpace(v) == "" {
			return errors.New("VOLUME specified can not be an empty string")
		}
	}
	if cfg.Volumes == nil {
		cfg.Volumes = make(map[string]struct{}, len(c.Volumes))
	}
	for _, v := range c.Volumes {
		cfg.Volumes[strings.TrimSpace(v)] = struct{}{}
	}
	s.c.addHistory(cmdText(c))
	return nil
}

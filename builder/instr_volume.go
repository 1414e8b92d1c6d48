package builder

import (
	"errors"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// volume runs VOLUME.
func (s *stageRun) volume(c *instructions.VolumeCommand) error {
	cfg := s.c.imageConfig()
	vols := make(map[string]struct{}, len(cfg.Volumes)+len(c.Volumes))
	for k := range cfg.Volumes {
		vols[k] = struct{}{}
	}
	for _, v := range c.Volumes {
		v = strings.TrimSpace(v)
		if v == "" {
			return errors.New("VOLUME specified can not be an empty string")
		}
		vols[v] = struct{}{}
	}
	cfg.Volumes = vols
	s.c.addHistory(cmdText(c))
	return nil
}

package builder

import (
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// onbuild runs ONBUILD: the trigger is stored in the image and runs when
// the image is used as a base.
func (s *stageRun) onbuild(c *instructions.OnbuildCommand) error {
	cfg := s.c.imageConfig()
	cfg.OnBuild = append(cfg.OnBuild, c.Expression)
	s.c.addHistory(cmdText(c))
	return nil
}

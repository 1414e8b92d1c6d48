package builder

import (
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// shell runs SHELL: the shell of later shell-form instructions, recorded
// in the image.
func (s *stageRun) shell(c *instructions.ShellCommand) error {
	s.c.imageConfig().Shell = append([]string(nil), c.Shell...)
	s.c.addHistory(cmdText(c))
	return nil
}

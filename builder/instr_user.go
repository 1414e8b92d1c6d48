package builder

import (
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// user runs USER. The name is kept as written; it is resolved against the
// image's /etc/passwd when a step runs as it (WORKDIR, RUN), as docker does.
func (s *stageRun) user(c *instructions.UserCommand) error {
	s.c.imageConfig().User = c.User
	s.c.addHistory(cmdText(c))
	return nil
}

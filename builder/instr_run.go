package builder

import (
	"context"
	"errors"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// ErrRunUnsupported is returned for RUN until ibuild's sandbox lands: the
// instruction is parsed and validated, but this version cannot execute it.
var ErrRunUnsupported = errors.New("RUN is not supported by this version of ibuild yet: executing commands needs the rootless sandbox, which is still being built; build images with COPY/ADD and metadata instructions, or from a base that already contains what RUN would make")

// run handles RUN.
func (s *stageRun) run(ctx context.Context, c *instructions.RunCommand) error {
	// Expanding validates --mount and --network flags.
	if err := s.expand(c); err != nil {
		return err
	}
	return ErrRunUnsupported
}

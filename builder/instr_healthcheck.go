package builder

import (
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// healthcheck runs HEALTHCHECK (including HEALTHCHECK NONE, recorded as
// ["NONE"] as docker does).
func (s *stageRun) healthcheck(c *instructions.HealthCheckCommand) error {
	h := c.Health
	s.c.imageConfig().Healthcheck = &v1.HealthConfig{
		Test:        append([]string(nil), h.Test...),
		Interval:    h.Interval,
		Timeout:     h.Timeout,
		StartPeriod: h.StartPeriod,
		Retries:     h.Retries,
	}
	s.c.addHistory(cmdText(c))
	return nil
}

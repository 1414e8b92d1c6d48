package compat

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/ibuild/ibuild/builder/internal/oracle"
)

// build runs `buildctl build` for c, pushing the result to ref; it
// returns buildctl's output and whether the build succeeded.
func buildWithOracle(ctx context.Context, o *oracle.Daemon, c *compatCase, ref string) (string, error) {
	args := []string{"--addr", o.Addr, "build", "--progress", "plain", "--frontend", "dockerfile.v0",
		"--local", "context=" + c.ContextDir, "--local", "dockerfile=" + filepath.Dir(c.Dockerfile),
		"--opt", "filename=" + filepath.Base(c.Dockerfile)}
	for _, k := range sortedKeys(c.BuildArgs) {
		args = append(args, "--opt", "build-arg:"+k+"="+c.BuildArgs[k])
	}
	if c.Target != "" {
		args = append(args, "--opt", "target="+c.Target)
	}
	if len(c.Platforms) > 0 {
		args = append(args, "--opt", "platform="+strings.Join(c.Platforms, ","))
	}
	for _, id := range sortedKeys(c.Secrets) {
		args = append(args, "--secret", "id="+id+",src="+c.Secrets[id])
	}
	args = append(args, "--output", "type=image,name="+ref+",push=true,registry.insecure=true")
	ctx, cancel := context.WithTimeout(ctx, caseTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, o.Buildctl, args...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

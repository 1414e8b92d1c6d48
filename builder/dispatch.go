package builder

import (
	"context"
	"fmt"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// dispatch expands one instruction and runs its implementation. This is
// the only place that maps instruction types to code; each instruction
// lives in its own instr_*.go file.
func (s *stageRun) dispatch(ctx context.Context, cmd instructions.Command) error {
	if oc, ok := cmd.(onbuildCommand); ok {
		cmd = oc.Command
	}
	if !expandsItself(cmd) {
		if err := s.expand(cmd); err != nil {
			return err
		}
	}
	switch c := cmd.(type) {
	case *instructions.EnvCommand:
		return s.envCmd(c)
	case *instructions.LabelCommand:
		return s.label(c)
	case *instructions.MaintainerCommand:
		return s.maintainer(c)
	case *instructions.ExposeCommand:
		return s.exposeCmd(c)
	case *instructions.CmdCommand:
		return s.cmd(c)
	case *instructions.EntrypointCommand:
		return s.entrypoint(c)
	case *instructions.VolumeCommand:
		return s.volume(c)
	case *instructions.UserCommand:
		return s.user(c)
	case *instructions.WorkdirCommand:
		return s.workdir(ctx, c)
	case *instructions.ArgCommand:
		return s.arg(c)
	case *instructions.OnbuildCommand:
		return s.onbuild(c)
	case *instructions.StopSignalCommand:
		return s.stopSignal(c)
	case *instructions.HealthCheckCommand:
		return s.healthcheck(c)
	case *instructions.ShellCommand:
		return s.shell(c)
	case *instructions.CopyCommand:
		return s.copyCmd(ctx, c)
	case *instructions.AddCommand:
		return s.add(ctx, c)
	case *instructions.RunCommand:
		return s.run(ctx, c)
	}
	return fmt.Errorf("instruction %s is not supported", cmd.Name())
}

// expandsItself reports whether an instruction is not word-expanded up
// front: RUN, CMD and ENTRYPOINT keep their text for the shell (RUN expands
// its flags itself), ONBUILD runs later, ARG and EXPOSE expand as they go.
func expandsItself(cmd instructions.Command) bool {
	switch cmd.(type) {
	case *instructions.RunCommand, *instructions.CmdCommand, *instructions.EntrypointCommand,
		*instructions.OnbuildCommand, *instructions.ShellCommand, *instructions.HealthCheckCommand,
		*instructions.ExposeCommand, *instructions.ArgCommand:
		return true
	}
	return false
}

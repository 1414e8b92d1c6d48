package builder

import (
	"context"
	"fmt"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// dispatch runs one expanded instruction (see prepare). This is the only
// place that maps instruction types to code; each instruction lives in its
// own instr_*.go file.
func (s *stageRun) dispatch(ctx context.Context, cmd instructions.Command) error {
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

// prepare expands an instruction's words in place, unless it expands
// itself as it runs. RUN's flags (--mount) are expanded here too; RUN
// expanding them again is harmless, as they are re-read from the flag
// text.
func (s *stageRun) prepare(cmd instructions.Command) error {
	if _, ok := cmd.(*instructions.RunCommand); ok || !expandsItself(cmd) {
		return s.expand(cmd)
	}
	return nil
}

// configOnly reports whether an instruction only edits the image config
// (or the stage's own state), so it needs no file system and is cheap to
// run even when its result is cached.
func configOnly(cmd instructions.Command) bool {
	switch cmd.(type) {
	case *instructions.RunCommand, *instructions.CopyCommand, *instructions.AddCommand, *instructions.WorkdirCommand:
		return false
	}
	return true
}

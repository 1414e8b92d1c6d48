package builder

import (
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// defaultShell is the shell of shell-form instructions when the image has
// no SHELL: BuildKit's, cmd /S /C for a Windows target.
func (s *stageRun) defaultShell() []string {
	if s.platform.OS == "windows" {
		return []string{"cmd", "/S", "/C"}
	}
	return []string{"/bin/sh", "-c"}
}

// shellWords turns a shell- or exec-form command line into the argv the
// image records: exec form as is, shell form under the image's shell.
func (s *stageRun) shellWords(cl instructions.ShellDependantCmdLine) []string {
	if !cl.PrependShell {
		return append([]string(nil), cl.CmdLine...)
	}
	sh := s.c.imageConfig().Shell
	if len(sh) == 0 {
		sh = s.defaultShell()
	}
	return append(append([]string(nil), sh...), strings.Join(cl.CmdLine, " "))
}

// cmd runs CMD.
func (s *stageRun) cmd(c *instructions.CmdCommand) error {
	s.c.imageConfig().Cmd = s.shellWords(c.ShellDependantCmdLine)
	s.cmdSet = true
	s.c.addHistory(cmdText(c))
	return nil
}

// entrypoint runs ENTRYPOINT. As in docker, it clears a CMD inherited from
// the base image, but not one set earlier in this stage.
func (s *stageRun) entrypoint(c *instructions.EntrypointCommand) error {
	cfg := s.c.imageConfig()
	if len(c.CmdLine) == 0 && !c.PrependShell {
		cfg.Entrypoint = nil
	} else {
		cfg.Entrypoint = s.shellWords(c.ShellDependantCmdLine)
	}
	if !s.cmdSet {
		cfg.Cmd = nil
	}
	s.c.addHistory(cmdText(c))
	return nil
}

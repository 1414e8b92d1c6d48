package builder

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"golang.org/x/sys/unix"
)

// stopSignal runs STOPSIGNAL, accepting names (SIGTERM, TERM) and numbers.
func (s *stageRun) stopSignal(c *instructions.StopSignalCommand) error {
	sig := strings.TrimSpace(c.Signal)
	if n, err := strconv.Atoi(sig); err == nil {
		if n <= 0 || n > 64 {
			return fmt.Errorf("invalid signal number %d", n)
		}
	} else {
		name := strings.ToUpper(sig)
		if !strings.HasPrefix(name, "SIG") {
			name = "SIG" + name
		}
		if unix.SignalNum(name) == 0 && !strings.HasPrefix(name, "SIGRTMIN") && !strings.HasPrefix(name, "SIGRTMAX") {
			return fmt.Errorf("invalid signal %q", c.Signal)
		}
	}
	s.c.imageConfig().StopSignal = sig
	s.c.addHistory(cmdText(c))
	return nil
}

package builder

import (
	"strings"
	"testing"
)

// TestParseModes covers ParseIsolation and ParseNetwork: defaults, every
// mode, and errors that name the option (not a CLI flag).
func TestParseModes(t *testing.T) {
	for in, want := range map[string]Isolation{"": IsolationAuto, "auto": IsolationAuto, "chroot": IsolationChroot, "userns": IsolationUserns, "none": IsolationNone} {
		if got, err := ParseIsolation(in); err != nil || got != want {
			t.Errorf("ParseIsolation(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for in, want := range map[string]Network{"": NetworkHost, "default": NetworkHost, "host": NetworkHost, "none": NetworkNone} {
		if got, err := ParseNetwork(in); err != nil || got != want {
			t.Errorf("ParseNetwork(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, err := range []error{
		func() error { _, err := ParseIsolation("rootless"); return err }(),
		func() error { _, err := ParseNetwork("bridge"); return err }(),
	} {
		if err == nil || strings.Contains(err.Error(), "--") || !strings.Contains(err.Error(), "want") {
			t.Errorf("error %v: want one naming the value and the choices, no flag", err)
		}
	}
}

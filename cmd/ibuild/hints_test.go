package main

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/builder/sandbox"
	"github.com/ibuild/ibuild/registry"
)

// TestErrorHint: the library's errors name options; the command adds
// the flag that sets them.
func TestErrorHint(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("Dockerfile:2: %w", &builder.MissingSecretError{ID: "tok"}), "--secret id=tok,src=FILE"},
		{fmt.Errorf("Dockerfile:2: %w", &builder.MissingSecretError{ID: "default", SSH: true}), "--ssh default=SOCKET"},
		{fmt.Errorf("Dockerfile:3: %w", builder.ErrNativeSnapshots), "--storage-driver auto"},
		{fmt.Errorf("Dockerfile:3: %w", sandbox.ErrNeedsUserNamespace), "--isolation userns"},
		{fmt.Errorf("manifest push: %w", &registry.OptionError{Option: "ListPushOptions.All", Err: errors.New("push them too (All)")}), "manifest push --all"},
		{fmt.Errorf("Dockerfile:2: %w", &builder.EntitlementError{Name: "network.host", Step: "RUN --network=host", Option: "AllowNetworkHost"}), "--allow network.host"},
		{fmt.Errorf("Dockerfile:2: %w", &builder.EntitlementError{Name: "security.insecure", Step: "RUN --security=insecure", Option: "AllowInsecure"}), "--allow security.insecure"},
		{fmt.Errorf("other"), ""},
	} {
		got := errorHint(tc.err)
		if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
			t.Errorf("errorHint(%v) = %q, want it to hold %q", tc.err, got, tc.want)
		}
		// Dockerfile flags (RUN --network=host) are the input's words.
		if msg := strings.NewReplacer("RUN --", "RUN ").Replace(tc.err.Error()); strings.Contains(msg, "--") {
			t.Errorf("the library's error names a flag: %v", tc.err)
		}
	}
}

package builder

import "testing"

func TestWindowsPath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`\`, "/"},
		{`C:\app`, "/app"},
		{`c:\app\bin\`, "/app/bin/"},
		{`rel\dir`, "rel/dir"},
		{"/unix/path", "/unix/path"},
		{"", ""},
		{`D:\data`, "D:/data"}, // only the system drive is dropped
	} {
		if got := windowsPath(tc.in); got != tc.want {
			t.Errorf("windowsPath(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

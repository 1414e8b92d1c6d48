package builder

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestReadSecretLimit: secrets are bounded as BuildKit bounds them, from
// a value, a regular file or a stream (a named pipe here: /dev/stdin of
// `--secret src=/dev/stdin` is one).
func TestReadSecretLimit(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small")
	big := filepath.Join(dir, "big")
	writeFile(t, small, "token", 0o600)
	writeFile(t, big, strings.Repeat("x", MaxSecretSize+1), 0o600)
	pipe, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		w.Write([]byte(strings.Repeat("y", MaxSecretSize+10)))
		w.Close()
	}()
	defer pipe.Close()
	for _, tc := range []struct {
		name    string
		src     SecretSource
		want    string
		wantErr string
	}{
		{"value", SecretSource{Value: []byte("v")}, "v", ""},
		{"value at the limit", SecretSource{Value: []byte(strings.Repeat("a", MaxSecretSize))}, strings.Repeat("a", MaxSecretSize), ""},
		{"value too big", SecretSource{Value: []byte(strings.Repeat("a", MaxSecretSize+1))}, "", "over the limit of 512000"},
		{"file", SecretSource{File: small}, "token", ""},
		{"file too big", SecretSource{File: big}, "", `secret "s" is 512001 bytes, over the limit`},
		{"stream too big", SecretSource{File: "/proc/self/fd/" + strconv.Itoa(int(pipe.Fd()))}, "", "over the limit"},
		{"missing file", SecretSource{File: filepath.Join(dir, "none")}, "", "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readSecret("s", tc.src)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("got %d bytes, %v", len(got), err)
			}
		})
	}
}

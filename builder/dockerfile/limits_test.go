package dockerfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestReadFileRefusesWhatIsNotADockerfile covers the unbounded read of
// the security audit: -f /dev/zero read until the machine ran out of
// memory. Devices, FIFOs and directories are refused without reading;
// files over the limit are refused by their size.
func TestReadFileRefusesWhatIsNotADockerfile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(big, 300<<20); err != nil { // sparse: no disk used
		t.Fatal(err)
	}
	atLimit := filepath.Join(dir, "at-limit")
	if err := os.WriteFile(atLimit, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(atLimit, MaxFileSize); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path string
		want       []string
	}{
		{"character device", "/dev/zero", []string{"/dev/zero is a character device, not a regular file"}},
		{"named pipe", fifo, []string{fifo + " is a named pipe, not a regular file"}},
		{"directory", dir, []string{dir + " is a directory, not a regular file"}},
		{"too large", big, []string{big + " is 300.0 MiB (314572800 bytes), over the limit of 16 MiB", "right file"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// A FIFO without a writer would block a plain open forever.
			_, err := ReadFile(tc.path)
			if err == nil {
				t.Fatal("read succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
	data, err := ReadFile(atLimit)
	if err != nil || len(data) != MaxFileSize {
		t.Fatalf("a file of exactly the limit: %d bytes, %v", len(data), err)
	}
	if _, err := ReadFile(filepath.Join(dir, "absent")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("absent file: %v, want fs.ErrNotExist", err)
	}
}

// TestReadLimitedStopsAtTheLimit is -f - with /dev/zero on standard input.
func TestReadLimitedStopsAtTheLimit(t *testing.T) {
	zero, err := os.Open("/dev/zero")
	if err != nil {
		t.Fatal(err)
	}
	defer zero.Close()
	counted := &countingReader{r: zero}
	_, err = ReadLimited(counted, "standard input")
	var le *LimitError
	if !errors.As(err, &le) || !strings.Contains(err.Error(), "standard input is more than 16 MiB") {
		t.Fatalf("error %v, want the file limit naming standard input", err)
	}
	if counted.n > MaxFileSize+1 {
		t.Errorf("read %d bytes, want at most the limit plus one", counted.n)
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// TestParseLimitsAndBadBytes covers the error items of the audit: a long
// line is blamed on its own line, with its size; control characters and
// bytes that are not UTF-8 are shown escaped; content over the file limit
// (from the library's DockerfileContent) is refused.
func TestParseLimitsAndBadBytes(t *testing.T) {
	long := strings.Repeat("y", 10<<20)
	tests := []struct {
		name string
		src  string
		want []string
	}{
		{"long line is named", "FROM scratch\nLABEL a=b\n# c\nLABEL x=" + long + "\n",
			[]string{"Dockerfile:4: LABEL x=yyy", "the line is 10.0 MiB (10485768 bytes), over the limit of 65535 bytes", "shorter lines"}},
		{"long first line", "LABEL x=" + long + "\nFROM scratch\n", []string{"Dockerfile:1: LABEL x=yyy", "over the limit of 65535 bytes"}},
		{"long heredoc line", "FROM scratch\nRUN <<EOF\n" + long + "\nEOF\n", []string{"Dockerfile:3: yyy", "over the limit"}},
		{"NUL before FROM", "\x00FROM scratch\n", []string{`Dockerfile:1: \x00FROM scratch: unknown instruction: \x00FROM`, "UTF-8"}},
		{"UTF-16", "\xff\xfeF\x00R\x00O\x00M\x00 \x00s\x00\n\x00", []string{`unknown instruction: \xff\xfeF\x00R\x00O\x00M\x00`, "UTF-8"}},
		{"escape sequence in a name", "FROM scratch\nL\x1b[2JABEL a=b\n", []string{`Dockerfile:2: L\x1b[2JABEL a=b: unknown instruction: L\x1b[2JABEL`}},
		{"heredoc instruction nested deep", "FROM scratch\nRUN <<EOF " + strings.Repeat("${A:-", 150) + "\\\n# a comment\n\n" + strings.Repeat(strings.Repeat("${A:-", 5000)+"\\\n", 4) + "x\nEOF\n",
			[]string{"Dockerfile:2: RUN <<EOF ${A:-${A:-", "nest more than 100 deep in this instruction"}},
		{"too large", "FROM scratch\n" + strings.Repeat("# comment\n", MaxFileSize/10), []string{"Dockerfile: the Dockerfile is 16.0 MiB (16777223 bytes), over the limit of 16 MiB"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("Dockerfile", []byte(tc.src))
			var de *Error
			if !errors.As(err, &de) {
				t.Fatalf("error %v is not a *dockerfile.Error", err)
			}
			msg := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %.300q does not say %q", msg, w)
				}
			}
			if strings.ContainsAny(msg, "\x00\x1b") {
				t.Errorf("error holds raw control characters: %q", msg)
			}
			if len(msg) > 1000 {
				t.Errorf("error is %d bytes long; the line should be shortened", len(msg))
			}
		})
	}
	// Many ${...} and quotes, not nested, still parse.
	many := "FROM scratch\nRUN <<EOF " + strings.Repeat(`"${A:-x}" \`+"\n", 300) + "true\nEOF\n"
	if _, err := Parse("Dockerfile", []byte(many)); err != nil {
		t.Fatalf("a heredoc instruction with 300 ${...} in quotes: %v", err)
	}
	// The longest line the parser takes still parses.
	ok := "FROM scratch\nLABEL x=" + strings.Repeat("z", MaxLineSize-len("LABEL x=")) + "\n"
	if _, err := Parse("Dockerfile", []byte(ok)); err != nil {
		t.Fatalf("a line of %d bytes: %v", MaxLineSize, err)
	}
}

// Package ctxfetchtest serves git repositories over http on 127.0.0.1
// (git http-backend behind an httptest server) for tests of git build
// contexts, and makes the repositories.
package ctxfetchtest

import (
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ibuild/ibuild/layers/layertest"
)

// SymlinkPrefix marks a file value of Commit that is a symlink's target.
const SymlinkPrefix = "symlink:"

// Server serves the repositories under Root at URL + "/" + NAME.
type Server struct {
	Root string
	URL  string

	mu sync.Mutex
	n  int
}

// Requests counts the requests served so far.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// Serve starts git http-backend for the repositories under a new
// directory; it stops when the test ends.
func Serve(t testing.TB) *Server {
	t.Helper()
	git := layertest.RequireTool(t, "git")
	root := t.TempDir()
	out, err := exec.Command(git, "--exec-path").Output()
	if err != nil {
		t.Fatalf("git --exec-path: %v", err)
	}
	backend := filepath.Join(strings.TrimSpace(string(out)), "git-http-backend")
	s := &Server{Root: root}
	h := &cgi.Handler{
		Path: backend,
		Env:  []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1", "HOME=" + root},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.n++
		s.mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	s.URL = srv.URL
	return s
}

// NewRepo makes an empty repository NAME (a directory with a work tree)
// under the server's root and returns its directory.
func (s *Server) NewRepo(t testing.TB, name string) string {
	t.Helper()
	dir := filepath.Join(s.Root, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	Git(t, dir, "init", "-q", "-b", "main")
	Git(t, dir, "config", "uploadpack.allowReachableSHA1InWant", "false")
	return dir
}

// Commit writes files into the repository dir (a value starting with
// SymlinkPrefix makes a symlink; "" removes the file), commits them with
// a fixed author and time, and returns the commit id.
func Commit(t testing.TB, dir string, files map[string]string, msg string) string {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		os.Remove(p)
		switch {
		case content == "":
			continue
		case strings.HasPrefix(content, SymlinkPrefix):
			if err := os.Symlink(strings.TrimPrefix(content, SymlinkPrefix), p); err != nil {
				t.Fatal(err)
			}
		default:
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	Git(t, dir, "add", "-A")
	Git(t, dir, "commit", "-q", "-m", msg)
	return strings.TrimSpace(Git(t, dir, "rev-parse", "HEAD"))
}

// Git runs git in dir with a fixed identity and dates, and returns its
// output.
func Git(t testing.TB, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com",
		"GIT_AUTHOR_DATE=2023-11-14T22:13:20Z", "GIT_COMMITTER_DATE=2023-11-14T22:13:20Z", "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

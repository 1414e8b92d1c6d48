package attest

import (
	"bufio"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// GitSource describes dir when it is the top of a git checkout: the
// remote "origin" URL (credentials removed) with #COMMIT, and the commit
// as a sha1 digest. It reads .git directly (HEAD, loose and packed refs,
// config) and runs no git command; a plain directory, or a checkout it
// cannot read, gives the zero Source.
func GitSource(dir string) Source {
	gitDir := filepath.Join(dir, ".git")
	if data, err := os.ReadFile(gitDir); err == nil {
		// A worktree or submodule: "gitdir: PATH".
		p, ok := strings.CutPrefix(strings.TrimSpace(string(data)), "gitdir: ")
		if !ok {
			return Source{}
		}
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		gitDir = p
	}
	commit := resolveHead(gitDir)
	if commit == "" {
		return Source{}
	}
	s := Source{Digest: map[string]string{"sha1": commit}}
	if u := originURL(gitDir); u != "" {
		s.URI = u + "#" + commit
	}
	return s
}

// commonDir is where a linked worktree's shared refs and config are.
func commonDir(gitDir string) string {
	if data, err := os.ReadFile(filepath.Join(gitDir, "commondir")); err == nil {
		p := strings.TrimSpace(string(data))
		if !filepath.IsAbs(p) {
			p = filepath.Join(gitDir, p)
		}
		return p
	}
	return gitDir
}

func isCommit(s string) bool {
	return (len(s) == 40 || len(s) == 64) && strings.Trim(s, "0123456789abcdef") == ""
}

func resolveHead(gitDir string) string {
	data, err := os.ReadFile(filepath.Join(gitDir, "HEAD"))
	if err != nil {
		return ""
	}
	head := strings.TrimSpace(string(data))
	if isCommit(head) {
		return head
	}
	ref, ok := strings.CutPrefix(head, "ref: ")
	if !ok || strings.Contains(ref, "..") {
		return ""
	}
	for _, d := range []string{gitDir, commonDir(gitDir)} {
		if data, err := os.ReadFile(filepath.Join(d, filepath.FromSlash(ref))); err == nil {
			if c := strings.TrimSpace(string(data)); isCommit(c) {
				return c
			}
		}
	}
	f, err := os.Open(filepath.Join(commonDir(gitDir), "packed-refs"))
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		c, name, ok := strings.Cut(sc.Text(), " ")
		if ok && name == ref && isCommit(c) {
			return c
		}
	}
	return ""
}

// originURL is remote "origin"'s url from the git config, without
// credentials.
func originURL(gitDir string) string {
	data, err := os.ReadFile(filepath.Join(commonDir(gitDir), "config"))
	if err != nil {
		return ""
	}
	inOrigin := false
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "[") {
			inOrigin = line == `[remote "origin"]`
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if inOrigin && ok && strings.TrimSpace(k) == "url" {
			return RedactURL(strings.TrimSpace(v))
		}
	}
	return ""
}

// RedactURL removes credentials (user info) and the query, which may hold
// tokens, from a URL; a scp-style git address (git@host:path) keeps its
// form without the user.
func RedactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		if at := strings.Index(s, "@"); at >= 0 && !strings.Contains(s[:at], "/") {
			return s[at+1:]
		}
		return s
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}

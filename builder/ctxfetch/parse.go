package ctxfetch

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/dfgitutil"
)

// Kind says where a context comes from.
type Kind int

const (
	// KindDir is a local directory.
	KindDir Kind = iota
	// KindGit is a git repository, fetched with the git binary.
	KindGit
	// KindHTTP is an http(s) URL of a tarball (the context) or of a plain
	// Dockerfile (with an empty context).
	KindHTTP
	// KindStdin is a tar stream (or a plain Dockerfile) on standard input: "-".
	KindStdin
)

func (k Kind) String() string {
	switch k {
	case KindGit:
		return "git"
	case KindHTTP:
		return "http"
	case KindStdin:
		return "stdin"
	}
	return "dir"
}

// Source is a parsed context location.
type Source struct {
	Kind Kind
	// Raw is the location as given.
	Raw string
	// Git describes a Git source.
	Git *GitRef
}

// GitRef is a git context: BuildKit's URL syntax,
// REMOTE[#REF[:SUBDIR]] or REMOTE?ref=REF&subdir=SUBDIR (also tag=,
// branch=, checksum=, keep-git-dir=, submodules=, mtime=).
type GitRef struct {
	// Remote is the URL git fetches (without the fragment and query).
	Remote string
	// Ref is a branch, a tag, a full ref name or a commit; "" is the
	// remote's HEAD.
	Ref string
	// Checksum, when set, is the commit Ref must resolve to.
	Checksum string
	// SubDir is the directory of the repository that is the context.
	SubDir string
	// KeepGitDir keeps the .git directory in the context
	// (?keep-git-dir=true, or BUILDKIT_CONTEXT_KEEP_GIT_DIR=1).
	KeepGitDir bool
	// Submodules fetches submodules (?submodules=true). Off by default.
	Submodules bool
	// MTimeCommit sets every file's mtime to the commit's time
	// (?mtime=commit; the builder also asks for it under
	// SOURCE_DATE_EPOCH, as BuildKit does).
	MTimeCommit bool
}

// Parse classifies a context location: "-" is standard input; a git URL
// (https://host/repo.git[#ref[:subdir]], git@host:repo.git, ssh://,
// git://) is Git; another http(s) URL is HTTP; anything else is a local
// directory. An existing local path always is a directory, whatever it
// looks like.
func Parse(s string) (Source, error) {
	src := Source{Kind: KindDir, Raw: s}
	if s == "" {
		return src, errors.New("empty build context: give a directory, a git URL, an http(s) URL or - (a tar on standard input)")
	}
	if s == "-" {
		src.Kind = KindStdin
		return src, nil
	}
	lower := strings.ToLower(s)
	remote := strings.HasPrefix(lower, "http://") || strings.HasPrefix(lower, "https://") ||
		strings.HasPrefix(lower, "git://") || strings.HasPrefix(lower, "ssh://") || strings.HasPrefix(lower, "git@")
	if !remote {
		if _, err := os.Lstat(s); err == nil || strings.HasPrefix(s, "/") || strings.HasPrefix(s, ".") || !strings.Contains(s, ":") {
			return src, nil
		}
	}
	g, isGit, err := dfgitutil.ParseGitRef(s)
	if isGit {
		if err != nil {
			return src, fmt.Errorf("git context %s: %w", Redact(s), err)
		}
		ref := &GitRef{Remote: g.Remote, Ref: g.Ref, Checksum: g.Checksum, SubDir: g.SubDir, MTimeCommit: g.MTime == "commit"}
		if g.KeepGitDir != nil {
			ref.KeepGitDir = *g.KeepGitDir
		}
		if g.Submodules != nil {
			ref.Submodules = *g.Submodules
		}
		if g.IndistinguishableFromLocal {
			ref.Remote = "https://" + ref.Remote
		}
		if err := checkSubDir(ref.SubDir); err != nil {
			return src, fmt.Errorf("git context %s: %w", Redact(s), err)
		}
		src.Kind, src.Git = KindGit, ref
		return src, nil
	}
	if strings.HasPrefix(lower, "http://") || strings.HasPrefix(lower, "https://") {
		if _, err := url.Parse(s); err != nil {
			return src, fmt.Errorf("context URL %s: %w", Redact(s), err)
		}
		src.Kind = KindHTTP
		return src, nil
	}
	if remote {
		return src, fmt.Errorf("context %s: not a git URL this version understands (want https://host/repo.git#ref:dir, git@host:repo.git, ssh:// or git://)", Redact(s))
	}
	return src, nil
}

// checkSubDir refuses a subdir that climbs out of the repository.
func checkSubDir(sub string) error {
	if sub == "" {
		return nil
	}
	for _, c := range strings.Split(path.Clean("/"+sub), "/") {
		if c == ".." {
			return fmt.Errorf("subdir %q leaves the repository", sub)
		}
	}
	return nil
}

// Redact hides the password (or token) of a URL's user information, for
// messages: https://user:secret@host/x becomes https://user:xxxxx@host/x.
func Redact(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	} else if u.Scheme == "https" || u.Scheme == "http" {
		// A bare user name in an http URL is usually a token.
		u.User = url.User("xxxxx")
	}
	return u.String()
}

package ctxfetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// allowedProtocols are the transports git may use, for the remote and
// for submodules (GIT_ALLOW_PROTOCOL): never ext:: (runs a command) nor
// file:: (reads the host's files).
const allowedProtocols = "http:https:ssh:git"

var commitish = regexp.MustCompile(`^[0-9a-fA-F]{7,64}$`)

// Git fetches ref into a new directory: a shallow fetch of the ref alone
// (the remote's HEAD when ref.Ref is empty) into a fresh repository kept
// outside the context, then a checkout. A commit the remote does not serve
// by its id (servers need uploadpack.allowReachableSHA1InWant) is found by
// fetching the remote's branches and tags. No hook runs: the repository is
// made from an empty template and core.hooksPath names an empty
// directory. The .git directory is in the context only with KeepGitDir
// (and no SubDir), holding just the fetched commit, with origin set to the
// remote (its password hidden).
func Git(ctx context.Context, ref *GitRef, opts Options) (*Fetched, error) {
	bin, err := exec.LookPath("git")
	if err != nil {
		return nil, fmt.Errorf("git context %s needs the git binary: install git (apt-get install git)", Redact(ref.Remote))
	}
	shown := Redact(ref.Remote)
	what := shown
	if ref.Ref != "" {
		what += " at " + ref.Ref
	}
	top, err := opts.newTop("git-")
	if err != nil {
		return nil, err
	}
	f := &Fetched{top: top, ID: "git " + shown + " subdir=" + path.Clean("/"+ref.SubDir)}
	fail := func(err error) (*Fetched, error) {
		f.Close()
		return nil, fmt.Errorf("git context %s: %w", what, err)
	}
	work := filepath.Join(top, "work")
	empty := filepath.Join(top, "empty")
	gitDir := filepath.Join(top, "repo.git")
	keep := ref.KeepGitDir && path.Clean("/"+ref.SubDir) == "/"
	if keep {
		gitDir = filepath.Join(work, ".git")
	}
	for _, d := range []string{work, empty} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fail(err)
		}
	}
	g := &gitRunner{bin: bin, gitDir: gitDir, work: work, hooks: empty, remote: ref.Remote, shown: shown}
	if _, err := g.run(ctx, "init", "--quiet", "--template="+empty); err != nil {
		return fail(err)
	}
	opts.progress("fetching git context %s", what)
	want := ref.Ref
	if want == "" {
		want = "HEAD"
	}
	commit := ""
	if _, err := g.run(ctx, "fetch", "--quiet", "--depth=1", "--no-tags", "--no-recurse-submodules", "--", ref.Remote, want); err != nil {
		if !commitish.MatchString(ref.Ref) {
			return fail(err)
		}
		// A commit id the server will not serve directly: fetch what it
		// advertises, then look for the commit.
		if _, ferr := g.run(ctx, "fetch", "--quiet", "--no-tags", "--no-recurse-submodules", "--", ref.Remote,
			"+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"); ferr != nil {
			return fail(ferr)
		}
		out, rerr := g.run(ctx, "rev-parse", "--verify", "--quiet", ref.Ref+"^{commit}")
		if rerr != nil {
			return fail(fmt.Errorf("commit %s is not on any branch or tag of the repository", ref.Ref))
		}
		commit = strings.TrimSpace(out)
	} else {
		out, err := g.run(ctx, "rev-parse", "--verify", "FETCH_HEAD^{commit}")
		if err != nil {
			return fail(err)
		}
		commit = strings.TrimSpace(out)
	}
	if ref.Checksum != "" && !strings.HasPrefix(commit, strings.ToLower(ref.Checksum)) {
		return fail(fmt.Errorf("the ref resolves to commit %s, not the expected %s", commit, ref.Checksum))
	}
	f.Commit = commit
	if _, err := g.run(ctx, "checkout", "--quiet", "--force", "--detach", commit); err != nil {
		return fail(err)
	}
	if ref.Submodules {
		if _, err := g.run(ctx, "submodule", "update", "--quiet", "--init", "--recursive", "--depth=1"); err != nil {
			return fail(fmt.Errorf("submodules: %w", err))
		}
	}
	if keep {
		if _, err := g.run(ctx, "remote", "add", "origin", shown); err != nil {
			return fail(err)
		}
		os.Remove(filepath.Join(gitDir, "FETCH_HEAD"))
	}
	out, err := g.run(ctx, "log", "-1", "--format=%ct", commit)
	if err != nil {
		return fail(err)
	}
	if f.CommitTime, err = strconv.ParseInt(strings.TrimSpace(out), 10, 64); err != nil {
		return fail(fmt.Errorf("commit time %q: %w", strings.TrimSpace(out), err))
	}
	dir, err := subDir(work, ref.SubDir)
	if err != nil {
		return fail(err)
	}
	if ref.MTimeCommit {
		if err := setMTimes(dir, time.Unix(f.CommitTime, 0)); err != nil {
			return fail(fmt.Errorf("set mtimes: %w", err))
		}
	}
	f.Dir = dir
	opts.progress("git context %s: commit %s", what, commit)
	return f, nil
}

// gitRunner runs git on one repository with the safety settings.
type gitRunner struct {
	bin, gitDir, work, hooks string
	remote, shown            string
}

func (g *gitRunner) run(ctx context.Context, args ...string) (string, error) {
	full := []string{
		"-c", "core.hooksPath=" + g.hooks,
		"-c", "core.fsmonitor=false",
		"-c", "fetch.fsckObjects=true",
		"-c", "transfer.fsckObjects=true",
		"-c", "advice.detachedHead=false",
		"-c", "init.defaultBranch=main",
		"-c", "protocol.file.allow=never",
		"-c", "submodule.recurse=false",
	}
	full = append(full, "--git-dir="+g.gitDir, "--work-tree="+g.work)
	full = append(full, args...)
	cmd := exec.CommandContext(ctx, g.bin, full...)
	cmd.Dir = g.work
	cmd.Env = append(gitEnv(), "GIT_TERMINAL_PROMPT=0", "GIT_ALLOW_PROTOCOL="+allowedProtocols, "GIT_PROTOCOL_FROM_USER=0")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Stdin = nil
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		msg := strings.TrimSpace(stderr.String())
		if g.remote != "" && g.shown != g.remote {
			msg = strings.ReplaceAll(msg, g.remote, g.shown)
		}
		if len(msg) > 2000 {
			msg = msg[:2000] + "…"
		}
		if msg == "" {
			msg = err.Error()
		}
		return "", fmt.Errorf("git %s: %s", args[0], msg)
	}
	return stdout.String(), nil
}

// subDir resolves sub inside work through real directories only: a
// symlink on the way (which could lead out of the checkout) is an error.
func subDir(work, sub string) (string, error) {
	clean := strings.Trim(path.Clean("/"+sub), "/")
	if clean == "" {
		return work, nil
	}
	dir := work
	for _, c := range strings.Split(clean, "/") {
		if c == ".." || c == ".git" {
			return "", fmt.Errorf("subdir %q: %q is not allowed", sub, c)
		}
		dir = filepath.Join(dir, c)
		fi, err := os.Lstat(dir)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return "", fmt.Errorf("subdir %q does not exist in the repository", sub)
			}
			return "", err
		}
		if !fi.IsDir() {
			return "", fmt.Errorf("subdir %q: %s is not a directory (a symlink is not followed)", sub, c)
		}
	}
	return dir, nil
}

// setMTimes sets the mtime (and atime) of everything under dir to t,
// without following symlinks; directories last, deepest first.
func setMTimes(dir string, t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == ".git" && p != dir {
				return fs.SkipDir
			}
			dirs = append(dirs, p)
			return nil
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, dirs[i], []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	return nil
}

// gitEnv is the environment without the variables that point git at
// another repository or add configuration behind the options' back.
func gitEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "GIT_DIR", k == "GIT_WORK_TREE", k == "GIT_INDEX_FILE", k == "GIT_OBJECT_DIRECTORY",
			k == "GIT_ALTERNATE_OBJECT_DIRECTORIES", k == "GIT_COMMON_DIR", k == "GIT_NAMESPACE",
			k == "GIT_CONFIG_PARAMETERS", strings.HasPrefix(k, "GIT_CONFIG_COUNT"), strings.HasPrefix(k, "GIT_CONFIG_KEY_"),
			strings.HasPrefix(k, "GIT_CONFIG_VALUE_"), k == "GIT_ALLOW_PROTOCOL", k == "GIT_PROTOCOL_FROM_USER":
			continue
		}
		out = append(out, kv)
	}
	return out
}

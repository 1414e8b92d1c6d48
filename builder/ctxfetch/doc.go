// Package ctxfetch turns a build context given as a location into a
// directory on disk: a git repository (`https://host/repo.git#ref:subdir`,
// `git@host:repo.git`, `ssh://`, `git://`), an http(s) URL of a tarball or
// of a plain Dockerfile, or a tar stream (`ibuild build - < ctx.tar`).
//
// What it guarantees:
//
//   - Nothing fetched writes outside the directory it is fetched into:
//     tar entries are confined to their root (names climbing above it are
//     refused, absolute names and symlinks met on the way are resolved as
//     if the root were "/"; see layers.Extract), git checks out into a
//     fresh directory with its repository kept outside it, and a subdir is
//     followed only through real directories, never through a symlink.
//   - Git runs no hook (a fresh repository with an empty template and
//     core.hooksPath pointing at an empty directory), never prompts for
//     credentials, speaks only http, https, ssh and git to remotes (no
//     ext:: or file:: transports, for the remote or its submodules), and
//     fetches submodules only when the URL asks for them (?submodules=true).
//   - A download or a tar stream is bounded (Options.MaxDownload,
//     Options.MaxExtract; defaults DefaultMaxDownload and DefaultMaxExtract)
//     and read as a stream: nothing is held in memory whole.
//
// It does not decide what the build does with the result: the builder
// opens the directory as a build context (with its .dockerignore) as it
// would any other.
package ctxfetch

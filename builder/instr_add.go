package builder

import (
	"context"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/ibuild/ibuild/builder/internal/copier"
)

// add runs ADD: as COPY from the build context, plus local tar archives
// (plain, gzip, bzip2, xz, zstd) extracted into the destination and
// http(s) URLs downloaded (verified with --checksum when given).
func (s *stageRun) add(ctx context.Context, c *instructions.AddCommand) error {
	spec := &copier.Spec{Instr: "ADD", Link: c.Link, Unpack: true}
	if c.Unpack != nil {
		spec.Unpack = *c.Unpack
	}
	if err := s.fillSpec(ctx, spec, &c.SourcesAndDest, c.Chown, c.Chmod, c.ExcludePatterns); err != nil {
		return err
	}
	var local []string
	var urls []string
	for _, src := range spec.Srcs {
		switch {
		case copier.IsGitURL(src):
			return fmt.Errorf("ADD of a git repository (%s) is not supported; clone it into the build context instead", src)
		case copier.IsURL(src):
			urls = append(urls, src)
		default:
			local = append(local, src)
		}
	}
	if c.Checksum != "" && (len(urls) != 1 || len(local) > 0) {
		return fmt.Errorf("--checksum needs exactly one http(s) source")
	}
	spec.Srcs = local
	if len(urls) == 0 {
		return s.commitCopy(ctx, spec, cmdText(c))
	}
	if len(local) > 0 {
		return fmt.Errorf("ADD mixing URLs and local files is not supported; split it into two ADD instructions")
	}
	dir, err := s.b.opts.Store.TempDir("add-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	dl := &downloadFS{files: map[string]string{}}
	var names []string // in the order written, as BuildKit copies them
	for _, u := range urls {
		f := s.prefetched[u]
		if f == nil {
			if f, err = copier.FetchURL(ctx, s.b.opts.HTTPClient, u, c.Checksum, dir); err != nil {
				return err
			}
		}
		s.b.recordURL(u, f.Checksum)
		if err := os.Chmod(f.Path, 0o600); err != nil {
			return err
		}
		if err := os.Chtimes(f.Path, f.ModTime, f.ModTime); err != nil {
			return err
		}
		name := f.Name
		if name == "" {
			// Only a destination with a file name can take it.
			err := noFileName(u, spec.Dest)
			if len(urls) > 1 {
				return err
			}
			name = "download"
			spec.Nameless = map[string]error{"/" + name: err}
		}
		if _, dup := dl.files["/"+name]; !dup {
			names = append(names, "/"+name)
		}
		dl.files["/"+name] = f.Path
	}
	// URL sources are not extracted (docker's rule) and keep their remote
	// name; they are copied from a small tree of the downloads.
	spec.Srcs = names
	spec.From, spec.FromName, spec.Unpack = dl, "download", false
	return s.commitCopy(ctx, spec, cmdText(c))
}

// noFileName is the error for a URL whose file name cannot be derived
// (its path ends in "..") copied to a directory.
func noFileName(rawURL, dest string) error {
	shown := rawURL
	if u, err := url.Parse(rawURL); err == nil {
		shown = copier.RedactURL(u)
	}
	return fmt.Errorf("no file name can be derived from the URL %s (the last element of its path is \"..\"): give the destination a file name, e.g. %s",
		shown, path.Join(dest, "NAME"))
}

// downloadFS is a flat tree of downloaded files, as a COPY source.
type downloadFS struct {
	files map[string]string
}

func (d *downloadFS) Lstat(p string) (fs.FileInfo, string, error) {
	h, ok := d.files[path.Clean("/"+p)]
	if !ok {
		return nil, "", &fs.PathError{Op: "lstat", Path: p, Err: fs.ErrNotExist}
	}
	fi, err := os.Lstat(h)
	return fi, h, err
}

func (d *downloadFS) ReadDir(p string) ([]fs.DirEntry, error) {
	return nil, &fs.PathError{Op: "readdir", Path: p, Err: fs.ErrInvalid}
}

func (d *downloadFS) Resolve(p string) (string, error) { return path.Clean("/" + p), nil }
func (d *downloadFS) FromContext() bool                { return true }

package layers

import (
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFileAtomic replaces path with what fill writes: a temporary file
// beside it (".NAME.tmp-*"), given mode perm, fsynced, renamed over path,
// then the directory fsynced. Readers see the old file or the whole new
// one; after a failure path is as it was and the temporary file is gone.
func WriteFileAtomic(path string, perm fs.FileMode, fill func(io.Writer) error) error {
	tmp, err := writeTempIn(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*", perm, true, fill)
	if err != nil {
		return err
	}
	return renameDurable(tmp, path, true)
}

// writeTempIn writes a new file in dir, named from pattern as
// os.CreateTemp does, with fill, mode perm, fsynced when sync is set, and
// returns its path. Nothing is left behind on failure.
func writeTempIn(dir, pattern string, perm fs.FileMode, sync bool, fill func(io.Writer) error) (string, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	err = fill(f)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// renameDurable renames tmp over path (removing tmp on failure), and with
// sync fsyncs path's directory.
func renameDurable(tmp, path string, sync bool) error {
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	if sync {
		syncDir(filepath.Dir(path))
	}
	return nil
}

// bytesFill writes b.
func bytesFill(b []byte) func(io.Writer) error {
	return func(w io.Writer) error {
		_, err := io.Copy(w, bytes.NewReader(b))
		return err
	}
}

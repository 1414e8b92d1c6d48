package layers

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// RootFS is a read-only merged view of snapshot directories (bottom to
// top), as an overlay mount of them would show it, computed path by path:
// nothing is copied and the tree is never walked as a whole. A layer hides
// lower layers' NAME with a .wh.NAME marker or a 0/0 character device, and
// a directory's lower contents with a .wh..wh..opq marker or the
// trusted.overlay.opaque / user.overlay.opaque xattr; a non-directory hides
// whatever lower layers have below its path. Symlinks inside the layers are
// never followed on the host; Resolve follows them as the image would.
type RootFS struct {
	dirs []string
	// snapshots: dirs are the store's snapshots, which nothing changes.
	snapshots bool

	// shown remembers, for a view of snapshots, which layers' copies of a
	// directory show through (see showing), by in-image path.
	mu    sync.Mutex
	shown map[string][]int
}

// NewRootFS returns the merged view of dirs, bottom layer first.
func NewRootFS(dirs []string) *RootFS {
	return &RootFS{dirs: slices.Clone(dirs)}
}

// NewSnapshotRootFS is NewRootFS for dirs that are the store's snapshots
// (Snapshots), whose files nothing changes: a copy may hard-link them.
func NewSnapshotRootFS(dirs []string) *RootFS {
	return &RootFS{dirs: slices.Clone(dirs), snapshots: true}
}

// Immutable reports whether the view's files never change (its
// directories are snapshots).
func (r *RootFS) Immutable() bool { return r.snapshots }

// maxSymlinks is how many symlinks Resolve follows before giving up.
const maxSymlinks = 255

type lookState int

const (
	lookAbsent lookState = iota // nothing here: look in the layer below
	lookFound                   // the entry is here
	lookHidden                  // hidden from here down: it does not exist
)

// imagePathComponents cleans the absolute in-image path p into components.
func imagePathComponents(p string) []string {
	c := path.Clean("/" + p)
	if c == "/" {
		return nil
	}
	return strings.Split(c[1:], "/")
}

// look says what layer i holds at the path made of comps.
func (r *RootFS) look(i int, comps []string) (lookState, fs.FileInfo, string, error) {
	host := r.dirs[i]
	if len(comps) == 0 {
		fi, err := os.Lstat(host)
		if err != nil {
			return lookAbsent, nil, "", err
		}
		return lookFound, fi, host, nil
	}
	for k, c := range comps {
		host = filepath.Join(host, c)
		fi, err := os.Lstat(host)
		switch {
		case err == nil && isWhiteoutCharDev(fi):
			return lookHidden, nil, "", nil
		case err == nil && k == len(comps)-1:
			return lookFound, fi, host, nil
		case err == nil && fi.IsDir():
			continue
		case err == nil:
			return lookHidden, nil, "", nil // a non-directory hides what is below it
		case !errors.Is(err, fs.ErrNotExist):
			return lookAbsent, nil, "", err
		}
		if r.masksBelow(i, comps[:k+1]) {
			return lookHidden, nil, "", nil
		}
		return lookAbsent, nil, "", nil
	}
	panic("unreachable")
}

// masksBelow reports whether layer i hides lower layers' copy of the path
// made of comps, whose parent directories all exist in layer i: some
// ancestor is opaque, or some component has a .wh. marker beside it.
func (r *RootFS) masksBelow(i int, comps []string) bool {
	host := r.dirs[i]
	for _, c := range comps {
		if isOpaqueLayerDir(host) || lexists(filepath.Join(host, whiteoutPrefix+c)) {
			return true
		}
		host = filepath.Join(host, c)
	}
	return false
}

func isWhiteoutCharDev(fi fs.FileInfo) bool {
	if fi.Mode()&fs.ModeCharDevice == 0 {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Rdev == 0
}

// isOpaqueLayerDir reports whether the host directory dir hides lower layers'
// contents.
func isOpaqueLayerDir(dir string) bool {
	if lexists(filepath.Join(dir, whiteoutOpaque)) {
		return true
	}
	buf := make([]byte, 8)
	for _, attr := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
		if n, err := unix.Lgetxattr(dir, attr, buf); err == nil && n == 1 && buf[0] == 'y' {
			return true
		}
	}
	return false
}

// Lstat describes the in-image path p (absolute; cleaned lexically; no
// symlink followed, not even in parent components, so resolve first) and
// returns the host path of the topmost layer's copy. It fails with an error
// matching fs.ErrNotExist if p is absent or whited out.
func (r *RootFS) Lstat(p string) (fs.FileInfo, string, error) {
	comps := imagePathComponents(p)
	for _, c := range comps {
		if strings.HasPrefix(c, whiteoutPrefix) {
			return nil, "", &fs.PathError{Op: "lstat", Path: p, Err: fs.ErrNotExist}
		}
	}
	if r.snapshots && len(comps) > 0 {
		return r.lstatShown(p, comps)
	}
	for i := len(r.dirs) - 1; i >= 0; i-- {
		st, fi, host, err := r.look(i, comps)
		if err != nil {
			return nil, "", &fs.PathError{Op: "lstat", Path: p, Err: err}
		}
		if st == lookFound {
			return fi, host, nil
		}
		if st == lookHidden {
			break
		}
	}
	return nil, "", &fs.PathError{Op: "lstat", Path: p, Err: fs.ErrNotExist}
}

// lstatShown is Lstat in a view of snapshots: the entry is looked for only
// in the layers whose copy of its parent directory shows through, and
// those are worked out once per directory (a COPY of a tree from a stage
// of many layers looks up every file: one lstat each instead of a walk of
// every layer's path and markers).
func (r *RootFS) lstatShown(p string, comps []string) (fs.FileInfo, string, error) {
	parent, name := comps[:len(comps)-1], comps[len(comps)-1]
	layers, err := r.showing(parent)
	if err != nil {
		return nil, "", &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	for _, i := range layers {
		dir := filepath.Join(append([]string{r.dirs[i]}, parent...)...)
		host := filepath.Join(dir, name)
		fi, err := os.Lstat(host)
		switch {
		case err == nil && isWhiteoutCharDev(fi):
			return nil, "", &fs.PathError{Op: "lstat", Path: p, Err: fs.ErrNotExist}
		case err == nil:
			return fi, host, nil
		case !errors.Is(err, fs.ErrNotExist):
			return nil, "", &fs.PathError{Op: "lstat", Path: p, Err: err}
		case lexists(filepath.Join(dir, whiteoutPrefix+name)):
			return nil, "", &fs.PathError{Op: "lstat", Path: p, Err: fs.ErrNotExist}
		}
	}
	return nil, "", &fs.PathError{Op: "lstat", Path: p, Err: fs.ErrNotExist}
}

// showing lists, top layer first, the layers whose copy of the in-image
// directory comps the merged view shows: each has it as a directory, and
// none above hides the ones below (a whiteout, a non-directory, an opaque
// directory or a .wh. marker beside it). It is empty when the view has no
// such directory. Only for a view of snapshots, whose layers never change:
// the answer is remembered.
func (r *RootFS) showing(comps []string) ([]int, error) {
	key := strings.Join(comps, "/")
	r.mu.Lock()
	l, ok := r.shown[key]
	r.mu.Unlock()
	if ok {
		return l, nil
	}
	var out []int
	if len(comps) == 0 {
		for i := len(r.dirs) - 1; i >= 0; i-- {
			out = append(out, i)
			if isOpaqueLayerDir(r.dirs[i]) {
				break
			}
		}
	} else {
		parent, name := comps[:len(comps)-1], comps[len(comps)-1]
		above, err := r.showing(parent)
		if err != nil {
			return nil, err
		}
		for _, i := range above {
			pdir := filepath.Join(append([]string{r.dirs[i]}, parent...)...)
			host := filepath.Join(pdir, name)
			fi, err := os.Lstat(host)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, err
			}
			if err == nil && !fi.IsDir() {
				break // a whiteout or a non-directory hides the rest
			}
			masks := lexists(filepath.Join(pdir, whiteoutPrefix+name))
			if err == nil {
				out = append(out, i)
				masks = masks || isOpaqueLayerDir(host)
			}
			if masks {
				break
			}
		}
	}
	r.mu.Lock()
	if r.shown == nil {
		r.shown = map[string][]int{}
	}
	r.shown[key] = out
	r.mu.Unlock()
	return out, nil
}

// Resolve follows symlinks in p as if the merged view were "/": ".." never
// climbs above the root, so a link to "/../../etc" means "/etc". It follows
// at most 255 links, including one in the final component, and returns the
// clean absolute in-image path. Components that do not exist are kept as
// they are.
func (r *RootFS) Resolve(p string) (string, error) { return r.resolve(p, true) }

// ResolveParent is Resolve without following the final component.
func (r *RootFS) ResolveParent(p string) (string, error) { return r.resolve(p, false) }

func (r *RootFS) resolve(p string, followFinal bool) (string, error) {
	return ResolveIn(p, followFinal, r.Lstat)
}

// LstatFunc describes an in-tree path without following a final symlink
// and gives the host path to read it from.
type LstatFunc func(p string) (fs.FileInfo, string, error)

// ResolveIn follows the symlinks of the in-tree path p in the tree lstat
// describes, as if the tree's root were "/": ".." never climbs above it and
// absolute link targets start again from it. It follows at most 255 links
// (including the final component's when followFinal) and returns the clean
// absolute path. Components that do not exist are kept as they are. Both
// image root filesystems and build contexts are resolved with it.
func ResolveIn(p string, followFinal bool, lstat LstatFunc) (string, error) {
	todo := strings.Split(p, "/")
	resolved := "/"
	links := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			resolved = path.Dir(resolved)
			continue
		}
		next := path.Join(resolved, c)
		last := !slices.ContainsFunc(todo, func(s string) bool { return s != "" && s != "." })
		if last && !followFinal {
			resolved = next
			continue
		}
		fi, host, err := lstat(next)
		if errors.Is(err, fs.ErrNotExist) || err == nil && fi.Mode()&fs.ModeSymlink == 0 {
			resolved = next
			continue
		} else if err != nil {
			return "", err
		}
		links++
		if links > maxSymlinks {
			return "", &fs.PathError{Op: "resolve", Path: p, Err: syscall.ELOOP}
		}
		target, err := os.Readlink(host)
		if err != nil {
			return "", &fs.PathError{Op: "resolve", Path: p, Err: err}
		}
		if strings.HasPrefix(target, "/") {
			resolved = "/"
		}
		todo = append(strings.Split(target, "/"), todo...)
	}
	return resolved, nil
}

// ReadFile reads the regular file at p, following symlinks.
func (r *RootFS) ReadFile(p string) ([]byte, error) {
	rp, err := r.Resolve(p)
	if err != nil {
		return nil, err
	}
	fi, host, err := r.Lstat(rp)
	if err != nil {
		return nil, &fs.PathError{Op: "read", Path: p, Err: errors.Unwrap(err)}
	}
	if !fi.Mode().IsRegular() {
		if fi.IsDir() {
			return nil, &fs.PathError{Op: "read", Path: p, Err: syscall.EISDIR}
		}
		return nil, &fs.PathError{Op: "read", Path: p, Err: fmt.Errorf("not a regular file (%s)", fi.Mode().Type())}
	}
	return os.ReadFile(host)
}

// ReadDir lists the directory p (following symlinks) as the merged view
// shows it, sorted by name. Each entry is the topmost layer's.
func (r *RootFS) ReadDir(p string) ([]fs.DirEntry, error) {
	rp, err := r.Resolve(p)
	if err != nil {
		return nil, err
	}
	comps := imagePathComponents(rp)
	var out []fs.DirEntry
	seen := map[string]bool{}
	hidden := map[string]bool{}
	found := false
	for i := len(r.dirs) - 1; i >= 0; i-- {
		st, fi, host, err := r.look(i, comps)
		if err != nil {
			return nil, &fs.PathError{Op: "readdir", Path: p, Err: err}
		}
		if st == lookHidden {
			break
		}
		if st == lookAbsent {
			continue
		}
		if !fi.IsDir() {
			if !found {
				return nil, &fs.PathError{Op: "readdir", Path: p, Err: syscall.ENOTDIR}
			}
			break
		}
		found = true
		ents, err := os.ReadDir(host)
		if err != nil {
			return nil, &fs.PathError{Op: "readdir", Path: p, Err: err}
		}
		var layerHidden []string
		for _, e := range ents {
			n := e.Name()
			if strings.HasPrefix(n, whiteoutPrefix) {
				layerHidden = append(layerHidden, strings.TrimPrefix(n, whiteoutPrefix))
				continue
			}
			if e.Type()&fs.ModeCharDevice != 0 {
				if info, err := e.Info(); err == nil && isWhiteoutCharDev(info) {
					layerHidden = append(layerHidden, n)
					continue
				}
			}
			if !seen[n] && !hidden[n] {
				seen[n] = true
				out = append(out, e)
			}
		}
		for _, n := range layerHidden {
			hidden[n] = true
		}
		if isOpaqueLayerDir(host) || r.masksBelow(i, comps) {
			break
		}
	}
	if !found {
		return nil, &fs.PathError{Op: "readdir", Path: p, Err: fs.ErrNotExist}
	}
	slices.SortFunc(out, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return out, nil
}

// Flatten writes the merged filesystem of layers (bottom first) to w as one
// tar stream, like go-containerregistry's mutate.Extract: layers are read
// top down, an entry is written only if no higher layer replaced, whited
// out or made opaque its path, and whiteout markers are consumed. Entry
// names are cleaned and made relative, so none starts with "/" or climbs
// out with "..". A hardlink whose target a higher layer replaced (or that
// precedes its target) becomes a copy of the target's content from its own
// layer, read in a second pass. Within one layer, the first entry of a
// duplicated path wins. Flatten does not close w.
func Flatten(ctx context.Context, w io.Writer, layers []v1.Layer) error {
	tw := tar.NewWriter(w)
	f := &flattener{
		tw:      tw,
		emitted: map[string]bool{},
		gone:    map[string]bool{},
		opaque:  map[string]bool{},
	}
	for i := len(layers) - 1; i >= 0; i-- {
		if err := f.layer(ctx, layers[i]); err != nil {
			return fmt.Errorf("flatten layer %d: %w", i+1, err)
		}
	}
	return tw.Close()
}

type flattener struct {
	tw *tar.Writer
	// emitted holds every path written so far.
	emitted map[string]bool
	// gone holds paths whose lower copies (and everything under them) are
	// hidden: whited out, or written as non-directories.
	gone map[string]bool
	// opaque holds directories whose lower contents are hidden.
	opaque map[string]bool
}

// flatName makes a tar entry name relative and confined: "" is the root.
func flatName(n string) string {
	return strings.TrimPrefix(path.Clean("/"+n), "/")
}

// blocked reports whether a higher layer hides name.
func (f *flattener) blocked(name string) bool {
	if f.emitted[name] || f.gone[name] {
		return true
	}
	for d := path.Dir(name); d != "."; d = path.Dir(d) {
		if f.gone[d] || f.opaque[d] {
			return true
		}
	}
	return f.opaque[""]
}

func (f *flattener) layer(ctx context.Context, l v1.Layer) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var pendingGone, pendingOpaque []string
	var orphans []*tar.Header // hardlinks whose target this layer has not written
	own := map[string]bool{}  // files and links written from this layer
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		name := flatName(hdr.Name)
		base, dir := path.Base(name), path.Dir(name)
		if dir == "." {
			dir = ""
		}
		switch {
		case name == "":
			continue // the root directory itself
		case base == whiteoutOpaque:
			pendingOpaque = append(pendingOpaque, dir)
			continue
		case strings.HasPrefix(base, whiteoutMeta):
			continue
		case strings.HasPrefix(base, whiteoutPrefix):
			pendingGone = append(pendingGone, path.Join(dir, strings.TrimPrefix(base, whiteoutPrefix)))
			continue
		}
		if f.blocked(name) {
			if hdr.Typeflag != tar.TypeDir {
				// Replaced from above, it still replaced what is
				// below: a directory there is gone with its contents.
				pendingGone = append(pendingGone, name)
			}
			continue
		}
		hdr.Name = name
		if hdr.Typeflag == tar.TypeDir {
			hdr.Name += "/"
		}
		hdr.Format = tar.FormatPAX
		f.emitted[name] = true
		if hdr.Typeflag != tar.TypeDir {
			f.gone[name] = true
		}
		if hdr.Typeflag == tar.TypeLink {
			hdr.Linkname = flatName(hdr.Linkname)
			if !own[hdr.Linkname] {
				orphans = append(orphans, hdr)
				continue
			}
		}
		if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeLink {
			own[name] = true
		}
		if err := f.tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := io.Copy(f.tw, tr); err != nil {
				return err
			}
		}
	}
	// Drain, so a verifying reader checks the whole layer.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return err
	}
	if len(orphans) > 0 {
		if err := f.orphanLinks(ctx, l, orphans); err != nil {
			return err
		}
	}
	for _, g := range pendingGone {
		f.gone[g] = true
	}
	for _, o := range pendingOpaque {
		f.opaque[o] = true
	}
	return nil
}

// orphanLinks writes hardlinks whose target was not written from their
// own layer: the first link to a target becomes a regular file with the
// target's content from this layer, the others link to it. A link whose
// target is not a regular file of this layer is written unchanged.
func (f *flattener) orphanLinks(ctx context.Context, l v1.Layer, orphans []*tar.Header) error {
	byTarget := map[string][]*tar.Header{}
	for _, o := range orphans {
		byTarget[o.Linkname] = append(byTarget[o.Linkname], o)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for len(byTarget) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return err
		}
		name := flatName(hdr.Name)
		links := byTarget[name]
		if hdr.Typeflag != tar.TypeReg || len(links) == 0 {
			continue
		}
		delete(byTarget, name)
		first := *hdr
		first.Name, first.Format = links[0].Name, tar.FormatPAX
		if err := f.tw.WriteHeader(&first); err != nil {
			return err
		}
		if _, err := io.Copy(f.tw, tr); err != nil {
			return err
		}
		for _, o := range links[1:] {
			o.Linkname = links[0].Name
			if err := f.tw.WriteHeader(o); err != nil {
				return err
			}
		}
	}
	for _, target := range slices.Sorted(maps.Keys(byTarget)) {
		for _, o := range byTarget[target] {
			if err := f.tw.WriteHeader(o); err != nil {
				return err
			}
		}
	}
	return nil
}

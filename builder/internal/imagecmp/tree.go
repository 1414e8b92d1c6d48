package imagecmp

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Kind is a file type of a flattened tree.
type Kind byte

// File types.
const (
	Regular Kind = iota + 1
	Dir
	Symlink
	CharDevice
	BlockDevice
	FIFO
)

func (k Kind) String() string {
	switch k {
	case Regular:
		return "file"
	case Dir:
		return "dir"
	case Symlink:
		return "symlink"
	case CharDevice:
		return "char-device"
	case BlockDevice:
		return "block-device"
	case FIFO:
		return "fifo"
	}
	return fmt.Sprintf("kind(%d)", byte(k))
}

// Inode is what a path of a flattened tree points to; hard-linked paths
// share one Inode.
type Inode struct {
	Kind Kind
	// Mode is the permission bits with setuid, setgid and sticky (07777).
	Mode     int64
	UID, GID int
	// Size and Digest (sha256 of the content) are set for regular files.
	Size   int64
	Digest string
	// Target is a symlink's target.
	Target string
	// Major and Minor are a device's numbers.
	Major, Minor int64

	// layer is the index of the layer that last wrote this inode, for
	// opaque directories (which hide what lower layers put below them).
	layer int
}

// Tree is a flattened image file system: cleaned relative paths
// ("etc/passwd") to inodes. The root directory itself is not recorded.
type Tree struct {
	files map[string]*Inode
}

// NewTree returns an empty tree.
func NewTree() *Tree { return &Tree{files: map[string]*Inode{}} }

// Flatten applies the layers of img in order.
func Flatten(img v1.Image) (*Tree, error) {
	ls, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("layers: %w", err)
	}
	t := NewTree()
	for i, l := range ls {
		rc, err := l.Uncompressed()
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		err = t.Apply(rc, i)
		rc.Close()
		if err != nil {
			d, _ := l.Digest()
			return nil, fmt.Errorf("layer %d (%s): %w", i, d, err)
		}
	}
	return t, nil
}

// Paths returns the tree's paths, sorted.
func (t *Tree) Paths() []string {
	ps := make([]string, 0, len(t.files))
	for p := range t.files {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return ps
}

// Get returns the inode at p ("a/b", no leading slash), or nil.
func (t *Tree) Get(p string) *Inode { return t.files[p] }

// Links returns the other paths sharing p's inode, sorted; nil for
// directories and paths with one link.
func (t *Tree) Links(p string) []string {
	n := t.files[p]
	if n == nil || n.Kind == Dir {
		return nil
	}
	var out []string
	for q, m := range t.files {
		if m == n && q != p {
			out = append(out, q)
		}
	}
	sort.Strings(out)
	return out
}

// cleanName turns a tar entry name into a tree path; "" is the root.
func cleanName(name string) string {
	p := path.Clean("/" + name)
	return strings.TrimPrefix(p, "/")
}

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

// Apply applies one layer tar (uncompressed) as layer number index.
func (t *Tree) Apply(r io.Reader, index int) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		p := cleanName(h.Name)
		dir, base := path.Split(p)
		dir = strings.TrimSuffix(dir, "/")
		switch {
		case base == opaqueMarker:
			t.removeBelow(dir, func(n *Inode) bool { return n.layer < index })
			continue
		case strings.HasPrefix(base, whiteoutPrefix):
			t.remove(path.Join(dir, strings.TrimPrefix(base, whiteoutPrefix)))
			continue
		case p == "":
			continue // the root directory's own attributes are not compared
		}
		n := &Inode{Mode: h.Mode & 0o7777, UID: h.Uid, GID: h.Gid, layer: index}
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // TypeRegA appears in old layers
			n.Kind = Regular
			sum := sha256.New()
			size, err := io.Copy(sum, tr)
			if err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
			n.Size, n.Digest = size, "sha256:"+hex.EncodeToString(sum.Sum(nil))
		case tar.TypeDir:
			n.Kind = Dir
		case tar.TypeSymlink:
			n.Kind, n.Target = Symlink, h.Linkname
		case tar.TypeChar:
			n.Kind, n.Major, n.Minor = CharDevice, h.Devmajor, h.Devminor
		case tar.TypeBlock:
			n.Kind, n.Major, n.Minor = BlockDevice, h.Devmajor, h.Devminor
		case tar.TypeFifo:
			n.Kind = FIFO
		case tar.TypeLink:
			target := cleanName(h.Linkname)
			tn := t.files[target]
			if tn == nil {
				return fmt.Errorf("%s: hard link to %s, which is not in the tree", h.Name, h.Linkname)
			}
			if tn.Kind == Dir {
				return fmt.Errorf("%s: hard link to directory %s", h.Name, h.Linkname)
			}
			t.put(p, tn)
			continue
		default:
			return fmt.Errorf("%s: unsupported tar entry type %q", h.Name, h.Typeflag)
		}
		if old := t.files[p]; old != nil && old.Kind == Dir && n.Kind == Dir {
			// A directory over a directory keeps its children.
			t.files[p] = n
			continue
		}
		t.put(p, n)
	}
}

// put sets p to n, replacing what was there (and below it), and makes
// missing parents as root-owned 0755 directories, as extraction does.
func (t *Tree) put(p string, n *Inode) {
	t.remove(p)
	for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
		if pn := t.files[d]; pn != nil {
			if pn.Kind == Dir {
				break
			}
			t.remove(d)
		}
		t.files[d] = &Inode{Kind: Dir, Mode: 0o755, layer: n.layer}
	}
	t.files[p] = n
}

// remove deletes p and everything below it.
func (t *Tree) remove(p string) {
	delete(t.files, p)
	t.removeBelow(p, func(*Inode) bool { return true })
}

// removeBelow deletes the paths strictly below dir for which drop says so;
// dir "" is the root.
func (t *Tree) removeBelow(dir string, drop func(*Inode) bool) {
	prefix := dir + "/"
	if dir == "" {
		prefix = ""
	}
	for q, n := range t.files {
		if strings.HasPrefix(q, prefix) && drop(n) {
			delete(t.files, q)
		}
	}
}

package builder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/layers"
)

// Working containers are buildah's: an image being built by separate
// commands (from, run, copy, config, commit) instead of a Dockerfile. Each
// lives in the store under containers/<name>/, survives between
// processes, and is changed by one process at a time. Every operation is
// carried out by the Dockerfile executor itself: `ibuild copy` runs a COPY
// instruction, `ibuild run` a RUN, `ibuild config --env` an ENV, on the
// container, so the two ways of building are one engine and give the same
// layers, config and history for the same steps.

// ContainerState is what the store keeps of a working container.
type ContainerState struct {
	Name string `json:"name"`
	// ID is a random hex identifier.
	ID string `json:"id"`
	// Image is the reference the container was made from, and
	// ImageDigest its manifest digest ("" for scratch).
	Image       string      `json:"image"`
	ImageDigest string      `json:"image_digest,omitempty"`
	Platform    v1.Platform `json:"platform"`
	Created     time.Time   `json:"created"`
	// BaseLayers is how many of Layers came from the image.
	BaseLayers int                 `json:"base_layers"`
	Layers     []layers.Descriptor `json:"layers"`
	Config     v1.ConfigFile       `json:"config"`
	// Annotations go into the committed manifest.
	Annotations map[string]string `json:"annotations,omitempty"`
	// MountPoint is where `ibuild mount` mounted the container's root
	// file system, if it is mounted.
	MountPoint string `json:"mount_point,omitempty"`
}

// FromOptions configure From.
type FromOptions struct {
	// Name of the container; "" makes one from the image's name.
	Name string
	// Platform of the image to use; zero means the host's.
	Platform v1.Platform
	// Options supply the pull policy, registries and progress for pulling
	// the image.
	Options StepOptions
}

var containerNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// From creates a working container from image ("scratch" for none): a
// local image (pulled first when missing, as FROM does), an
// oci-layout:// path, or a registry reference.
func From(ctx context.Context, store *layers.Store, image string, opts FromOptions) (*Container, error) {
	if store == nil {
		return nil, errors.New("builder: From needs a store")
	}
	platform := opts.Platform
	if platform.OS == "" {
		platform = HostPlatform()
	}
	bo := Options{Store: store, StepOptions: opts.Options}
	b, err := newOpsBuild(ctx, &bo, "ibuild from", "FROM scratch\n", "", platform)
	if err != nil {
		return nil, err
	}
	unlock, err := store.Lock(ctx, false)
	if err != nil {
		return nil, err
	}
	defer unlock()
	base, err := b.resolveImage(ctx, image, platform)
	if err != nil {
		return nil, fmt.Errorf("from %s: %w", image, err)
	}
	st := &ContainerState{Image: image, Platform: platform, Created: time.Now().UTC()}
	if base != nil {
		// Keep the image's blobs in the store even when it came from an
		// OCI layout.
		if _, err := store.WriteImage(ctx, base); err != nil {
			return nil, fmt.Errorf("from %s: %w", image, err)
		}
		d, err := base.Digest()
		if err != nil {
			return nil, err
		}
		st.ImageDigest = d.String()
	}
	c, err := newContainer(store, base, platform, containerOptions{created: st.Created, warn: b.warn})
	if err != nil {
		return nil, fmt.Errorf("from %s: %w", image, err)
	}
	c.config.Config.OnBuild = nil
	for _, l := range c.layers {
		d, err := descriptorOf(l)
		if err != nil {
			return nil, err
		}
		st.Layers = append(st.Layers, d)
	}
	st.BaseLayers = len(st.Layers)
	st.ID = randomHex()
	name := opts.Name
	if name == "" {
		name = defaultContainerName(image)
	}
	if !containerNameRE.MatchString(name) {
		return nil, fmt.Errorf("invalid container name %q (letters, digits, _ . -; up to 128)", name)
	}
	dir, err := createContainerDir(store, name, opts.Name == "")
	if err != nil {
		return nil, err
	}
	st.Name = filepath.Base(dir)
	c.work = &workState{state: st, dir: dir}
	if err := c.save(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return c, nil
}

// defaultContainerName is buildah's: the image's last path element
// without tag or digest, then "-working-container".
func defaultContainerName(image string) string {
	base := image
	if i := strings.LastIndex(base, "/"); i >= 0 {
		base = base[i+1:]
	}
	if i := strings.IndexAny(base, ":@"); i >= 0 {
		base = base[:i]
	}
	base = regexp.MustCompile(`[^A-Za-z0-9_.-]`).ReplaceAllString(base, "")
	if base == "" {
		base = "scratch"
	}
	return base + "-working-container"
}

// createContainerDir makes Root/containers/<name>; with numbered, a taken
// name gets -1, -2, ... as buildah does.
func createContainerDir(store *layers.Store, name string, numbered bool) (string, error) {
	root := store.ContainersDir()
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", err
	}
	for i := 0; i < 1000; i++ {
		n := name
		if i > 0 {
			n = name + "-" + strconv.Itoa(i)
		}
		err := os.Mkdir(filepath.Join(root, n), 0o755)
		if err == nil {
			return filepath.Join(root, n), nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", err
		}
		if !numbered {
			return "", fmt.Errorf("a container named %s already exists", name)
		}
	}
	return "", fmt.Errorf("no free container name for %s", name)
}

// workState ties a Container to its state in the store.
type workState struct {
	state  *ContainerState
	dir    string
	unlock func()
}

// OpenContainer opens the working container name for changes: it is
// locked against every other process until Close. A container another
// process is changing gives an error that says so, rather than waiting.
func OpenContainer(ctx context.Context, store *layers.Store, name string) (*Container, error) {
	if !containerNameRE.MatchString(name) {
		return nil, fmt.Errorf("invalid container name %q", name)
	}
	dir := filepath.Join(store.ContainersDir(), name)
	if _, err := os.Stat(filepath.Join(dir, "state.json")); err != nil {
		return nil, fmt.Errorf("container %s: %w", name, ErrNoContainer)
	}
	unlock, ok, err := layers.TryLockFile(filepath.Join(dir, "lock"), true)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", name, err)
	}
	if !ok {
		return nil, fmt.Errorf("container %s is in use by another ibuild process (a run, copy, commit ... of it); wait for it to finish", name)
	}
	st, err := readContainerState(dir)
	if err != nil {
		unlock()
		return nil, err
	}
	c, err := st.container(store)
	if err != nil {
		unlock()
		return nil, err
	}
	c.work = &workState{state: st, dir: dir, unlock: unlock}
	return c, nil
}

// ErrNoContainer is wrapped by errors about containers that do not exist.
var ErrNoContainer = errors.New("no such container")

// Containers lists the working containers of the store, by name.
func Containers(ctx context.Context, store *layers.Store) ([]ContainerState, error) {
	root := store.ContainersDir()
	ents, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []ContainerState
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		st, err := readContainerState(filepath.Join(root, e.Name()))
		if err != nil {
			continue // being created or removed
		}
		out = append(out, *st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// InspectContainer reads a container's state without locking it.
func InspectContainer(store *layers.Store, name string) (*ContainerState, error) {
	if !containerNameRE.MatchString(name) {
		return nil, fmt.Errorf("container %s: %w", name, ErrNoContainer)
	}
	st, err := readContainerState(filepath.Join(store.ContainersDir(), name))
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", name, ErrNoContainer)
	}
	return st, nil
}

func readContainerState(dir string) (*ContainerState, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, err
	}
	var st ContainerState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("container state %s: %w", dir, err)
	}
	return &st, nil
}

// container makes the engine's Container from a saved state.
func (st *ContainerState) container(store *layers.Store) (*Container, error) {
	c := &Container{store: store, platform: st.Platform, config: *st.Config.DeepCopy(),
		opts: containerOptions{created: time.Now().UTC()}}
	for i, d := range st.Layers {
		if i >= len(c.config.RootFS.DiffIDs) {
			break // reported below
		}
		c.layers = append(c.layers, store.LazyLayer(c.config.RootFS.DiffIDs[:i+1], d, layers.CommitOptions{}))
	}
	if len(c.layers) != len(c.config.RootFS.DiffIDs) {
		return nil, fmt.Errorf("container %s is inconsistent: %d layers, %d diffIDs", st.Name, len(c.layers), len(c.config.RootFS.DiffIDs))
	}
	return c, nil
}

// Name is the working container's name ("" for a Dockerfile stage's).
func (c *Container) Name() string {
	if c.work == nil {
		return ""
	}
	return c.work.state.Name
}

// State is a copy of the working container's saved state.
func (c *Container) State() ContainerState {
	st := *c.work.state
	st.Config = *c.config.DeepCopy()
	return st
}

// save writes the container's state atomically and pins its layers (and
// their snapshots) against Prune.
func (c *Container) save(ctx context.Context) error {
	st := c.work.state
	st.Config = *c.config.DeepCopy()
	st.Layers = st.Layers[:0]
	for _, l := range c.layers {
		d, err := descriptorOf(l)
		if err != nil {
			return err
		}
		st.Layers = append(st.Layers, d)
	}
	var pins []v1.Hash
	for _, d := range st.Layers {
		if !d.Lazy() {
			pins = append(pins, d.Digest)
		}
	}
	pins = append(pins, layers.ChainIDs(st.Config.RootFS.DiffIDs)...)
	if err := c.store.SetRoot(ctx, "container-"+st.Name, pins); err != nil {
		return err
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return layers.WriteFileAtomic(filepath.Join(c.work.dir, "state.json"), 0o644, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
}

// Close releases the container's lock.
func (c *Container) Close() {
	if c.work != nil && c.work.unlock != nil {
		c.work.unlock()
		c.work.unlock = nil
	}
}

// Remove deletes the working container: its state, its pins and its mount,
// if mounted. Its layers stay until Prune.
func (c *Container) Remove(ctx context.Context) error {
	st := c.work.state
	if st.MountPoint != "" {
		if err := unmountAll(st.MountPoint); err != nil {
			return fmt.Errorf("remove %s: %w", st.Name, err)
		}
	}
	if err := c.store.SetRoot(ctx, "container-"+st.Name, nil); err != nil {
		return err
	}
	// state.json goes first, so a half-removed container is not listed.
	if err := os.Remove(filepath.Join(c.work.dir, "state.json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	c.Close()
	return os.RemoveAll(c.work.dir)
}

// descriptorOf describes a layer of the store for the state file.
func descriptorOf(l v1.Layer) (layers.Descriptor, error) {
	if d, ok := layers.LayerDescriptor(l); ok {
		return d, nil // a lazy layer stays lazy
	}
	var d layers.Descriptor
	var err error
	if d.MediaType, err = l.MediaType(); err != nil {
		return d, err
	}
	if d.Digest, err = l.Digest(); err != nil {
		return d, err
	}
	if d.Size, err = l.Size(); err != nil {
		return d, err
	}
	if d.DiffID, err = l.DiffID(); err != nil {
		return d, err
	}
	return d, nil
}

// opsSink passes a working container operation's events on, with the
// step's output lines sent to out.
type opsSink struct {
	next progress.Sink
	out  func(string)
}

func (o opsSink) Emit(e progress.Event) {
	if e.Kind == progress.Log && e.Instruction != "" && o.out != nil {
		o.out(e.Message)
		return
	}
	if o.next != nil {
		o.next.Emit(e)
	}
}

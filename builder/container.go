package builder

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/layers"
)

// Container is a working container: an image being built step by step. It
// holds the layers so far and the config they will be committed with.
// Instructions change it through its methods; the Dockerfile executor and
// (later) the buildah-style commands share it.
type Container struct {
	store    *layers.Store
	platform v1.Platform
	layers   []v1.Layer
	config   v1.ConfigFile
	opts     containerOptions
	// lastLayer is the layer the current step added, for its cache record.
	lastLayer *layers.Descriptor
	// chain is the chain ID of the layers of, for chainID.
	chain struct {
		of []v1.Hash
		id string
	}
	// env indexes the positions of the ENV keys (see envAt).
	env struct {
		at  map[string]int
		len int
	}
	// work is set for a working container (From, OpenContainer).
	work *workState
	// rootfs caches the merged view of layers and dirs the snapshot
	// directories it is made of; both nil after a change.
	rootfs *layers.RootFS
	dirs   []string
	// unpacked is the root file system unpacked into one directory for
	// RUN with IsolationNone, and the layers (diffIDs) it holds.
	unpacked struct {
		dir     string
		diffIDs []v1.Hash
	}
}

type containerOptions struct {
	commit  layers.CommitOptions
	format  Format
	created time.Time
	warn    func(string)
	// eager makes layers' blobs at commit, in the pass that hashes them:
	// for layers that will leave the build anyway.
	eager bool
	// upload, when set with eager, starts the streamed upload of a layer
	// to the build's push destination, fed while the layer is
	// compressed (nil when it cannot start: the push uploads it then).
	upload func(ctx context.Context) layers.BlobSink
}

// newContainer starts a container from base (nil for scratch).
func newContainer(store *layers.Store, base v1.Image, platform v1.Platform, opts containerOptions) (*Container, error) {
	c := &Container{store: store, platform: platform, opts: opts}
	if base == nil {
		c.config = v1.ConfigFile{
			Architecture: platform.Architecture,
			OS:           platform.OS,
			Variant:      platform.Variant,
			RootFS:       v1.RootFS{Type: "layers"},
			Created:      v1.Time{Time: opts.created},
		}
		return c, nil
	}
	cfg, err := base.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("base image config: %w", err)
	}
	ls, err := base.Layers()
	if err != nil {
		return nil, fmt.Errorf("base image layers: %w", err)
	}
	if len(ls) != len(cfg.RootFS.DiffIDs) {
		return nil, fmt.Errorf("base image is inconsistent: %d layers but %d diffIDs in its config", len(ls), len(cfg.RootFS.DiffIDs))
	}
	c.config = *cfg.DeepCopy()
	c.layers = ls
	// Docker does not carry these into a derived image.
	c.config.Container = ""
	c.config.DockerVersion = ""
	c.config.Config.Image = ""
	c.config.Config.Hostname = ""
	c.config.Created = v1.Time{Time: opts.created}
	// The image is for the platform asked for, with docker's (normalized)
	// fields, as its index descriptor says: a linux/arm64 build on an
	// arm64/v8 base is arm64 with no variant.
	c.config.OS, c.config.Architecture, c.config.Variant = platform.OS, platform.Architecture, platform.Variant
	return c, nil
}

// dockerDefaults gives a Dockerfile stage's starting config what
// BuildKit's gives it: FROM scratch starts with WorkingDir "/" and the
// default PATH, and any other base whose Env lacks PATH gets the default
// PATH appended. A Windows scratch stage starts in "\\" and gets no PATH,
// as with BuildKit.
// Working containers (buildah's) keep the image's config as it is.
func (c *Container) dockerDefaults(scratch bool) {
	cfg := c.imageConfig()
	if c.platform.OS == "windows" {
		if scratch {
			cfg.WorkingDir = `\`
		}
		return
	}
	if scratch {
		cfg.WorkingDir = "/"
	}
	for _, kv := range cfg.Env {
		if k, _, _ := strings.Cut(kv, "="); k == "PATH" {
			return
		}
	}
	cfg.Env = append(cfg.Env, "PATH="+defaultPath)
}

// imageConfig is the config the image will be committed with;
// instructions edit it in place.
func (c *Container) imageConfig() *v1.Config { return &c.config.Config }

// Platform is the container's platform.
func (c *Container) Platform() v1.Platform { return c.platform }

// addHistory records a step that made no layer.
func (c *Container) addHistory(createdBy string) {
	c.config.Created = v1.Time{Time: c.opts.created}
	c.config.History = append(c.config.History, v1.History{
		Created:    v1.Time{Time: c.opts.created},
		CreatedBy:  createdBy,
		EmptyLayer: true,
	})
}

// addLayerDir commits the directory dir (overlay upper-dir format) as a
// new layer, with a history entry createdBy. dir then becomes the layer's
// snapshot when the store can take it (see layers.Store.AdoptSnapshot), so
// a later step reading the file system extracts nothing; otherwise it is
// removed.
func (c *Container) addLayerDir(ctx context.Context, dir, createdBy string) (layers.Descriptor, error) {
	defer os.RemoveAll(dir)
	commit := c.store.CommitSnapshot
	if c.opts.eager {
		commit = c.store.CommitBlob
		if c.opts.upload != nil {
			if sink := c.opts.upload(ctx); sink != nil {
				commit = func(ctx context.Context, dir string, below []v1.Hash, opts layers.CommitOptions) (v1.Layer, layers.Descriptor, error) {
					return c.store.CommitBlobTo(ctx, dir, below, opts, sink)
				}
			}
		}
	}
	l, desc, err := commit(ctx, dir, c.config.RootFS.DiffIDs, c.opts.commit)
	if err != nil {
		return layers.Descriptor{}, fmt.Errorf("commit layer: %w", err)
	}
	c.appendLayer(l, desc, createdBy)
	return desc, nil
}

// addLinkedLayerDir is addLayerDir for a directory whose files are hard
// links into the stage's unpacked root (a step run over it in place),
// which later steps change: the blob is made now and the directory is not
// kept as the snapshot, which would change with them.
func (c *Container) addLinkedLayerDir(ctx context.Context, dir, createdBy string) (layers.Descriptor, error) {
	defer os.RemoveAll(dir)
	desc, err := c.store.Blobs().CommitDir(ctx, dir, c.opts.commit)
	if err != nil {
		return layers.Descriptor{}, fmt.Errorf("commit layer: %w", err)
	}
	c.appendLayer(c.store.Blobs().Layer(desc), desc, createdBy)
	return desc, nil
}

// layerFor is the layer desc on top of the container's current layers:
// a stored blob, or a lazy layer living in its snapshot.
func (c *Container) layerFor(desc layers.Descriptor) v1.Layer {
	return c.store.LazyLayer(append(slices.Clone(c.config.RootFS.DiffIDs), desc.DiffID), desc, c.opts.commit)
}

// lazyChain is the chain ID of the snapshot holding the lazy layer desc on
// top of the container's current layers (nil for a stored blob).
func (c *Container) lazyChain(desc layers.Descriptor) *v1.Hash {
	if !desc.Lazy() {
		return nil
	}
	ch := layers.ChainIDs(append(slices.Clone(c.config.RootFS.DiffIDs), desc.DiffID))
	return &ch[len(ch)-1]
}

// chainID names the container's layers as a whole ("" for none). It is
// remembered for the layers it was computed for: every step asks.
func (c *Container) chainID() string {
	ids := c.config.RootFS.DiffIDs
	if len(ids) == 0 {
		return ""
	}
	if !slices.Equal(c.chain.of, ids) {
		c.chain.of = slices.Clone(ids)
		c.chain.id = layers.ChainIDs(ids)[len(ids)-1].String()
	}
	return c.chain.id
}

// appendLayer adds the layer l (described by desc), with a history entry
// createdBy.
func (c *Container) appendLayer(l v1.Layer, desc layers.Descriptor, createdBy string) {
	c.layers = append(c.layers, l)
	c.lastLayer = &desc
	c.config.Created = v1.Time{Time: c.opts.created}
	c.config.RootFS.DiffIDs = append(c.config.RootFS.DiffIDs, desc.DiffID)
	c.config.History = append(c.config.History, v1.History{
		Created:   v1.Time{Time: c.opts.created},
		CreatedBy: createdBy,
	})
	c.rootfs, c.dirs = nil, nil
}

// Image assembles the container's current state as an image. Its
// creation time is that of its last step (which, for steps taken from the
// build cache, is when they first ran: a fully cached build reproduces
// the image ID of the build that filled the cache, as docker's does).
func (c *Container) Image() (v1.Image, error) {
	cfg := c.config.DeepCopy()
	cfg.RootFS.DiffIDs = append([]v1.Hash(nil), c.config.RootFS.DiffIDs...)
	return assemble(cfg, append([]v1.Layer(nil), c.layers...), c.opts.format, nil)
}

// RootFS is a read-only merged view of the container's layers, extracted
// once per layer into the store's snapshots.
func (c *Container) RootFS(ctx context.Context) (*layers.RootFS, error) {
	if c.rootfs != nil {
		return c.rootfs, nil
	}
	img, err := c.Image()
	if err != nil {
		return nil, err
	}
	dirs, err := c.store.Snapshots(ctx, img, c.opts.warn)
	if err != nil {
		return nil, err
	}
	c.rootfs, c.dirs = layers.NewSnapshotRootFS(dirs), dirs
	return c.rootfs, nil
}

// snapshotDirs are the directories whose merged view, bottom to top, is
// the container's root file system (see layers.Store.Snapshots).
func (c *Container) snapshotDirs(ctx context.Context) ([]string, error) {
	if _, err := c.RootFS(ctx); err != nil {
		return nil, err
	}
	return c.dirs, nil
}

// unpackedRoot is the container's root file system unpacked into one
// directory, made on first use and afterwards brought up to date by
// extracting only the layers added since (with whiteouts applied). A RUN
// that changes the directory itself calls syncedUnpacked after adding its
// layer.
func (c *Container) unpackedRoot(ctx context.Context) (string, error) {
	u := &c.unpacked
	ids := c.config.RootFS.DiffIDs
	if u.dir != "" && (len(u.diffIDs) > len(ids) || !slices.Equal(u.diffIDs, ids[:len(u.diffIDs)])) {
		c.removeUnpacked() // layers were replaced, not added: start over
	}
	if u.dir == "" {
		dir, err := c.store.TempDir("rootfs-")
		if err != nil {
			return "", err
		}
		// It is a step's /: as a temporary directory it is 0700, which
		// locks out every USER but root.
		if err := os.Chmod(dir, 0o755); err != nil {
			os.RemoveAll(dir)
			return "", err
		}
		u.dir, u.diffIDs = dir, nil
	}
	for i := len(u.diffIDs); i < len(c.layers); i++ {
		if err := extractInto(ctx, c.layers[i], u.dir, fmt.Sprintf("layer %d (%s)", i+1, ids[i])); err != nil {
			c.removeUnpacked()
			return "", err
		}
		u.diffIDs = append(u.diffIDs, ids[i])
	}
	return u.dir, nil
}

// syncedUnpacked records that the unpacked directory holds every layer.
func (c *Container) syncedUnpacked() {
	c.unpacked.diffIDs = slices.Clone(c.config.RootFS.DiffIDs)
}

// removeUnpacked removes the unpacked directory, if any.
func (c *Container) removeUnpacked() {
	if c.unpacked.dir != "" {
		os.RemoveAll(c.unpacked.dir)
	}
	c.unpacked.dir, c.unpacked.diffIDs = "", nil
}

func extractInto(ctx context.Context, l v1.Layer, dir, src string) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return fmt.Errorf("unpack %s: %w", src, err)
	}
	defer rc.Close()
	if err := layers.Extract(ctx, rc, dir, layers.ExtractOptions{Whiteouts: layers.ApplyWhiteouts, Source: src}); err != nil {
		return fmt.Errorf("unpack: %w", err)
	}
	_, err = io.Copy(io.Discard, rc) // a verifying reader checks the whole layer
	return err
}

package builder

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/layers"
)

// Format selects the manifest and config media types of built images.
type Format string

// The image formats.
const (
	FormatOCI    Format = "oci"
	FormatDocker Format = "docker"
)

// ParseFormat parses a --format value; "" means oci.
func ParseFormat(s string) (Format, error) {
	switch s {
	case "", "oci":
		return FormatOCI, nil
	case "docker":
		return FormatDocker, nil
	}
	return "", fmt.Errorf("unknown format %q (want oci or docker)", s)
}

// ErrDockerZstd is the error of Format docker with zstd-compressed
// layers: Docker's image format (schema 2) has no media type for them, so
// the image would carry OCI zstd layer types in a Docker manifest, which
// skopeo, docker and registries refuse.
var ErrDockerZstd = errors.New("the Docker image format has no media type for zstd-compressed layers: use Format oci with Compression zstd, or Format docker with Compression gzip")

// checkFormat refuses a format and compression no image can hold.
func checkFormat(f Format, c layers.Compression) error {
	if f == FormatDocker && c == layers.Zstd {
		return fmt.Errorf("format docker with compression zstd: %w", ErrDockerZstd)
	}
	return nil
}

func (f Format) manifestType() types.MediaType {
	if f == FormatDocker {
		return types.DockerManifestSchema2
	}
	return types.OCIManifestSchema1
}

func (f Format) configType() types.MediaType {
	if f == FormatDocker {
		return types.DockerConfigJSON
	}
	return types.OCIConfigJSON
}

func (f Format) indexType() types.MediaType {
	if f == FormatDocker {
		return types.DockerManifestList
	}
	return types.OCIImageIndex
}

// layerType maps a layer media type to its equivalent in format f. The
// bytes are the same; only the name differs.
func (f Format) layerType(mt types.MediaType) types.MediaType {
	oci := map[types.MediaType]types.MediaType{
		types.DockerLayer:             types.OCILayer,
		types.DockerUncompressedLayer: types.OCIUncompressedLayer,
		types.DockerForeignLayer:      types.OCIRestrictedLayer,
	}
	if f == FormatOCI {
		if m, ok := oci[mt]; ok {
			return m
		}
		return mt
	}
	for d, o := range oci {
		if o == mt {
			return d
		}
	}
	return mt
}

// builtImage is an image assembled in memory from a config and layers. The
// manifest and config bytes are computed once, so its digest is stable.
// The manifest is made only when asked for: it needs the layers' blobs,
// which for layers committed as snapshots are made then (see
// layers.CommitSnapshot); the config, the layers and the image ID do not.
type builtImage struct {
	layers      []v1.Layer
	types       []types.MediaType
	cfg         *v1.ConfigFile
	rawCfg      []byte
	format      Format
	annotations map[string]string

	once     sync.Once
	manifest *v1.Manifest
	rawMan   []byte
	manErr   error
}

var _ v1.Image = (*builtImage)(nil)

// assemble builds an image from cfg and ls. cfg.RootFS.DiffIDs must match ls.
func assemble(cfg *v1.ConfigFile, ls []v1.Layer, format Format, annotations map[string]string) (*builtImage, error) {
	if len(cfg.RootFS.DiffIDs) != len(ls) {
		return nil, fmt.Errorf("internal error: config lists %d layers, image has %d", len(cfg.RootFS.DiffIDs), len(ls))
	}
	cfg.RootFS.Type = "layers"
	rawCfg, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	img := &builtImage{layers: ls, cfg: cfg, rawCfg: rawCfg, format: format, annotations: annotations}
	for i, l := range ls {
		mt, err := l.MediaType()
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		mt = format.layerType(mt)
		if format == FormatDocker && mt == types.OCILayerZStd {
			return nil, fmt.Errorf("layer %d (diff ID %s) is zstd-compressed, from the base image or a cache: %w", i+1, cfg.RootFS.DiffIDs[i], ErrDockerZstd)
		}
		img.types = append(img.types, mt)
	}
	return img, nil
}

// built makes the manifest, once.
func (i *builtImage) built() error {
	i.once.Do(func() {
		m := &v1.Manifest{
			SchemaVersion: 2,
			MediaType:     i.format.manifestType(),
			Config: v1.Descriptor{
				MediaType: i.format.configType(),
				Size:      int64(len(i.rawCfg)),
				Digest:    sha256Hash(i.rawCfg),
			},
			Annotations: i.annotations,
		}
		for k, l := range i.layers {
			d, err := l.Digest()
			if err != nil {
				i.manErr = fmt.Errorf("layer %d: %w", k, err)
				return
			}
			sz, err := l.Size()
			if err != nil {
				i.manErr = fmt.Errorf("layer %d: %w", k, err)
				return
			}
			m.Layers = append(m.Layers, v1.Descriptor{MediaType: i.types[k], Size: sz, Digest: d})
		}
		raw, err := json.Marshal(m)
		if err != nil {
			i.manErr = err
			return
		}
		i.manifest, i.rawMan = m, raw
	})
	return i.manErr
}

func sha256Hash(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

func (i *builtImage) Layers() ([]v1.Layer, error) {
	out := make([]v1.Layer, len(i.layers))
	for k, l := range i.layers {
		out[k] = typedLayer{l, i.types[k]}
	}
	return out, nil
}
func (i *builtImage) MediaType() (types.MediaType, error) { return i.format.manifestType(), nil }
func (i *builtImage) Size() (int64, error) {
	if err := i.built(); err != nil {
		return 0, err
	}
	return int64(len(i.rawMan)), nil
}
func (i *builtImage) ConfigName() (v1.Hash, error) { return sha256Hash(i.rawCfg), nil }
func (i *builtImage) ConfigFile() (*v1.ConfigFile, error) {
	var c v1.ConfigFile
	if err := json.NewDecoder(bytes.NewReader(i.rawCfg)).Decode(&c); err != nil {
		return nil, err
	}
	return &c, nil
}
func (i *builtImage) RawConfigFile() ([]byte, error) { return i.rawCfg, nil }
func (i *builtImage) Digest() (v1.Hash, error) {
	if err := i.built(); err != nil {
		return v1.Hash{}, err
	}
	return sha256Hash(i.rawMan), nil
}
func (i *builtImage) Manifest() (*v1.Manifest, error) {
	if err := i.built(); err != nil {
		return nil, err
	}
	m := *i.manifest
	return &m, nil
}
func (i *builtImage) RawManifest() ([]byte, error) {
	if err := i.built(); err != nil {
		return nil, err
	}
	return i.rawMan, nil
}
func (i *builtImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	if h == sha256Hash(i.rawCfg) {
		return static.NewLayer(i.rawCfg, i.format.configType()), nil
	}
	if err := i.built(); err != nil {
		return nil, err
	}
	for k, d := range i.manifest.Layers {
		if d.Digest == h {
			return typedLayer{i.layers[k], i.types[k]}, nil
		}
	}
	return nil, fmt.Errorf("image has no layer %s", h)
}
func (i *builtImage) LayerByDiffID(h v1.Hash) (v1.Layer, error) {
	for k, d := range i.cfg.RootFS.DiffIDs {
		if d == h {
			return typedLayer{i.layers[k], i.types[k]}, nil
		}
	}
	return nil, fmt.Errorf("image has no layer with diffID %s", h)
}

// typedLayer is a layer under a different media type name.
type typedLayer struct {
	v1.Layer
	mt types.MediaType
}

func (l typedLayer) MediaType() (types.MediaType, error) { return l.mt, nil }

// Unwrap is the layer under the new name: a push finds there where the
// layer may be mounted from (see registry.PushImage).
func (l typedLayer) Unwrap() v1.Layer { return l.Layer }

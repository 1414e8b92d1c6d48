package attest

import (
	"bytes"
	"encoding/json"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// UnknownPlatform is the platform of attestation manifests in an index:
// clients picking an image by platform never pick one.
var UnknownPlatform = v1.Platform{OS: "unknown", Architecture: "unknown"}

// emptyJSON is the OCI empty descriptor's content, the config of an
// attestation manifest in the OCI artifact form.
var emptyJSON = []byte("{}")

// Manifest is the attestation manifest of the image manifest subject,
// holding stmts as layers in order. With ociArtifact it has an OCI 1.1
// subject and artifactType, and the empty config; otherwise (BuildKit's
// default) a config with platform unknown/unknown and the statements'
// digests as diff IDs.
func Manifest(subject v1.Descriptor, stmts []Statement, ociArtifact bool) (v1.Image, error) {
	if len(stmts) == 0 {
		return nil, fmt.Errorf("attestation manifest for %s: no statements", subject.Digest)
	}
	a := &attestImage{layers: map[v1.Hash]partial.CompressedLayer{}}
	m := v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1}
	var diffIDs []v1.Hash
	for _, st := range stmts {
		data, err := json.Marshal(st)
		if err != nil {
			return nil, fmt.Errorf("attestation %s: %w", st.PredicateType, err)
		}
		l := static.NewLayer(data, MediaTypeInToto)
		d, err := l.Digest()
		if err != nil {
			return nil, err
		}
		a.layers[d] = l
		diffIDs = append(diffIDs, d)
		m.Layers = append(m.Layers, v1.Descriptor{
			MediaType: MediaTypeInToto, Digest: d, Size: int64(len(data)),
			Annotations: map[string]string{AnnotationPredicateType: st.PredicateType},
		})
	}
	if ociArtifact {
		a.config = emptyJSON
		m.Config = v1.Descriptor{MediaType: types.OCIEmptyJSON}
		m.ArtifactType = ArtifactType
		m.Subject = &v1.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}
	} else {
		cfg := struct {
			Architecture string   `json:"architecture"`
			OS           string   `json:"os"`
			Config       struct{} `json:"config"`
			RootFS       struct {
				Type    string    `json:"type"`
				DiffIDs []v1.Hash `json:"diff_ids"`
			} `json:"rootfs"`
		}{Architecture: UnknownPlatform.Architecture, OS: UnknownPlatform.OS}
		cfg.RootFS.Type, cfg.RootFS.DiffIDs = "layers", diffIDs
		var err error
		if a.config, err = json.Marshal(cfg); err != nil {
			return nil, err
		}
		m.Config = v1.Descriptor{MediaType: types.OCIConfigJSON}
	}
	cd, _, err := v1.SHA256(bytes.NewReader(a.config))
	if err != nil {
		return nil, err
	}
	m.Config.Digest, m.Config.Size = cd, int64(len(a.config))
	if a.raw, err = json.Marshal(m); err != nil {
		return nil, err
	}
	return partial.CompressedToImage(a)
}

// attestImage is an attestation manifest in memory.
type attestImage struct {
	raw, config []byte
	layers      map[v1.Hash]partial.CompressedLayer
}

func (a *attestImage) RawConfigFile() ([]byte, error)      { return a.config, nil }
func (a *attestImage) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
func (a *attestImage) RawManifest() ([]byte, error)        { return a.raw, nil }
func (a *attestImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if l, ok := a.layers[h]; ok {
		return l, nil
	}
	return nil, fmt.Errorf("attestation manifest: no layer %s", h)
}

// indexEntry hides an attestation manifest's artifactType from the index
// descriptor, as BuildKit writes it (go-containerregistry would copy it
// there).
type indexEntry struct{ v1.Image }

func (indexEntry) ArtifactType() (string, error) { return "", nil }

// Append returns idx with the attestation manifest att of the image
// manifest subject appended, with platform unknown/unknown and the
// reference annotations.
func Append(idx v1.ImageIndex, subject v1.Descriptor, att v1.Image) v1.ImageIndex {
	p := UnknownPlatform
	return mutate.AppendManifests(idx, mutate.IndexAddendum{
		Add: indexEntry{att},
		Descriptor: v1.Descriptor{
			Platform: &p,
			Annotations: map[string]string{
				AnnotationReferenceType:   ReferenceTypeAttestation,
				AnnotationReferenceDigest: subject.Digest.String(),
			},
		},
	})
}

// IsAttestation reports whether an index entry is an attestation manifest.
func IsAttestation(d v1.Descriptor) bool {
	return d.Annotations[AnnotationReferenceType] == ReferenceTypeAttestation
}

// For returns the index entries that are attestation manifests of the
// image manifest digest.
func For(im *v1.IndexManifest, digest v1.Hash) []v1.Descriptor {
	var out []v1.Descriptor
	for _, d := range im.Manifests {
		if IsAttestation(d) && d.Annotations[AnnotationReferenceDigest] == digest.String() {
			out = append(out, d)
		}
	}
	return out
}

// Statements reads the in-toto statements an attestation manifest holds,
// in order; predicateType, when not "", keeps only those of that type.
func Statements(att v1.Image, predicateType string) ([]Statement, error) {
	m, err := att.Manifest()
	if err != nil {
		return nil, err
	}
	var out []Statement
	for _, l := range m.Layers {
		if string(l.MediaType) != MediaTypeInToto {
			continue
		}
		if predicateType != "" && l.Annotations[AnnotationPredicateType] != predicateType {
			continue
		}
		layer, err := att.LayerByDigest(l.Digest)
		if err != nil {
			return nil, err
		}
		rc, err := layer.Compressed()
		if err != nil {
			return nil, err
		}
		var st Statement
		err = json.NewDecoder(rc).Decode(&st)
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("attestation %s: %w", l.Digest, err)
		}
		out = append(out, st)
	}
	return out, nil
}

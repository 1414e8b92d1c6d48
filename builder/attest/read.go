package attest

import (
	"encoding/json"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Found are the attestations of one image manifest of an index, by
// predicate, as buildx's imagetools inspect shows them: SBOM is
// {"SPDX": document} or {"CycloneDX": document}, Provenance is
// {"SLSA": predicate}; nil when absent.
type Found struct {
	SBOM       map[string]json.RawMessage `json:"SBOM,omitempty"`
	Provenance map[string]json.RawMessage `json:"Provenance,omitempty"`
}

// Read returns the attestations idx holds for each of its image
// manifests, keyed by platform (os/arch[/variant]); images without any
// are left out.
func Read(idx v1.ImageIndex) (map[string]Found, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	out := map[string]Found{}
	for _, d := range im.Manifests {
		if IsAttestation(d) || !d.MediaType.IsImage() {
			continue
		}
		var f Found
		for _, ad := range For(im, d.Digest) {
			att, err := idx.Image(ad.Digest)
			if err != nil {
				return nil, fmt.Errorf("attestation manifest %s: %w", ad.Digest, err)
			}
			stmts, err := Statements(att, "")
			if err != nil {
				return nil, fmt.Errorf("attestation manifest %s: %w", ad.Digest, err)
			}
			for _, st := range stmts {
				switch st.PredicateType {
				case PredicateSPDX, PredicateCycloneDX:
					if f.SBOM == nil {
						f.SBOM = map[string]json.RawMessage{}
					}
					k := "SPDX"
					if st.PredicateType == PredicateCycloneDX {
						k = "CycloneDX"
					}
					if _, dup := f.SBOM[k]; !dup { // the image's own comes first, stages after
						f.SBOM[k] = st.Predicate
					}
				case PredicateSLSA1, PredicateSLSA02:
					f.Provenance = map[string]json.RawMessage{"SLSA": st.Predicate}
				}
			}
		}
		if f.SBOM == nil && f.Provenance == nil {
			continue
		}
		key := d.Digest.String()
		if d.Platform != nil {
			key = d.Platform.OS + "/" + d.Platform.Architecture
			if d.Platform.Variant != "" {
				key += "/" + d.Platform.Variant
			}
		}
		out[key] = f
	}
	return out, nil
}

package attest

import (
	"encoding/json"
	"net/url"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Media types, annotations and predicate types of BuildKit's layout.
const (
	MediaTypeInToto = "application/vnd.in-toto+json"
	// ArtifactType is the artifactType of attestation manifests in the
	// OCI artifact form.
	ArtifactType = "application/vnd.docker.attestation.manifest.v1+json"

	AnnotationReferenceType   = "vnd.docker.reference.type"
	AnnotationReferenceDigest = "vnd.docker.reference.digest"
	ReferenceTypeAttestation  = "attestation-manifest"
	AnnotationPredicateType   = "in-toto.io/predicate-type"

	StatementType = "https://in-toto.io/Statement/v1"

	PredicateSPDX      = "https://spdx.dev/Document"
	PredicateCycloneDX = "https://cyclonedx.org/bom"
	PredicateSLSA1     = "https://slsa.dev/provenance/v1"
	PredicateSLSA02    = "https://slsa.dev/provenance/v0.2"
)

// Subject is an in-toto subject: a name and its digests.
type Subject struct {
	Name   string            `json:"name"`
	Digest map[string]string `json:"digest"`
}

// Statement is an in-toto v1 statement.
type Statement struct {
	Type          string          `json:"_type"`
	PredicateType string          `json:"predicateType"`
	Subject       []Subject       `json:"subject"`
	Predicate     json.RawMessage `json:"predicate"`
}

// NewStatement wraps predicate (JSON) for subjects.
func NewStatement(predicateType string, subjects []Subject, predicate []byte) Statement {
	return Statement{Type: StatementType, PredicateType: predicateType, Subject: subjects, Predicate: predicate}
}

// ImageSubjects are the subjects of an image manifest: one per name, as
// BuildKit writes them (pkg:docker/NAME@TAG?platform=OS%2FARCH), or one
// named "_" when the image has no name.
func ImageSubjects(names []string, platform *v1.Platform, manifest v1.Hash) []Subject {
	dg := map[string]string{manifest.Algorithm: manifest.Hex}
	var out []Subject
	for _, n := range names {
		out = append(out, Subject{Name: dockerPURL(n, platform), Digest: dg})
	}
	if len(out) == 0 {
		out = []Subject{{Name: "_", Digest: dg}}
	}
	return out
}

// dockerPURL is the package URL of the image reference ref (a normalized
// name such as registry/repo:tag).
func dockerPURL(ref string, p *v1.Platform) string {
	name, version := ref, "latest"
	if i := strings.LastIndex(ref, "@"); i >= 0 {
		name, version = ref[:i], ref[i+1:]
	} else if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		name, version = ref[:i], ref[i+1:]
	}
	s := "pkg:docker/" + name + "@" + url.PathEscape(version)
	if p != nil && p.OS != "" {
		plat := p.OS + "/" + p.Architecture
		if p.Variant != "" {
			plat += "/" + p.Variant
		}
		s += "?platform=" + url.QueryEscape(plat)
	}
	return s
}

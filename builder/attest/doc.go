// Package attest makes and reads image attestations: in-toto statements
// carrying an SBOM (SPDX or CycloneDX, from package sbom) or SLSA
// provenance, stored in an image index in BuildKit's layout.
//
// Per image manifest, an attestation manifest is appended to the index
// with platform unknown/unknown and the annotations
// vnd.docker.reference.type=attestation-manifest and
// vnd.docker.reference.digest=<image manifest digest>. Its layers are the
// statements (media type application/vnd.in-toto+json, annotated
// in-toto.io/predicate-type), each with the image manifest as subject.
// With Options.OCIArtifact the manifest also has an OCI 1.1 subject and
// artifactType, so the referrers API finds it; its config is then the OCI
// empty descriptor.
//
// Everything here is deterministic: the same inputs give the same bytes.
// Secret values never reach a statement: the provenance lists secret and
// SSH ids only, and leaves out build args named like secrets (SecretName).
package attest

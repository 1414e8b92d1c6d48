package attest

import (
	"fmt"
	"strconv"
	"strings"
)

// SBOMFormat is the document format of an SBOM attestation.
type SBOMFormat string

// The SBOM formats.
const (
	SPDX      SBOMFormat = "spdx"
	CycloneDX SBOMFormat = "cyclonedx"
)

// ProvenanceMode is how much a provenance attestation says.
type ProvenanceMode string

// The provenance modes, as buildx names them.
const (
	ModeMin ProvenanceMode = "min"
	ModeMax ProvenanceMode = "max"
)

// SLSAVersion is the SLSA provenance predicate version.
type SLSAVersion string

// The SLSA versions.
const (
	SLSA1  SLSAVersion = "v1"
	SLSA02 SLSAVersion = "v0.2"
)

// SBOMOptions ask for an SBOM attestation.
type SBOMOptions struct {
	Format SBOMFormat
	// ScanStages adds an SBOM of every other stage the result was built
	// from (buildx's scan-stage=true).
	ScanStages bool
}

// ProvenanceOptions ask for a provenance attestation.
type ProvenanceOptions struct {
	Mode    ProvenanceMode
	Version SLSAVersion
}

// Options say which attestations a build attaches; the zero value asks
// for none.
type Options struct {
	SBOM       *SBOMOptions
	Provenance *ProvenanceOptions
	// OCIArtifact writes attestation manifests in the OCI 1.1 artifact
	// form too (subject and artifactType), for the referrers API.
	OCIArtifact bool
	// BuilderVersion is ibuild's version, named in the provenance and as
	// the SBOM's tool.
	BuilderVersion string
}

// Any reports whether any attestation is asked for.
func (o Options) Any() bool { return o.SBOM != nil || o.Provenance != nil }

// ParseSBOM applies a --sbom value to o: "" or "true" (an SPDX SBOM),
// "false", or comma-separated key=value: generator=builtin,
// format=spdx|cyclonedx, scan-stage=true|false, disabled=true|false,
// oci-artifact=true|false.
func (o *Options) ParseSBOM(v string) error { return o.parse("sbom", v) }

// ParseProvenance applies a --provenance value to o: "" or "true" (mode
// min), "false", "min", "max", or comma-separated key=value:
// mode=min|max, version=v1|v0.2, disabled=true|false,
// oci-artifact=true|false.
func (o *Options) ParseProvenance(v string) error { return o.parse("provenance", v) }

// ParseAttest applies an --attest value to o: type=sbom|provenance
// followed by that type's keys.
func (o *Options) ParseAttest(v string) error {
	var typ string
	var rest []string
	for _, f := range strings.Split(v, ",") {
		if k, val, _ := strings.Cut(f, "="); strings.TrimSpace(k) == "type" {
			typ = strings.TrimSpace(val)
			continue
		}
		rest = append(rest, f)
	}
	switch typ {
	case "sbom", "provenance":
		return o.parse(typ, strings.Join(rest, ","))
	case "":
		return fmt.Errorf("--attest %s: needs type=sbom or type=provenance", v)
	}
	return fmt.Errorf("--attest %s: unknown type %q (want sbom or provenance)", v, typ)
}

func (o *Options) parse(kind, v string) error {
	flag := "--" + kind + " " + v
	sbom := SBOMOptions{Format: SPDX}
	prov := ProvenanceOptions{Mode: ModeMin, Version: SLSA1}
	enabled := true
	switch strings.TrimSpace(v) {
	case "", "true", "1":
		v = ""
	case "false", "0":
		enabled, v = false, ""
	case "min", "max":
		if kind == "provenance" {
			v = "mode=" + v
		}
	}
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		k, val, ok := strings.Cut(f, "=")
		if !ok {
			return fmt.Errorf("%s: %q is not key=value", flag, f)
		}
		k, val = strings.TrimSpace(k), strings.TrimSpace(val)
		boolVal := func() (bool, error) {
			b, err := strconv.ParseBool(val)
			if err != nil {
				return false, fmt.Errorf("%s: %s=%q: want true or false", flag, k, val)
			}
			return b, nil
		}
		switch {
		case k == "disabled":
			b, err := boolVal()
			if err != nil {
				return err
			}
			enabled = !b
		case k == "oci-artifact":
			b, err := boolVal()
			if err != nil {
				return err
			}
			o.OCIArtifact = b
		case kind == "sbom" && k == "generator":
			if val != "" && val != "builtin" {
				return fmt.Errorf("%s: generator %q: ibuild scans with its built-in catalogers and runs no generator image; leave generator out (or generator=builtin)", flag, val)
			}
		case kind == "sbom" && k == "format":
			switch SBOMFormat(strings.ToLower(val)) {
			case SPDX, "spdx-json":
				sbom.Format = SPDX
			case CycloneDX, "cyclonedx-json":
				sbom.Format = CycloneDX
			default:
				return fmt.Errorf("%s: format %q: want spdx or cyclonedx", flag, val)
			}
		case kind == "sbom" && k == "scan-stage":
			b, err := boolVal()
			if err != nil {
				return err
			}
			sbom.ScanStages = b
		case kind == "provenance" && k == "mode":
			switch ProvenanceMode(val) {
			case ModeMin, ModeMax:
				prov.Mode = ProvenanceMode(val)
			default:
				return fmt.Errorf("%s: mode %q: want min or max", flag, val)
			}
		case kind == "provenance" && k == "version":
			switch strings.TrimPrefix(val, "slsa-") {
			case "v1", "1", "v1.0":
				prov.Version = SLSA1
			case "v0.2", "0.2":
				prov.Version = SLSA02
			default:
				return fmt.Errorf("%s: version %q: want v1 or v0.2", flag, val)
			}
		default:
			return fmt.Errorf("%s: unknown key %q", flag, k)
		}
	}
	switch {
	case kind == "sbom" && enabled:
		o.SBOM = &sbom
	case kind == "sbom":
		o.SBOM = nil
	case enabled:
		o.Provenance = &prov
	default:
		o.Provenance = nil
	}
	return nil
}

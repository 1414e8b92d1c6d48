package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/builder/attest"
)

// optionalValue is a flag that may stand alone (--sbom, meaning "true")
// or take a value (--sbom=format=cyclonedx), as buildx's --sbom and
// --provenance do: the flag package treats it as a boolean flag, so a
// bare --sbom never swallows the next argument. Each use is kept.
type optionalValue struct {
	values []string
}

func (o *optionalValue) Set(v string) error { o.values = append(o.values, v); return nil }
func (o *optionalValue) String() string {
	if o == nil || len(o.values) == 0 {
		return ""
	}
	return o.values[len(o.values)-1]
}
func (o *optionalValue) IsBoolFlag() bool { return true }

// attestFlags are build's attestation flags, spelled as buildx's.
func attestFlags() []cli.Flag {
	return []cli.Flag{
		&cli.GenericFlag{Name: "sbom", Value: &optionalValue{}, Usage: "attach an SBOM attestation: --sbom, --sbom=false, or --sbom=format=spdx|cyclonedx,scan-stage=true (see docs/attestations.md)"},
		&cli.GenericFlag{Name: "provenance", Value: &optionalValue{}, Usage: "attach SLSA provenance: --provenance (mode=min), --provenance=false, or --provenance=mode=min|max,version=v1|v0.2"},
		&cli.StringSliceFlag{Name: "attest", Usage: "attach an attestation: type=sbom[,KEY=VALUE...] or type=provenance[,KEY=VALUE...] (repeatable; oci-artifact=true adds the OCI 1.1 subject)"},
	}
}

// parseAttestFlags reads --attest, then --sbom and --provenance (which
// win), into attestation options.
func parseAttestFlags(c *cli.Context, version string) (attest.Options, error) {
	var o attest.Options
	for _, v := range c.StringSlice("attest") {
		if err := o.ParseAttest(v); err != nil {
			return o, err
		}
	}
	for _, name := range []string{"sbom", "provenance"} {
		ov, ok := c.Generic(name).(*optionalValue)
		if !ok || ov == nil {
			continue
		}
		for _, v := range ov.values {
			var err error
			if name == "sbom" {
				err = o.ParseSBOM(v)
			} else {
				err = o.ParseProvenance(v)
			}
			if err != nil {
				return o, fmt.Errorf("%w", err)
			}
		}
	}
	o.BuilderVersion = version
	return o, nil
}

// attestArgHint explains a stray argument that was meant as the value of
// --sbom or --provenance, which take their value after "=" only.
func attestArgHint(args []string) string {
	for _, a := range args {
		k, _, ok := strings.Cut(a, "=")
		switch {
		case ok && (k == "mode" || k == "version"):
			return fmt.Sprintf("%q is not a CONTEXT: --provenance takes its value after '=' (--provenance=%s), as buildx's does", a, a)
		case ok && (k == "format" || k == "generator" || k == "scan-stage"):
			return fmt.Sprintf("%q is not a CONTEXT: --sbom takes its value after '=' (--sbom=%s), as buildx's does", a, a)
		}
	}
	return ""
}

// commitSBOMFlags reads commit's --sbom and --source-date-epoch into o.
func commitSBOMFlags(c *cli.Context, o *builder.CommitOptions) error {
	ov, _ := c.Generic("sbom").(*optionalValue)
	if ov == nil || len(ov.values) == 0 {
		return nil
	}
	var a attest.Options
	for _, v := range ov.values {
		if err := a.ParseSBOM(v); err != nil {
			return err
		}
	}
	o.SBOM, o.Version = a.SBOM, version
	epoch := c.String("source-date-epoch")
	if epoch == "" {
		epoch = os.Getenv("SOURCE_DATE_EPOCH")
	}
	if epoch != "" {
		n, err := strconv.ParseInt(epoch, 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("source date epoch %q: want a non-negative Unix time in seconds", epoch)
		}
		t := time.Unix(n, 0).UTC()
		o.SourceDateEpoch = &t
	}
	return nil
}

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/urfave/cli/v2"

	"github.com/ibuild/ibuild/builder/attest"
	"github.com/ibuild/ibuild/registry"
)

// inspectAttestFlags are inspect's flags for reading attestations back.
func inspectAttestFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "sbom", Usage: "print the SBOM attestation (as --format '{{json .SBOM}}')"},
		&cli.BoolFlag{Name: "provenance", Usage: "print the provenance attestation (as --format '{{json .Provenance}}')"},
		&cli.StringFlag{Name: "format", Usage: "print with a Go template over .Name, .Digest, .SBOM and .Provenance (e.g. '{{json .SBOM}}')"},
	}
}

// attestView is what inspect's --format template sees. For an index of
// one image, SBOM and Provenance are that image's ({"SPDX": ...},
// {"SLSA": ...}); for several, maps by platform, as buildx's imagetools
// inspect shows them.
type attestView struct {
	Name       string
	Digest     string
	SBOM       any
	Provenance any
}

// wantsAttestations reports whether inspect should print attestations.
func wantsAttestations(c *cli.Context) bool {
	return c.Bool("sbom") || c.Bool("provenance") || c.String("format") != ""
}

// printAttestations prints what --sbom, --provenance or --format ask of
// the attestations idx (nil: a single image, which has none) holds.
func printAttestations(c *cli.Context, name string, digest v1.Hash, idx v1.ImageIndex) error {
	v := attestView{Name: name, Digest: digest.String()}
	if idx != nil {
		found, err := attest.Read(idx)
		if err != nil {
			return fmt.Errorf("inspect %s: %w", name, err)
		}
		if len(found) == 1 {
			for _, f := range found {
				v.SBOM, v.Provenance = nilIfEmpty(f.SBOM), nilIfEmpty(f.Provenance)
			}
		} else if len(found) > 1 {
			sboms, provs := map[string]any{}, map[string]any{}
			for p, f := range found {
				if f.SBOM != nil {
					sboms[p] = f.SBOM
				}
				if f.Provenance != nil {
					provs[p] = f.Provenance
				}
			}
			v.SBOM, v.Provenance = nilIfEmpty(sboms), nilIfEmpty(provs)
		}
	}
	format := c.String("format")
	switch {
	case format != "" && (c.Bool("sbom") || c.Bool("provenance")):
		return cli.Exit("inspect: give --format or --sbom/--provenance, not both", 2)
	case c.Bool("sbom") && c.Bool("provenance"):
		format = `{"SBOM":{{json .SBOM}},"Provenance":{{json .Provenance}}}`
	case c.Bool("sbom"):
		if v.SBOM == nil {
			return fmt.Errorf("inspect %s: no SBOM attestation (build with --sbom)", name)
		}
		format = "{{json .SBOM}}"
	case c.Bool("provenance"):
		if v.Provenance == nil {
			return fmt.Errorf("inspect %s: no provenance attestation (build with --provenance)", name)
		}
		format = "{{json .Provenance}}"
	}
	tmpl, err := template.New("format").Funcs(template.FuncMap{"json": func(x any) (string, error) {
		b, err := json.Marshal(x)
		return string(b), err
	}}).Parse(format)
	if err != nil {
		return fmt.Errorf("--format: %w", err)
	}
	var b strings.Builder
	if err := tmpl.Execute(&b, v); err != nil {
		return fmt.Errorf("--format: %w", err)
	}
	out := b.String()
	if !strings.HasSuffix(out, "\n") {
		out += "\n"
	}
	_, err = os.Stdout.WriteString(out)
	return err
}

func nilIfEmpty[M ~map[K]V, K comparable, V any](m M) any {
	if len(m) == 0 {
		return nil
	}
	return m
}

// inspectRemoteAttestations is inspect --sbom/--provenance/--format of a
// docker:// reference.
func inspectRemoteAttestations(c *cli.Context, ref string) error {
	opts := registry.PullOptions{Conn: connOptions(c)}
	idx, err := registry.RemoteIndex(c.Context, ref, opts)
	if err != nil {
		return err
	}
	var d v1.Hash
	if idx != nil {
		if d, err = idx.Digest(); err != nil {
			return err
		}
	}
	return printAttestations(c, ref, d, idx)
}

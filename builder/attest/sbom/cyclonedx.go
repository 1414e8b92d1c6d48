package sbom

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// cdxBOM is CycloneDX 1.5 JSON, the fields ibuild writes.
type cdxBOM struct {
	BOMFormat    string         `json:"bomFormat"`
	SpecVersion  string         `json:"specVersion"`
	SerialNumber string         `json:"serialNumber"`
	Version      int            `json:"version"`
	Metadata     cdxMetadata    `json:"metadata"`
	Components   []cdxComponent `json:"components"`
}

type cdxMetadata struct {
	Timestamp  string        `json:"timestamp"`
	Tools      cdxTools      `json:"tools"`
	Component  cdxComponent  `json:"component"`
	Properties []cdxProperty `json:"properties,omitempty"`
}

type cdxTools struct {
	Components []cdxComponent `json:"components"`
}

type cdxComponent struct {
	BOMRef     string        `json:"bom-ref,omitempty"`
	Type       string        `json:"type"`
	Name       string        `json:"name"`
	Version    string        `json:"version,omitempty"`
	Publisher  string        `json:"publisher,omitempty"`
	Licenses   []cdxLicense  `json:"licenses,omitempty"`
	PURL       string        `json:"purl,omitempty"`
	Hashes     []cdxHash     `json:"hashes,omitempty"`
	Properties []cdxProperty `json:"properties,omitempty"`
}

type cdxLicense struct {
	Expression string `json:"expression"`
}

type cdxHash struct {
	Alg     string `json:"alg"`
	Content string `json:"content"`
}

type cdxProperty struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// CycloneDX writes inv as a CycloneDX 1.5 JSON BOM: the image is the
// metadata component (type container), each package a library component.
func (inv *Inventory) CycloneDX(o DocOptions) ([]byte, error) {
	tool, toolVersion, _ := strings.Cut(o.Tool, "-")
	subject := cdxComponent{BOMRef: "image", Type: "container", Name: o.Subject.Name}
	if alg, hexd, ok := strings.Cut(o.Subject.Digest, ":"); ok && alg == "sha256" {
		subject.Version = o.Subject.Digest
		subject.Hashes = []cdxHash{{Alg: "SHA-256", Content: hexd}}
	}
	bom := cdxBOM{
		BOMFormat: "CycloneDX", SpecVersion: "1.5", Version: 1,
		Metadata: cdxMetadata{
			Timestamp: o.Created.UTC().Format(time.RFC3339),
			Tools:     cdxTools{Components: []cdxComponent{{Type: "application", Name: tool, Version: toolVersion}}},
			Component: subject,
		},
		Components: []cdxComponent{},
	}
	for i, w := range inv.Warnings {
		bom.Metadata.Properties = append(bom.Metadata.Properties, cdxProperty{Name: fmt.Sprintf("ibuild:warning:%d", i), Value: w})
	}
	refs := map[string]int{}
	for _, p := range inv.Packages {
		ref := p.PURL
		if n := refs[ref]; n > 0 {
			ref = fmt.Sprintf("%s#%d", ref, n)
		}
		refs[p.PURL]++
		c := cdxComponent{BOMRef: ref, Type: "library", Name: p.Name, Version: p.Version, Publisher: p.Supplier, PURL: p.PURL,
			Properties: []cdxProperty{{Name: "ibuild:package:type", Value: string(p.Type)}, {Name: "ibuild:location:0:path", Value: p.Location}}}
		if p.License != "" && spdxLicenseOK(p.License) {
			c.Licenses = []cdxLicense{{Expression: p.License}}
		}
		bom.Components = append(bom.Components, c)
	}
	body, err := json.Marshal(bom)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(body)
	// A version 5 style UUID from the content: the same BOM, the same serial.
	u := sum[:16]
	u[6] = u[6]&0x0f | 0x50
	u[8] = u[8]&0x3f | 0x80
	h := hex.EncodeToString(u)
	bom.SerialNumber = "urn:uuid:" + h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
	return json.MarshalIndent(bom, "", "  ")
}

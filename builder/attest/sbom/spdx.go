package sbom

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Subject names what a document describes.
type Subject struct {
	// Name is the image's name (a reference) or, without one, a
	// description such as "stage build".
	Name string
	// Digest is the image manifest digest ("sha256:..."), if known.
	Digest string
}

// DocOptions shape a document.
type DocOptions struct {
	Subject Subject
	// Created is the document's creation time: the build's
	// SOURCE_DATE_EPOCH for reproducible documents, else the build time.
	Created time.Time
	// Tool names the generator, "ibuild-VERSION".
	Tool string
}

// spdxDoc is SPDX 2.3 JSON, the fields ibuild writes.
type spdxDoc struct {
	SPDXVersion       string             `json:"spdxVersion"`
	DataLicense       string             `json:"dataLicense"`
	SPDXID            string             `json:"SPDXID"`
	Name              string             `json:"name"`
	DocumentNamespace string             `json:"documentNamespace"`
	CreationInfo      spdxCreation       `json:"creationInfo"`
	Packages          []spdxPackage      `json:"packages"`
	Relationships     []spdxRelationship `json:"relationships"`
}

type spdxCreation struct {
	Created  string   `json:"created"`
	Creators []string `json:"creators"`
	Comment  string   `json:"comment,omitempty"`
}

type spdxPackage struct {
	Name                  string        `json:"name"`
	SPDXID                string        `json:"SPDXID"`
	VersionInfo           string        `json:"versionInfo,omitempty"`
	Supplier              string        `json:"supplier,omitempty"`
	DownloadLocation      string        `json:"downloadLocation"`
	FilesAnalyzed         bool          `json:"filesAnalyzed"`
	SourceInfo            string        `json:"sourceInfo,omitempty"`
	LicenseConcluded      string        `json:"licenseConcluded"`
	LicenseDeclared       string        `json:"licenseDeclared"`
	CopyrightText         string        `json:"copyrightText"`
	Checksums             []spdxSum     `json:"checksums,omitempty"`
	ExternalRefs          []spdxExtRef  `json:"externalRefs,omitempty"`
	PrimaryPackagePurpose string        `json:"primaryPackagePurpose,omitempty"`
	Annotations           []spdxComment `json:"annotations,omitempty"`
}

type spdxSum struct {
	Algorithm     string `json:"algorithm"`
	ChecksumValue string `json:"checksumValue"`
}

type spdxExtRef struct {
	ReferenceCategory string `json:"referenceCategory"`
	ReferenceType     string `json:"referenceType"`
	ReferenceLocator  string `json:"referenceLocator"`
}

type spdxComment struct {
	Annotator      string `json:"annotator"`
	AnnotationDate string `json:"annotationDate"`
	AnnotationType string `json:"annotationType"`
	Comment        string `json:"comment"`
}

type spdxRelationship struct {
	SPDXElementID      string `json:"spdxElementId"`
	RelationshipType   string `json:"relationshipType"`
	RelatedSPDXElement string `json:"relatedSpdxElement"`
}

const noAssertion = "NOASSERTION"

// SPDX writes inv as an SPDX 2.3 JSON document: one package for the
// image (primaryPackagePurpose CONTAINER), which the document DESCRIBES
// and which CONTAINS every package found.
func (inv *Inventory) SPDX(o DocOptions) ([]byte, error) {
	created := o.Created.UTC().Format(time.RFC3339)
	root := spdxPackage{
		Name: o.Subject.Name, SPDXID: "SPDXRef-DocumentRoot-Image", DownloadLocation: noAssertion,
		LicenseConcluded: noAssertion, LicenseDeclared: noAssertion, CopyrightText: noAssertion,
		PrimaryPackagePurpose: "CONTAINER",
	}
	if alg, hexd, ok := strings.Cut(o.Subject.Digest, ":"); ok {
		root.VersionInfo = o.Subject.Digest
		root.Checksums = []spdxSum{{Algorithm: strings.ToUpper(alg), ChecksumValue: hexd}}
	}
	doc := spdxDoc{
		SPDXVersion: "SPDX-2.3", DataLicense: "CC0-1.0", SPDXID: "SPDXRef-DOCUMENT", Name: o.Subject.Name,
		CreationInfo: spdxCreation{Created: created, Creators: []string{"Tool: " + o.Tool}},
		Packages:     []spdxPackage{root},
		Relationships: []spdxRelationship{{SPDXElementID: "SPDXRef-DOCUMENT", RelationshipType: "DESCRIBES",
			RelatedSPDXElement: root.SPDXID}},
	}
	if len(inv.Warnings) > 0 {
		doc.CreationInfo.Comment = "incomplete: " + strings.Join(inv.Warnings, "; ")
	}
	ids := map[string]int{}
	for _, p := range inv.Packages {
		id := spdxID(p)
		if n := ids[id]; n > 0 {
			ids[id]++
			id = fmt.Sprintf("%s-%d", id, n)
		} else {
			ids[id] = 1
		}
		sp := spdxPackage{
			Name: p.Name, SPDXID: id, VersionInfo: p.Version, Supplier: spdxSupplier(p),
			DownloadLocation: noAssertion, SourceInfo: "acquired package info from " + p.Location,
			LicenseConcluded: noAssertion, LicenseDeclared: noAssertion, CopyrightText: noAssertion,
			ExternalRefs: []spdxExtRef{{ReferenceCategory: "PACKAGE-MANAGER", ReferenceType: "purl", ReferenceLocator: p.PURL}},
		}
		if p.License != "" && spdxLicenseOK(p.License) {
			sp.LicenseDeclared = p.License
		}
		doc.Packages = append(doc.Packages, sp)
		doc.Relationships = append(doc.Relationships, spdxRelationship{SPDXElementID: root.SPDXID,
			RelationshipType: "CONTAINS", RelatedSPDXElement: id})
	}
	// The namespace is unique to the content: a digest of everything else.
	body, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(body)
	doc.DocumentNamespace = "https://github.com/ibuild/ibuild/spdx/" + spdxNameSegment(o.Subject.Name) + "-" + hex.EncodeToString(sum[:16])
	return json.MarshalIndent(doc, "", "  ")
}

// spdxID is a stable SPDX identifier for p: letters, digits, . and -.
func spdxID(p Package) string {
	sum := sha256.Sum256([]byte(p.PURL + "\x00" + p.Location))
	return "SPDXRef-Package-" + string(p.Type) + "-" + spdxNameSegment(p.Name) + "-" + hex.EncodeToString(sum[:8])
}

func spdxNameSegment(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) == 0 {
		return "unnamed"
	}
	return string(b)
}

// spdxSupplier formats p's maintainer ("Name <mail>") as an SPDX
// supplier. An RPM vendor ("Red Hat, Inc.") is an organization.
func spdxSupplier(p Package) string {
	s := p.Supplier
	if s == "" {
		return noAssertion
	}
	if p.Type == Rpm {
		return "Organization: " + s
	}
	if strings.Contains(s, "<") && (strings.Contains(strings.ToLower(s), "team") || strings.Contains(strings.ToLower(s), "list")) {
		return "Organization: " + s
	}
	return "Person: " + s
}

// spdxLicenseOK accepts simple license expressions (identifiers joined by
// AND, OR, WITH and parentheses); anything else stays NOASSERTION rather
// than make the document invalid.
func spdxLicenseOK(s string) bool {
	for _, c := range s {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.ContainsRune(".-+:() ", c)) {
			return false
		}
	}
	return strings.TrimSpace(s) != ""
}

package attest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

func TestParseFlags(t *testing.T) {
	cases := []struct {
		name    string
		sbom    []string
		prov    []string
		attest  []string
		want    string // JSON of the resulting Options
		wantErr string
	}{
		{name: "bare", sbom: []string{""}, prov: []string{"true"},
			want: `{"SBOM":{"Format":"spdx","ScanStages":false},"Provenance":{"Mode":"min","Version":"v1"},"OCIArtifact":false,"BuilderVersion":""}`},
		{name: "max v0.2 cyclonedx stages", sbom: []string{"format=cyclonedx,scan-stage=true"}, prov: []string{"mode=max,version=v0.2"},
			want: `{"SBOM":{"Format":"cyclonedx","ScanStages":true},"Provenance":{"Mode":"max","Version":"v0.2"},"OCIArtifact":false,"BuilderVersion":""}`},
		{name: "attest", attest: []string{"type=sbom,generator=builtin", "type=provenance,mode=max,oci-artifact=true"},
			want: `{"SBOM":{"Format":"spdx","ScanStages":false},"Provenance":{"Mode":"max","Version":"v1"},"OCIArtifact":true,"BuilderVersion":""}`},
		{name: "false wins last", sbom: []string{"true", "false"}, prov: []string{"max", "disabled=true"},
			want: `{"SBOM":null,"Provenance":null,"OCIArtifact":false,"BuilderVersion":""}`},
		{name: "generator image", sbom: []string{"generator=docker/scout-sbom-indexer"}, wantErr: "runs no generator image"},
		{name: "bad mode", prov: []string{"mode=all"}, wantErr: "want min or max"},
		{name: "bad version", prov: []string{"version=v2"}, wantErr: "want v1 or v0.2"},
		{name: "unknown key", sbom: []string{"colour=blue"}, wantErr: `unknown key "colour"`},
		{name: "attest without type", attest: []string{"mode=max"}, wantErr: "needs type="},
		{name: "attest unknown type", attest: []string{"type=vex"}, wantErr: `unknown type "vex"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var o Options
			var err error
			for _, v := range tc.attest {
				if err == nil {
					err = o.ParseAttest(v)
				}
			}
			for _, v := range tc.sbom {
				if err == nil {
					err = o.ParseSBOM(v)
				}
			}
			for _, v := range tc.prov {
				if err == nil {
					err = o.ParseProvenance(v)
				}
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, _ := json.Marshal(o)
			if string(got) != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestSecretName(t *testing.T) {
	for name, want := range map[string]bool{
		"PASSWORD": true, "DB_PASSWORD": true, "github_token": true, "API_KEY": true, "auth": true, "MY_SECRET_VALUE": true,
		"PUBLIC_KEY": false, "TOKEN_FILE": false, "KEY_VERSION": false, "KEYBOARD": false, "GO_VERSION": false, "TOKENS": false,
	} {
		if got := SecretName(name); got != want {
			t.Errorf("SecretName(%q) = %v, want %v", name, got, want)
		}
	}
}

// image is a small random image in an OCI index, as the builder makes.
func testIndex(t *testing.T) (v1.ImageIndex, v1.Image, v1.Descriptor) {
	t.Helper()
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	var subject v1.Descriptor
	subject.MediaType, _ = img.MediaType()
	subject.Digest, _ = img.Digest()
	subject.Size, _ = img.Size()
	p := v1.Platform{OS: "linux", Architecture: "amd64"}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	return idx, img, subject
}

// TestManifestLayout checks the attestation manifest and its index entry
// against BuildKit's layout, in both forms, and reads them back.
func TestManifestLayout(t *testing.T) {
	for _, ociArtifact := range []bool{false, true} {
		t.Run(map[bool]string{false: "buildkit", true: "oci-artifact"}[ociArtifact], func(t *testing.T) {
			idx, _, subject := testIndex(t)
			subjects := ImageSubjects([]string{"registry.example/app:1"}, &v1.Platform{OS: "linux", Architecture: "amd64"}, subject.Digest)
			sb := NewStatement(PredicateSPDX, subjects, []byte(`{"spdxVersion":"SPDX-2.3"}`))
			info := BuildInfo{BuilderVersion: "v1", DockerfilePath: "Dockerfile", DockerfileDigest: "sha256:" + strings.Repeat("0", 64),
				BuildArgs: map[string]string{"VERSION": "1"}, Secrets: []string{"tok"}}
			prov, err := info.Provenance(SLSA1, subjects)
			if err != nil {
				t.Fatal(err)
			}
			att, err := Manifest(subject, []Statement{sb, prov}, ociArtifact)
			if err != nil {
				t.Fatal(err)
			}
			// validate's layer checks treat in-toto layers as artifacts,
			// which BuildKit's config (diff IDs) does not: check
			// digests and sizes only.
			if err := validate.Image(att, validate.Fast); err != nil {
				t.Fatalf("validate: %v", err)
			}
			idx = Append(idx, subject, att)
			im, _ := idx.IndexManifest()
			if len(im.Manifests) != 2 {
				t.Fatalf("%d manifests", len(im.Manifests))
			}
			d := im.Manifests[1]
			if d.Platform == nil || d.Platform.OS != "unknown" || d.Platform.Architecture != "unknown" || d.ArtifactType != "" ||
				d.Annotations[AnnotationReferenceType] != "attestation-manifest" || d.Annotations[AnnotationReferenceDigest] != subject.Digest.String() {
				t.Errorf("index entry %+v", d)
			}
			m, _ := att.Manifest()
			if m.Layers[0].MediaType != MediaTypeInToto || m.Layers[0].Annotations[AnnotationPredicateType] != PredicateSPDX ||
				m.Layers[1].Annotations[AnnotationPredicateType] != PredicateSLSA1 {
				t.Errorf("layers %+v", m.Layers)
			}
			raw, _ := att.RawConfigFile()
			if ociArtifact {
				if m.Subject == nil || m.Subject.Digest != subject.Digest || m.ArtifactType != ArtifactType || m.Config.MediaType != types.OCIEmptyJSON || string(raw) != "{}" {
					t.Errorf("OCI artifact form: %+v config %s", m, raw)
				}
			} else if m.Subject != nil || !strings.HasPrefix(string(raw), `{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:`) {
				t.Errorf("BuildKit form: subject %v config %s", m.Subject, raw)
			}
			found, err := Read(idx)
			if err != nil {
				t.Fatal(err)
			}
			f := found["linux/amd64"]
			if string(f.SBOM["SPDX"]) != `{"spdxVersion":"SPDX-2.3"}` || !strings.Contains(string(f.Provenance["SLSA"]), `"secrets":[{"id":"tok"}]`) {
				t.Errorf("read back %+v", found)
			}
		})
	}
}

func TestImageSubjects(t *testing.T) {
	d := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("a", 64)}
	got := ImageSubjects([]string{"127.0.0.1:5000/app:1", "docker.io/library/x@sha256:" + strings.Repeat("b", 64)}, &v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, d)
	want := []string{"pkg:docker/127.0.0.1:5000/app@1?platform=linux%2Farm%2Fv7", "pkg:docker/docker.io/library/x@sha256:" + strings.Repeat("b", 64) + "?platform=linux%2Farm%2Fv7"}
	for i, s := range got {
		if s.Name != want[i] || s.Digest["sha256"] != d.Hex {
			t.Errorf("subject %d: %+v, want %s", i, s, want[i])
		}
	}
	if s := ImageSubjects(nil, nil, d); len(s) != 1 || s[0].Name != "_" {
		t.Errorf("unnamed: %+v", s)
	}
}

func TestGitSource(t *testing.T) {
	dir := t.TempDir()
	commit := strings.Repeat("c0ffee", 6) + "abcd"
	files := map[string]string{
		".git/HEAD":        "ref: refs/heads/main\n",
		".git/packed-refs": "# pack-refs with: peeled\n" + commit + " refs/heads/main\n",
		".git/config":      "[core]\n\tbare = false\n[remote \"origin\"]\n\turl = https://user:tok3n@example.com/org/repo.git\n",
	}
	for p, c := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := GitSource(dir)
	if s.URI != "https://example.com/org/repo.git#"+commit || s.Digest["sha1"] != commit {
		t.Errorf("GitSource = %+v", s)
	}
	if s := GitSource(t.TempDir()); s.URI != "" || s.Digest != nil {
		t.Errorf("plain directory: %+v", s)
	}
	if got := RedactURL("git@github.com:org/repo.git"); got != "github.com:org/repo.git" {
		t.Errorf("RedactURL scp form: %q", got)
	}
}

// TestProvenanceReproducible: no time fields without times; the same
// input gives the same bytes; v0.2 has its own shape.
func TestProvenanceReproducible(t *testing.T) {
	info := BuildInfo{BuilderVersion: "v1", InvocationID: "abc", DockerfilePath: "Dockerfile", DockerfileDigest: "sha256:" + strings.Repeat("1", 64),
		Materials: []Material{{URI: "pkg:docker/b@1", Digest: map[string]string{"sha256": "2"}}, {URI: "pkg:docker/a@1", Digest: map[string]string{"sha256": "1"}}, {URI: "pkg:docker/a@1", Digest: map[string]string{"sha256": "1"}}}}
	a, _ := info.ProvenanceV1()
	b, _ := info.ProvenanceV1()
	if string(a) != string(b) || strings.Contains(string(a), "startedOn") || strings.Count(string(a), "pkg:docker/a@1") != 1 ||
		strings.Index(string(a), "pkg:docker/a@1") > strings.Index(string(a), "pkg:docker/b@1") {
		t.Errorf("v1:\n%s", a)
	}
	c, _ := info.ProvenanceV02()
	if !strings.Contains(string(c), `"buildInvocationID":"abc"`) || !strings.Contains(string(c), `"materials":[{"uri":"pkg:docker/a@1"`) {
		t.Errorf("v0.2:\n%s", c)
	}
}

package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// spdxDoc is the part of an SPDX document the tests read.
type spdxDoc struct {
	SPDXVersion string `json:"spdxVersion"`
	Packages    []struct {
		Name         string `json:"name"`
		VersionInfo  string `json:"versionInfo"`
		ExternalRefs []struct {
			ReferenceType    string `json:"referenceType"`
			ReferenceLocator string `json:"referenceLocator"`
		} `json:"externalRefs"`
	} `json:"packages"`
}

// debPackages are the names of the SPDX packages with a pkg:deb purl.
func (d spdxDoc) debPackages() map[string]bool {
	out := map[string]bool{}
	for _, p := range d.Packages {
		for _, r := range p.ExternalRefs {
			if r.ReferenceType == "purl" && strings.HasPrefix(r.ReferenceLocator, "pkg:deb/") {
				out[p.Name] = true
			}
		}
	}
	return out
}

// statement is an in-toto statement as the tests read it.
type statement struct {
	Type          string `json:"_type"`
	PredicateType string `json:"predicateType"`
	Subject       []struct {
		Name   string            `json:"name"`
		Digest map[string]string `json:"digest"`
	} `json:"subject"`
	Predicate json.RawMessage `json:"predicate"`
}

// provenance is the part of a SLSA v1 predicate the tests read.
type provenance struct {
	BuildDefinition struct {
		ExternalParameters struct {
			Dockerfile struct {
				Path   string            `json:"path"`
				Digest map[string]string `json:"digest"`
			} `json:"dockerfile"`
		} `json:"externalParameters"`
		InternalParameters struct {
			BuildConfig struct {
				Dockerfile struct {
					Data string `json:"data"`
				} `json:"dockerfile"`
				Layers []struct {
					Digest    string `json:"digest"`
					CreatedBy string `json:"createdBy"`
				} `json:"layers"`
			} `json:"buildConfig"`
		} `json:"internalParameters"`
		ResolvedDependencies []struct {
			URI    string            `json:"uri"`
			Digest map[string]string `json:"digest"`
		} `json:"resolvedDependencies"`
	} `json:"buildDefinition"`
}

// attested is one platform's image and its attestations in a pushed index.
type attested struct {
	platform   v1.Platform
	image      v1.Hash
	sbom       spdxDoc
	provenance provenance
	blobs      [][]byte // every layer of the attestation manifest
}

// readAttested checks that idx holds, for each image, one attestation
// manifest in BuildKit's layout, and returns what they say.
func readAttested(t *testing.T, idx v1.ImageIndex) []attested {
	t.Helper()
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := idx.RawManifest()
	var out []attested
	refs := map[string]v1.Descriptor{}
	for _, d := range im.Manifests {
		if d.Platform != nil && d.Platform.OS == "unknown" {
			if d.Platform.Architecture != "unknown" || d.Annotations["vnd.docker.reference.type"] != "attestation-manifest" {
				t.Fatalf("attestation manifest %s: platform %+v, annotations %v\n%s", d.Digest, d.Platform, d.Annotations, raw)
			}
			refs[d.Annotations["vnd.docker.reference.digest"]] = d
			continue
		}
		out = append(out, attested{platform: *d.Platform, image: d.Digest})
	}
	if len(refs) != len(out) {
		t.Fatalf("%d images, %d attestation manifests:\n%s", len(out), len(refs), raw)
	}
	for i := range out {
		a := &out[i]
		ad, ok := refs[a.image.String()]
		if !ok {
			t.Fatalf("no attestation manifest references %s:\n%s", a.image, raw)
		}
		att, err := idx.Image(ad.Digest)
		if err != nil {
			t.Fatal(err)
		}
		m, err := att.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range m.Layers {
			if l.MediaType != "application/vnd.in-toto+json" {
				t.Fatalf("attestation layer media type %s", l.MediaType)
			}
			layer, err := att.LayerByDigest(l.Digest)
			if err != nil {
				t.Fatal(err)
			}
			rc, err := layer.Compressed()
			if err != nil {
				t.Fatal(err)
			}
			data, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatal(err)
			}
			a.blobs = append(a.blobs, data)
			var st statement
			if err := json.Unmarshal(data, &st); err != nil {
				t.Fatal(err)
			}
			if st.Type != "https://in-toto.io/Statement/v1" || st.PredicateType != l.Annotations["in-toto.io/predicate-type"] {
				t.Fatalf("statement type %q predicate %q, layer annotation %q", st.Type, st.PredicateType, l.Annotations["in-toto.io/predicate-type"])
			}
			if len(st.Subject) == 0 || st.Subject[0].Digest["sha256"] != a.image.Hex {
				t.Fatalf("statement subject %+v, want the image manifest %s", st.Subject, a.image)
			}
			switch st.PredicateType {
			case "https://spdx.dev/Document":
				if err := json.Unmarshal(st.Predicate, &a.sbom); err != nil {
					t.Fatal(err)
				}
			case "https://slsa.dev/provenance/v1":
				if err := json.Unmarshal(st.Predicate, &a.provenance); err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatalf("unexpected predicate type %s", st.PredicateType)
			}
		}
	}
	return out
}

// installedDebs lists the packages the dpkg status file marks installed,
// read independently of ibuild's cataloger.
func installedDebs(status []byte) map[string]bool {
	out := map[string]bool{}
	for _, para := range strings.Split(string(status), "\n\n") {
		var pkg string
		installed := false
		for _, line := range strings.Split(para, "\n") {
			if v, ok := strings.CutPrefix(line, "Package: "); ok {
				pkg = v
			}
			if v, ok := strings.CutPrefix(line, "Status: "); ok {
				f := strings.Fields(v)
				installed = len(f) == 3 && f[2] == "installed"
			}
		}
		if pkg != "" && installed {
			out[pkg] = true
		}
	}
	return out
}

// fileInImage reads path from the flattened file system of img.
func fileInImage(t *testing.T, img v1.Image, path string) []byte {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			t.Fatalf("%s is not in the image", path)
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimPrefix(h.Name, "./") == strings.TrimPrefix(path, "/") {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}

func remoteIndex(t *testing.T, ref string) v1.ImageIndex {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Index(r)
	if err != nil {
		t.Fatalf("%s: %v", ref, err)
	}
	return idx
}

// checkSBOMMatchesDpkg checks that the SBOM lists exactly the packages
// the image's /var/lib/dpkg/status marks installed.
func checkSBOMMatchesDpkg(t *testing.T, idx v1.ImageIndex, a attested, want ...string) {
	t.Helper()
	img, err := idx.Image(a.image)
	if err != nil {
		t.Fatal(err)
	}
	installed := installedDebs(fileInImage(t, img, "/var/lib/dpkg/status"))
	listed := a.sbom.debPackages()
	if a.sbom.SPDXVersion != "SPDX-2.3" || len(installed) == 0 || len(listed) != len(installed) {
		t.Fatalf("%s: SPDX %q lists %d deb packages, dpkg status marks %d installed", a.platform.Architecture, a.sbom.SPDXVersion, len(listed), len(installed))
	}
	for p := range installed {
		if !listed[p] {
			t.Errorf("%s: installed package %s is not in the SBOM", a.platform.Architecture, p)
		}
	}
	for _, p := range want {
		if !listed[p] {
			t.Errorf("%s: the SBOM does not list %s", a.platform.Architecture, p)
		}
	}
}

// checkProvenance checks that the provenance names the base image by
// digest and the Dockerfile by digest, and (mode=max) holds its source.
func checkProvenance(t *testing.T, a attested, baseRepo string, base v1.Hash, dockerfile string) {
	t.Helper()
	p := a.provenance.BuildDefinition
	found := false
	for _, d := range p.ResolvedDependencies {
		found = found || strings.Contains(d.URI, baseRepo) && d.Digest["sha256"] == base.Hex
	}
	if !found {
		t.Errorf("%s: provenance does not name the base %s@%s: %+v", a.platform.Architecture, baseRepo, base, p.ResolvedDependencies)
	}
	sum := sha256.Sum256([]byte(dockerfile))
	if got := p.ExternalParameters.Dockerfile.Digest["sha256"]; got != hex.EncodeToString(sum[:]) || p.ExternalParameters.Dockerfile.Path != "Dockerfile" {
		t.Errorf("provenance Dockerfile %+v, want Dockerfile sha256:%x", p.ExternalParameters.Dockerfile, sum)
	}
	if p.InternalParameters.BuildConfig.Dockerfile.Data != dockerfile || len(p.InternalParameters.BuildConfig.Layers) == 0 {
		t.Errorf("mode=max provenance lacks the Dockerfile source or the layer steps: %+v", p.InternalParameters.BuildConfig)
	}
}

// TestAttestDebianAptInstall builds, on a Debian 12 base (debootstrap,
// cached per machine), an image that apt-get installs hello, with --sbom
// --provenance=mode=max --push: the pushed index holds the attestation
// manifest in BuildKit's layout; the SPDX SBOM lists every package dpkg
// marks installed and hello; the provenance names the base image and the
// Dockerfile by digest. skopeo copies the index to an OCI layout and back
// with the attestations, inspect reads them back, and podman pulls and
// runs the image.
func TestAttestDebianAptInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("apt-get install from the Debian mirror")
	}
	requireRoot(t)
	skopeo := layertest.RequireTool(t, "skopeo")
	reg := registrytest.Start(t)
	base := reg.Host + "/debian:bookworm"
	baseDigest := registrytest.PushDebian(t, base)
	df := "FROM " + base + "\n" +
		"RUN apt-get update && apt-get install -y --no-install-recommends hello && rm -rf /var/lib/apt/lists/*\n" +
		`CMD ["hello"]` + "\n"
	ctxDir := writeContext(t, map[string]string{"Dockerfile": df})
	root := t.TempDir()
	ref := reg.Host + "/attest/hello:1"
	mustIbuild(t, root, "build", "-q", "--sbom", "--provenance=mode=max", "--push", "-t", ref, ctxDir)

	idx := remoteIndex(t, ref)
	as := readAttested(t, idx)
	if len(as) != 1 {
		t.Fatalf("%d images in the index", len(as))
	}
	checkSBOMMatchesDpkg(t, idx, as[0], "hello", "apt", "dpkg")
	checkProvenance(t, as[0], "debian", baseDigest, df)

	// Read back: inspect, local and remote.
	for _, target := range []string{ref, "docker://" + ref} {
		out := mustIbuild(t, root, "inspect", "--format", "{{json .SBOM}}", target)
		var got struct{ SPDX spdxDoc }
		if err := json.Unmarshal([]byte(out), &got); err != nil || !got.SPDX.debPackages()["hello"] {
			t.Errorf("inspect --format '{{json .SBOM}}' %s: %v\n%.300s", target, err, out)
		}
		out = mustIbuild(t, root, "inspect", "--provenance", target)
		if !strings.Contains(out, `"SLSA"`) || !strings.Contains(out, baseDigest.Hex) {
			t.Errorf("inspect --provenance %s:\n%.300s", target, out)
		}
	}

	// skopeo: registry -> OCI layout -> registry keeps the attestations.
	oci := filepath.Join(t.TempDir(), "oci")
	ref2 := reg.Host + "/attest/hello-copy:1"
	for _, args := range [][]string{
		{"copy", "--all", "--src-tls-verify=false", "docker://" + ref, "oci:" + oci + ":v1"},
		{"copy", "--all", "--dest-tls-verify=false", "oci:" + oci + ":v1", "docker://" + ref2},
	} {
		if out, err := exec.Command(skopeo, args...).CombinedOutput(); err != nil {
			t.Fatalf("skopeo %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	lp, err := layout.FromPath(oci)
	if err != nil {
		t.Fatal(err)
	}
	lidx, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	lim, _ := lidx.IndexManifest()
	inner, err := lidx.ImageIndex(lim.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	for _, got := range []v1.ImageIndex{inner, remoteIndex(t, ref2)} {
		d1, _ := idx.Digest()
		d2, _ := got.Digest()
		if d1 != d2 {
			t.Errorf("skopeo copy changed the index: %s -> %s", d1, d2)
		}
		if a := readAttested(t, got); len(a) != 1 || !a[0].sbom.debPackages()["hello"] {
			t.Errorf("the copy lost the attestations")
		}
	}

	// A pull keeps the attestations of the platform it pulls; a push in
	// docker format says it drops them.
	root2 := t.TempDir()
	mustIbuild(t, root2, "pull", ref)
	if out := mustIbuild(t, root2, "inspect", "--sbom", ref); !strings.Contains(out, `"hello"`) {
		t.Errorf("inspect --sbom after pull:\n%.300s", out)
	}
	_, errOut, code := ibuild(t, root2, "", "push", "--format", "docker", ref, reg.Host+"/attest/hello-docker:1")
	if code != 0 || !strings.Contains(errOut, "1 attestation manifest(s) (SBOM, provenance) dropped") {
		t.Errorf("push --format docker: exit %d\n%s", code, errOut)
	}

	// podman ignores the unknown/unknown entry: it pulls and runs the image.
	podman := registrytest.Podman(t)
	podman("pull", "--tls-verify=false", ref)
	if got := strings.TrimSpace(podman(registrytest.PodmanRun(ref)...)); got != "Hello, world!" {
		t.Errorf("podman run printed %q", got)
	}
}

// TestAttestTwoPlatforms builds linux/amd64 and linux/arm64 (RUN under
// qemu) with --sbom --provenance=mode=max --push: each platform's image
// has its own attestation manifest, whose SBOM lists exactly the packages
// the platform's dpkg status marks installed, and whose provenance names
// that platform's base image manifest.
func TestAttestTwoPlatforms(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-platform build under qemu")
	}
	requireRoot(t)
	requireArm64Emulator(t)
	reg := registrytest.Start(t)
	base := reg.Host + "/busybox:multi"
	amd := v1.Platform{OS: "linux", Architecture: "amd64"}
	arm := v1.Platform{OS: "linux", Architecture: "arm64"}
	registrytest.PushBusyboxIndex(t, base, amd, arm)
	baseIdx := remoteIndex(t, base)
	baseIM, _ := baseIdx.IndexManifest()
	baseDigests := map[string]v1.Hash{}
	for _, d := range baseIM.Manifests {
		baseDigests[d.Platform.Architecture] = d.Digest
	}
	status := "Package: base-files\nStatus: install ok installed\nVersion: 12.4\nArchitecture: ARCH\n\n" +
		"Package: removed\nStatus: deinstall ok config-files\nVersion: 1.0\nArchitecture: ARCH\n"
	df := "FROM " + base + "\nARG TARGETARCH\nCOPY status /var/lib/dpkg/status\n" +
		// RUN (under qemu for arm64) installs a package of its architecture.
		`RUN echo "$(cat /var/lib/dpkg/status)" | sed "s/ARCH/$TARGETARCH/" > /tmp/s && ` +
		`printf '\nPackage: tool-%s\nStatus: install ok installed\nVersion: 1.%s\nArchitecture: %s\n' "$TARGETARCH" "$(uname -m)" "$TARGETARCH" >> /tmp/s && ` +
		"mkdir -p /var/lib/dpkg && cat /tmp/s > /var/lib/dpkg/status\n"
	ctxDir := writeContext(t, map[string]string{"Dockerfile": df, "status": status})
	ref := reg.Host + "/attest/multi:1"
	mustIbuild(t, t.TempDir(), "build", "-q", "--platform", "linux/amd64,linux/arm64", "--sbom", "--provenance=mode=max", "--push", "-t", ref, ctxDir)
	idx := remoteIndex(t, ref)
	as := readAttested(t, idx)
	if len(as) != 2 {
		t.Fatalf("%d images in the index, want 2", len(as))
	}
	for _, a := range as {
		checkSBOMMatchesDpkg(t, idx, a, "base-files", "tool-"+a.platform.Architecture)
		if a.sbom.debPackages()["removed"] {
			t.Errorf("%s: the SBOM lists a package dpkg does not mark installed", a.platform.Architecture)
		}
		checkProvenance(t, a, "busybox", baseDigests[a.platform.Architecture], df)
	}
}

// TestAttestNoSecretsReproducible builds with a --secret a RUN step reads
// and a password-like build arg: neither value is in any attestation
// blob, the build warns as buildx does (SecretsUsedInArgOrEnv), and with
// SOURCE_DATE_EPOCH two fresh store roots give the same index digest,
// attestations included.
func TestAttestNoSecretsReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end build")
	}
	requireRoot(t)
	const secretValue, argValue = "s3cret-Value-7d1f", "hunter2-Arg-93ac"
	// The step checks the secret by its digest: the Dockerfile (whose
	// source a mode=max provenance holds) never spells it.
	sum := sha256.Sum256([]byte(secretValue))
	ctxDir := busyboxContext(t, "ARG DB_PASSWORD\n"+
		"RUN --mount=type=secret,id=tok test \"$(sha256sum /run/secrets/tok | cut -c1-64)\" = "+hex.EncodeToString(sum[:])+" && echo ok > /ok\n"+
		"RUN test -n \"$DB_PASSWORD\" && echo \"$DB_PASSWORD\" | wc -c > /len\n")
	secretFile := filepath.Join(t.TempDir(), "tok")
	if err := os.WriteFile(secretFile, []byte(secretValue), 0o600); err != nil {
		t.Fatal(err)
	}
	var digests []string
	for i := range 2 {
		root := t.TempDir()
		out := filepath.Join(t.TempDir(), "oci")
		_, errOut, code := ibuild(t, root, "", "build", "--progress", "plain", "--source-date-epoch", "1700000000",
			"--sbom", "--provenance=mode=max", "--secret", "id=tok,src="+secretFile, "--build-arg", "DB_PASSWORD="+argValue,
			"-t", "repro:1", "--output", "type=oci,dest="+out+",tar=false", ctxDir)
		if code != 0 {
			t.Fatalf("build %d: exit %d\n%s", i, code, errOut)
		}
		if !strings.Contains(errOut, `SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ARG "DB_PASSWORD")`) {
			t.Errorf("no SecretsUsedInArgOrEnv warning:\n%s", errOut)
		}
		if strings.Contains(errOut, secretValue) || strings.Contains(errOut, argValue) {
			t.Errorf("a secret value reached the build output:\n%s", errOut)
		}
		lp, err := layout.FromPath(out)
		if err != nil {
			t.Fatal(err)
		}
		lidx, err := lp.ImageIndex()
		if err != nil {
			t.Fatal(err)
		}
		lim, _ := lidx.IndexManifest()
		idx, err := lidx.ImageIndex(lim.Manifests[0].Digest)
		if err != nil {
			t.Fatal(err)
		}
		as := readAttested(t, idx)
		if len(as) != 1 || len(as[0].blobs) != 2 {
			t.Fatalf("want one image with an SBOM and a provenance, got %d images", len(as))
		}
		for _, b := range as[0].blobs {
			if bytes.Contains(b, []byte(secretValue)) || bytes.Contains(b, []byte(argValue)) {
				t.Errorf("a secret value is in an attestation blob:\n%.500s", b)
			}
		}
		if !bytes.Contains(as[0].blobs[1], []byte(`"secrets":[{"id":"tok"}]`)) {
			t.Errorf("the provenance does not list the secret id:\n%.1500s", as[0].blobs[1])
		}
		d, _ := idx.Digest()
		digests = append(digests, d.String())
	}
	if digests[0] != digests[1] {
		t.Errorf("two fresh roots with SOURCE_DATE_EPOCH gave index digests %s and %s", digests[0], digests[1])
	}
}

// TestAttestCommitSBOM commits a working container with --sbom: the stored
// image becomes an index holding the image and an SBOM that lists the
// package the container's run step installed (a dpkg status entry).
func TestAttestCommitSBOM(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end working container")
	}
	requireRoot(t)
	r := newScriptRunner(t, 0, 0)
	r.buildBusybox(t)
	root := r.root
	name := strings.TrimSpace(mustIbuild(t, root, "from", "--name", "attest-commit", "busybox:1"))
	mustIbuild(t, root, "run", name, "--", "sh", "-c",
		"mkdir -p /var/lib/dpkg && printf 'Package: committed-tool\\nStatus: install ok installed\\nVersion: 4.2\\nArchitecture: amd64\\n' > /var/lib/dpkg/status")
	mustIbuild(t, root, "commit", "-q", "--sbom", "--source-date-epoch", "0", name, "committed:1")
	out := mustIbuild(t, root, "inspect", "--format", "{{json .SBOM}}", "committed:1")
	var got struct{ SPDX spdxDoc }
	if err := json.Unmarshal([]byte(out), &got); err != nil || !got.SPDX.debPackages()["committed-tool"] || len(got.SPDX.debPackages()) != 1 {
		t.Fatalf("inspect --format '{{json .SBOM}}' committed:1: %v\n%.500s", err, out)
	}
	// Without --sbom the commit stays a plain image, with no attestation.
	mustIbuild(t, root, "commit", "-q", name, "plain:1")
	if _, errOut, code := ibuild(t, root, "", "inspect", "--sbom", "plain:1"); code == 0 || !strings.Contains(errOut, "no SBOM attestation") {
		t.Errorf("inspect --sbom of a plain commit: exit %d\n%s", code, errOut)
	}
}

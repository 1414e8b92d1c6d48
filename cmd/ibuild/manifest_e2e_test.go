package main

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/registry/registrytest"
)

// scratchContext is a FROM scratch context (no RUN: any platform builds).
func scratchContext(t *testing.T, content string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range map[string]string{"Dockerfile": "FROM scratch\nARG TARGETARCH\nCOPY f /f\nLABEL arch=$TARGETARCH\n", "f": content} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestOutputTypeImagePushes: --output type=image,push=true and
// type=registry push to their names (several in one quoted name=), as
// buildx's do; type=image without push only names the stored result.
func TestOutputTypeImagePushes(t *testing.T) {
	reg := registrytest.Start(t)
	ctxDir := scratchContext(t, "pushed by an output\n")
	root := t.TempDir()
	id := strings.TrimSpace(mustIbuild(t, root, "build", "-q", "--source-date-epoch", "0",
		"--output", "type=image,name="+reg.Host+"/out/a:1,push=true",
		"--output", `type=registry,"name=`+reg.Host+`/out/b:1,`+reg.Host+`/out/c:2"`,
		"--output", "type=image,name=local-only:1",
		ctxDir))
	for _, ref := range []string{"/out/a:1", "/out/b:1", "/out/c:2"} {
		var m v1.Manifest
		if err := json.Unmarshal(skopeoInspectRaw(t, reg.Host+ref), &m); err != nil || m.Config.Digest.String() != id {
			t.Errorf("%s: config %s, built %s (%v)", ref, m.Config.Digest, id, err)
		}
	}
	out := mustIbuild(t, root, "images", "--format", "json")
	for _, n := range []string{"localhost/local-only:1", reg.Host + "/out/a:1", reg.Host + "/out/c:2"} {
		if !strings.Contains(out, `"`+n+`"`) {
			t.Errorf("images lacks %s:\n%s", n, out)
		}
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"push to a local name", []string{"--output", "type=image,name=app:1,push=true"}, "no registry to push to"},
		{"push without a name", []string{"--output", "type=registry"}, "needs a name"},
		{"push-by-digest without push", []string{"--output", "type=image,name=" + reg.Host + "/x,push-by-digest=true"}, "needs push=true"},
		{"oci-mediatypes against --format", []string{"--format", "oci", "--output", "type=image,name=x:1,oci-mediatypes=false"}, "contradicts --format"},
		{"digestfile without a push", []string{"--digestfile", "d", "-t", "x:1"}, "--digestfile needs --push"},
		{"bad annotation", []string{"--annotation", "layer:a=b"}, `unknown annotation type "layer"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := ibuild(t, t.TempDir(), "", append(append([]string{"build", "-q"}, tc.args...), ctxDir)...)
			if code == 0 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q, want an error containing %q", code, stderr, tc.want)
			}
		})
	}
}

// TestBuildAnnotationsAndMetadata pushes a two-platform build annotated at
// every level buildx knows and checks each with skopeo inspect --raw, and
// the --metadata-file buildx would write.
func TestBuildAnnotationsAndMetadata(t *testing.T) {
	reg := registrytest.Start(t)
	ctxDir := scratchContext(t, "annotated\n")
	meta := filepath.Join(t.TempDir(), "metadata.json")
	ref := reg.Host + "/ann/app:1"
	mustIbuild(t, t.TempDir(), "build", "-q", "--source-date-epoch", "0", "--platform", "linux/amd64,linux/arm64", "--push", "-t", ref,
		"--annotation", "org.opencontainers.image.title=app",
		"--annotation", "manifest[linux/arm64]:only.arm=yes",
		"--annotation", "index:org.opencontainers.image.description=both platforms",
		"--annotation", "manifest-descriptor:desc=entry",
		"--annotation", "index-descriptor:top=descriptor",
		"--output", "type=image,annotation-index.from-output=1,annotation-manifest[linux/amd64].amd=1",
		"--metadata-file", meta, ctxDir)
	var idx v1.IndexManifest
	if err := json.Unmarshal(skopeoInspectRaw(t, ref), &idx); err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"org.opencontainers.image.description": "both platforms", "from-output": "1"}; !maps.Equal(idx.Annotations, want) {
		t.Errorf("index annotations %v, want %v", idx.Annotations, want)
	}
	wantMan := map[string]map[string]string{
		"amd64": {"org.opencontainers.image.title": "app", "amd": "1"},
		"arm64": {"org.opencontainers.image.title": "app", "only.arm": "yes"},
	}
	for _, d := range idx.Manifests {
		if want := map[string]string{"desc": "entry"}; !maps.Equal(d.Annotations, want) {
			t.Errorf("%s descriptor annotations %v, want %v", d.Platform.Architecture, d.Annotations, want)
		}
		var m v1.Manifest
		if err := json.Unmarshal(skopeoInspectRaw(t, reg.Host+"/ann/app@"+d.Digest.String()), &m); err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(m.Annotations, wantMan[d.Platform.Architecture]) {
			t.Errorf("%s manifest annotations %v, want %v", d.Platform.Architecture, m.Annotations, wantMan[d.Platform.Architecture])
		}
	}
	md := metadata(t, meta)
	digest := metaString(t, md, "containerimage.digest")
	if raw := skopeoInspectRaw(t, ref); mustDigest(t, raw) != digest {
		t.Errorf("containerimage.digest %s is not the pushed index", digest)
	}
	var desc map[string]any
	if err := json.Unmarshal(md["containerimage.descriptor"], &desc); err != nil {
		t.Fatal(err)
	}
	if desc["mediaType"] != "application/vnd.oci.image.index.v1+json" || desc["digest"] != digest || desc["platform"] != nil ||
		desc["annotations"].(map[string]any)["top"] != "descriptor" {
		t.Errorf("descriptor %s", md["containerimage.descriptor"])
	}
	if _, ok := md["containerimage.config.digest"]; ok {
		t.Error("an index has no config digest")
	}
	if n := metaString(t, md, "image.name"); n != ref {
		t.Errorf("image.name %q", n)
	}
	var ps []string
	if err := json.Unmarshal(md["ibuild.build.platforms"], &ps); err != nil || strings.Join(ps, ",") != "linux/amd64,linux/arm64" {
		t.Errorf("ibuild.build.platforms %s", md["ibuild.build.platforms"])
	}
	// The file is indented JSON with sorted keys, as buildx writes it.
	b, _ := os.ReadFile(meta)
	if !strings.HasPrefix(string(b), "{\n  \"containerimage.descriptor\": {") {
		t.Errorf("metadata file layout:\n%s", b)
	}
}

func mustDigest(t *testing.T, raw []byte) string {
	t.Helper()
	h, _, err := v1.SHA256(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}

// TestManifestCommands edits a list with every manifest subcommand and
// checks the output buildah users expect and the errors.
func TestManifestCommands(t *testing.T) {
	reg := registrytest.Start(t)
	root := t.TempDir()
	mustIbuild(t, root, "build", "-q", "--platform", "linux/amd64", "-t", "app:amd64", scratchContext(t, "amd64\n"))
	mustIbuild(t, root, "build", "-q", "--platform", "linux/arm64", "-t", reg.Host+"/app:arm64", scratchContext(t, "arm64\n"))
	created := strings.TrimSpace(mustIbuild(t, root, "manifest", "create", "--annotation", "team=a", "list", "app:amd64"))
	if !strings.HasPrefix(created, "sha256:") {
		t.Fatalf("create printed %q", created)
	}
	if _, stderr, code := ibuild(t, root, "", "manifest", "create", "list"); code == 0 || !strings.Contains(stderr, "--amend") {
		t.Errorf("create over a list: %d %s", code, stderr)
	}
	added := mustIbuild(t, root, "manifest", "add", "--annotation", "k=v", "--variant", "v8", "list", reg.Host+"/app:arm64")
	listDigest, entry, ok := strings.Cut(strings.TrimSpace(added), ": ")
	if !ok || !strings.HasPrefix(listDigest, "sha256:") || !strings.HasPrefix(entry, "sha256:") {
		t.Fatalf("add printed %q", added)
	}
	if _, _, code := ibuild(t, root, "", "manifest", "exists", "list"); code != 0 {
		t.Error("exists list: not found")
	}
	for _, n := range []string{"nothing", "app:amd64"} {
		if _, _, code := ibuild(t, root, "", "manifest", "exists", n); code != 1 {
			t.Errorf("exists %s: exit %d, want 1", n, code)
		}
	}
	mustIbuild(t, root, "manifest", "annotate", "--index", "--annotation", "org.opencontainers.image.title=t", "list")
	mustIbuild(t, root, "manifest", "annotate", "--os-version", "1.0", "list", entry[:19])
	var im v1.IndexManifest
	out := mustIbuild(t, root, "manifest", "inspect", "list")
	if !strings.Contains(out, "\n    \"manifests\"") {
		t.Errorf("inspect is not indented as buildah's:\n%s", out)
	}
	if err := json.Unmarshal([]byte(out), &im); err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 2 || im.Annotations["team"] != "a" || im.Annotations["org.opencontainers.image.title"] != "t" ||
		im.Manifests[1].Annotations["k"] != "v" || im.Manifests[1].Platform.Variant != "v8" || im.Manifests[1].Platform.OSVersion != "1.0" {
		t.Fatalf("list %s", out)
	}
	if imgs := mustIbuild(t, root, "images"); !strings.Contains(imgs, "localhost/list") || !strings.Contains(imgs, "linux/amd64,linux/arm64/v8") {
		t.Errorf("images:\n%s", imgs)
	}
	// Push with --all (the default), then inspect it in the registry.
	pushed := strings.TrimSpace(mustIbuild(t, root, "manifest", "push", "-q", "list", "docker://"+reg.Host+"/app:list"))
	remote := mustIbuild(t, root, "manifest", "inspect", "docker://"+reg.Host+"/app:list")
	var rim v1.IndexManifest
	if err := json.Unmarshal([]byte(remote), &rim); err != nil || mustDigest(t, skopeoInspectRaw(t, reg.Host+"/app:list")) != pushed {
		t.Fatalf("remote list %s (%v), pushed %s", remote, err, pushed)
	}
	mustIbuild(t, root, "push", "-q", reg.Host+"/app:arm64")
	if _, stderr, code := ibuild(t, root, "", "manifest", "inspect", "docker://"+reg.Host+"/app:arm64"); code == 0 || !strings.Contains(stderr, "not a manifest list") {
		t.Errorf("inspect of an image: %d %s", code, stderr)
	}
	removed := mustIbuild(t, root, "manifest", "remove", "list", entry)
	if !strings.HasSuffix(strings.TrimSpace(removed), ": "+entry) {
		t.Errorf("remove printed %q", removed)
	}
	if _, stderr, code := ibuild(t, root, "", "manifest", "remove", "list", entry); code == 0 || !strings.Contains(stderr, "no entry") {
		t.Errorf("remove twice: %d %s", code, stderr)
	}
	if _, stderr, code := ibuild(t, root, "", "manifest", "rm", "app:amd64"); code == 0 || !strings.Contains(stderr, "not a manifest list") {
		t.Errorf("manifest rm of an image: %d %s", code, stderr)
	}
	if out := mustIbuild(t, root, "manifest", "rm", "list"); !strings.Contains(out, "Untagged: localhost/list:latest") {
		t.Errorf("rm printed %q", out)
	}
	// The images the list used keep their own names.
	mustIbuild(t, root, "inspect", "app:amd64")

	// build --manifest creates the list and adds each platform's image.
	mustIbuild(t, root, "build", "-q", "--platform", "linux/amd64,linux/arm64", "--manifest", "built", scratchContext(t, "built\n"))
	if err := json.Unmarshal([]byte(mustIbuild(t, root, "manifest", "inspect", "built")), &im); err != nil || len(im.Manifests) != 2 {
		t.Fatalf("build --manifest: %+v (%v)", im, err)
	}
}

// TestPushByDigestFromRegistryCache: a runner that takes every step from
// a registry cache pushes by digest without downloading a layer (the
// result is not stored, and the warning names the digest to pull).
func TestPushByDigestFromRegistryCache(t *testing.T) {
	reg := registrytest.Start(t)
	px := registrytest.NewProxy(t, reg.Host)
	ctxDir := scratchContext(t, strings.Repeat("cached layer\n", 1000))
	cache := px.Host + "/cache/app:buildcache"
	mustIbuild(t, t.TempDir(), "build", "-q", "--source-date-epoch", "0", "--cache-to", "type=registry,ref="+cache+",mode=max", ctxDir)
	meta := filepath.Join(t.TempDir(), "m.json")
	px.Requests()
	px.Uploaded()
	_, stderr, code := ibuild(t, t.TempDir(), "", "build", "--source-date-epoch", "0", "--cache-from", cache,
		"--output", "type=image,name="+px.Host+"/team/app,push-by-digest=true,push=true", "--metadata-file", meta, ctxDir)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	d := metaString(t, metadata(t, meta), "containerimage.digest")
	if !strings.Contains(stderr, "ibuild pull "+px.Host+"/team/app@"+d) {
		t.Errorf("warning does not name the pushed digest:\n%s", stderr)
	}
	var m v1.Manifest
	if err := json.Unmarshal(skopeoInspectRaw(t, reg.Host+"/team/app@"+d), &m); err != nil {
		t.Fatal(err)
	}
	for _, r := range px.Requests() {
		for _, l := range m.Layers {
			if strings.HasPrefix(r, "GET ") && strings.HasSuffix(r, "/blobs/"+l.Digest.String()) {
				t.Errorf("the layer %s was downloaded", l.Digest)
			}
		}
	}
	if n := px.Uploaded(); n > m.Config.Size {
		t.Errorf("%d blob bytes uploaded, more than the config (%d): the layers should be mounted from the cache", n, m.Config.Size)
	}
}

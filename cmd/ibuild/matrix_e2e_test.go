package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// matrixEpoch is the SOURCE_DATE_EPOCH of the matrix builds.
const matrixEpoch = "1700000000"

// matrixContext writes a context whose Dockerfile RUNs a step on a
// busybox base (so the arm64 build runs it under qemu).
func matrixContext(t testing.TB, base string) string {
	t.Helper()
	dir := t.TempDir()
	df := "FROM " + base + "\nARG TARGETARCH\nRUN uname -m > /arch && echo $TARGETARCH > /target\nCOPY app.txt /app.txt\nCMD [\"cat\", \"/arch\"]\n"
	for name, body := range map[string]string{"Dockerfile": df, "app.txt": strings.Repeat("the application\n", 4096)} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// metadata reads a --metadata-file.
func metadata(t testing.TB, path string) map[string]json.RawMessage {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v\n%s", path, err, b)
	}
	return m
}

func metaString(t testing.TB, m map[string]json.RawMessage, key string) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(m[key], &s); err != nil {
		t.Fatalf("metadata %s: %v (%s)", key, err, m[key])
	}
	return s
}

func skopeoInspectRaw(t testing.TB, ref string) []byte {
	t.Helper()
	skopeo := layertest.RequireTool(t, "skopeo")
	out, err := exec.Command(skopeo, "inspect", "--raw", "--tls-verify=false", "docker://"+ref).Output()
	if err != nil {
		t.Fatalf("skopeo inspect --raw %s: %v", ref, err)
	}
	return out
}

// TestCIMatrixMerge plays a CI matrix: two processes with their own
// store roots build linux/amd64 and linux/arm64 (RUN under qemu) of one
// context with SOURCE_DATE_EPOCH, each pushing by digest as buildx's
// --output type=image,push-by-digest=true does and reporting the digest
// in --metadata-file; a third, fresh root merges the two digests with
// manifest create, add and push. The merged index is byte for byte the one
// a single process building both platforms pushes, and the merge
// downloads and uploads no layer (counted at a proxy).
func TestCIMatrixMerge(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two platforms three times")
	}
	requireRoot(t)
	requireArm64Emulator(t)
	reg := registrytest.Start(t)
	px := registrytest.NewProxy(t, reg.Host)
	base := reg.Host + "/busybox:multi"
	registrytest.PushBusyboxIndex(t, base,
		v1.Platform{OS: "linux", Architecture: "amd64"},
		v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"})
	ctxDir := matrixContext(t, base)
	repo := px.Host + "/team/app"

	// One process, both platforms.
	start := time.Now()
	mustIbuild(t, t.TempDir(), "build", "-q", "--source-date-epoch", matrixEpoch, "--platform", "linux/amd64,linux/arm64",
		"--push", "-t", repo+":single", "--metadata-file", filepath.Join(t.TempDir(), "m.json"), ctxDir)
	single := time.Since(start)
	want := skopeoInspectRaw(t, reg.Host+"/team/app:single")

	// The matrix: two runners at once.
	start = time.Now()
	platforms := []string{"linux/amd64", "linux/arm64"}
	metaFiles := make([]string, len(platforms))
	errs := make([]string, len(platforms))
	var wg sync.WaitGroup
	for i, p := range platforms {
		metaFiles[i] = filepath.Join(t.TempDir(), "metadata.json")
		root := t.TempDir()
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, stderr, code := ibuild(t, root, "", "build", "-q", "--source-date-epoch", matrixEpoch, "--platform", p,
				"--output", "type=image,name="+repo+",push-by-digest=true,name-canonical=true,push=true",
				"--metadata-file", metaFiles[i], ctxDir)
			if code != 0 {
				errs[i] = stderr
			}
		}()
	}
	wg.Wait()
	for i, e := range errs {
		if e != "" {
			t.Fatalf("runner %s: %s", platforms[i], e)
		}
	}
	builds := time.Since(start)
	var digests []string
	for i, f := range metaFiles {
		m := metadata(t, f)
		d := metaString(t, m, "containerimage.digest")
		if name := metaString(t, m, "image.name"); name != repo {
			t.Errorf("runner %s: image.name %q, want %q", platforms[i], name, repo)
		}
		var desc struct {
			MediaType string       `json:"mediaType"`
			Digest    string       `json:"digest"`
			Platform  *v1.Platform `json:"platform"`
		}
		if err := json.Unmarshal(m["containerimage.descriptor"], &desc); err != nil || desc.Digest != d || desc.Platform == nil ||
			desc.Platform.OS+"/"+desc.Platform.Architecture != platforms[i] || desc.MediaType != "application/vnd.oci.image.manifest.v1+json" {
			t.Errorf("runner %s: descriptor %s (%v)", platforms[i], m["containerimage.descriptor"], err)
		}
		if _, ok := m["containerimage.config.digest"]; !ok {
			t.Errorf("runner %s: no containerimage.config.digest", platforms[i])
		}
		// Pushed by digest only: no tag names it.
		if raw := skopeoInspectRaw(t, reg.Host+"/team/app@"+d); !strings.Contains(string(raw), `"config"`) {
			t.Errorf("runner %s: %s is not an image manifest: %s", platforms[i], d, raw)
		}
		digests = append(digests, d)
	}
	if tags := listTags(t, reg.Host+"/team/app"); len(tags) != 1 || tags[0] != "single" {
		t.Errorf("tags %q: push by digest tagged something", tags)
	}

	// The merge job, in a fresh root.
	merge := t.TempDir()
	px.Requests()
	px.Uploaded()
	px.Transferred()
	start = time.Now()
	mustIbuild(t, merge, "manifest", "create", "app-list")
	mustIbuild(t, merge, "manifest", "add", "app-list", "docker://"+repo+"@"+digests[0])
	mustIbuild(t, merge, "manifest", "add", "app-list", repo+"@"+digests[1])
	digestFile := filepath.Join(t.TempDir(), "digest")
	out := mustIbuild(t, merge, "manifest", "push", "--digestfile", digestFile, "app-list", "docker://"+repo+":merged")
	mergeTime := time.Since(start)
	reqs := px.Requests()
	sent, received := px.Transferred()
	got := skopeoInspectRaw(t, reg.Host+"/team/app:merged")
	if !bytes.Equal(got, want) {
		t.Fatalf("merged index\n%s\nis not the single-process one\n%s", got, want)
	}
	pushed, _ := os.ReadFile(digestFile)
	wantDigest, _, _ := v1.SHA256(bytes.NewReader(want))
	if string(pushed) != wantDigest.String() || strings.TrimSpace(out) != wantDigest.String() {
		t.Errorf("--digestfile %q, stdout %q, want %s", pushed, out, wantDigest)
	}
	// No layer moved: the only blob GETs are the two configs.
	var im v1.IndexManifest
	if err := json.Unmarshal(want, &im); err != nil {
		t.Fatal(err)
	}
	configs := map[string]bool{}
	for _, d := range im.Manifests {
		var m v1.Manifest
		if err := json.Unmarshal(skopeoInspectRaw(t, reg.Host+"/team/app@"+d.Digest.String()), &m); err != nil {
			t.Fatal(err)
		}
		configs[m.Config.Digest.String()] = true
	}
	for _, r := range reqs {
		if strings.HasPrefix(r, "GET ") && strings.Contains(r, "/blobs/") && !configs[r[strings.LastIndex(r, "/")+1:]] {
			t.Errorf("the merge downloaded a layer: %s", r)
		}
	}
	if n := px.Uploaded(); n != 0 {
		t.Errorf("the merge uploaded %d blob bytes", n)
	}
	t.Logf("one process: %.1fs; matrix: runners %.1fs (in parallel) + merge %.2fs = %.1fs; merge: %d requests, %d bytes sent, %d received",
		single.Seconds(), builds.Seconds(), mergeTime.Seconds(), (builds + mergeTime).Seconds(), len(reqs), sent, received)

	// The merged list as buildah's manifest inspect prints it.
	var inspected v1.IndexManifest
	if err := json.Unmarshal([]byte(mustIbuild(t, merge, "manifest", "inspect", "app-list")), &inspected); err != nil || len(inspected.Manifests) != 2 {
		t.Errorf("manifest inspect: %+v (%v)", inspected, err)
	}
}

// listTags lists a repository's tags with skopeo.
func listTags(t testing.TB, repo string) []string {
	t.Helper()
	out, err := exec.Command(layertest.RequireTool(t, "skopeo"), "list-tags", "--tls-verify=false", "docker://"+repo).Output()
	if err != nil {
		t.Fatalf("skopeo list-tags %s: %v", repo, err)
	}
	var l struct{ Tags []string }
	if err := json.Unmarshal(out, &l); err != nil {
		t.Fatalf("skopeo list-tags: %v\n%s", err, out)
	}
	return l.Tags
}

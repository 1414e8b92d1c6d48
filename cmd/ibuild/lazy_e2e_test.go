package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ibuild/ibuild/layers/layertest"
)

// TestBuildPushKilledMidLayer: `ibuild build --push` killed (SIGKILL)
// while a layer is being uploaded leaves the store without a partial
// blob (every blob there verifies), the registry without the manifest,
// and the next `build --push` of the same input completes from the
// cache, uploading the blob made (and checked) before the upload began.
func TestBuildPushKilledMidLayer(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end builds")
	}
	reg, px := slowRegistry(t)
	root := t.TempDir()
	ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY big /big\n"})
	writeBigFile(t, filepath.Join(ctxDir, "big"), 8, 7)
	ref := px.Host + "/killed/app:1"
	cmd := exec.Command(ibuildBin, "--root", root, "build", "-q", "--push", "-t", ref, ctxDir)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// The layer streams to the registry while it is committed; the
	// throttled registry falls behind, so the stream is abandoned and
	// the layer committed. Kill the build once its push, after the
	// build, is uploading: the push begins by asking (HEAD) for the
	// blobs, which the stream never does.
	pushing := func() bool {
		for _, r := range px.Requests() {
			if strings.HasPrefix(r, "HEAD ") && strings.Contains(r, "/blobs/sha256:") {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(time.Minute)
	var reached func(int) string
	for reached == nil || reached(0) == "" {
		select {
		case err := <-done:
			t.Fatalf("the build ended before its push uploaded anything: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no upload within a minute:\n%s", out.String())
		}
		if reached == nil && pushing() {
			px.Uploaded() // what the abandoned stream sent
			reached = uploaded(px, "uploading")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "blobs", "sha256")); len(ents) == 0 {
		t.Fatal("no blob stored before the push")
	}
	cmd.Process.Kill()
	<-done
	layertest.CheckBlobs(t, root)
	noManifest(reg, "killed/app", "1")(t)

	px.Throttle(0)
	if _, stderr, code := ibuild(t, root, "", "build", "--progress", "plain", "--push", "-t", ref, ctxDir); code != 0 {
		t.Fatalf("second build --push: exit %d\n%s", code, stderr)
	} else if !strings.Contains(stderr, "CACHED") {
		t.Errorf("the second build ran its step again:\n%s", stderr)
	}
	layertest.CheckBlobs(t, root)
	if out, err := exec.Command("skopeo", "inspect", "--tls-verify=false", "docker://"+reg.Host+"/killed/app:1").CombinedOutput(); err != nil {
		t.Fatalf("skopeo inspect after the second push: %v\n%s", err, out)
	}
}

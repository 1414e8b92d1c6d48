package builder

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"path"
	"runtime"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// multiArchBase serves a busybox-static index for linux/amd64 and
// linux/arm64/v8 (the variant as Docker Hub's images carry it) from a
// fresh docker-registry and returns its reference.
func multiArchBase(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("a foreign busybox from apt and a registry: skipped with -short")
	}
	reg := registrytest.Start(t)
	ref := reg.Host + "/busybox:multi"
	registrytest.PushBusyboxIndex(t, ref,
		v1.Platform{OS: "linux", Architecture: "amd64"},
		v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"})
	return ref
}

// requireEmulation skips the test (fails it under CI) unless RUN steps
// can run here for every platform of ps: as root, natively or through a
// binfmt_misc handler with the F flag (.ci/run registers qemu-aarch64).
func requireEmulation(t *testing.T, ps ...v1.Platform) {
	t.Helper()
	if testing.Short() {
		t.Skip("RUN steps under emulation: skipped with -short")
	}
	if os.Geteuid() != 0 {
		layertest.SkipOrFail(t, "RUN tests need root (namespaces, overlay, chroot)")
	}
	for _, p := range ps {
		if err := checkEmulator("", runtime.GOARCH, p); err != nil {
			layertest.SkipOrFail(t, "%v", err)
		}
	}
}

// imageFile is the content of the regular file p in img's flattened tree.
func imageFile(t *testing.T, img v1.Image, p string) string {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			t.Fatalf("%s not in the image", p)
		}
		if err != nil {
			t.Fatal(err)
		}
		if path.Clean("/"+h.Name) == p {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}
	}
}

// indexImages checks res is an index of one image per platform of want,
// in order, with docker's platform fields (linux/arm64 without a
// variant), and returns the images.
func indexImages(t *testing.T, res *Result, want ...string) []v1.Image {
	t.Helper()
	if res.Index == nil {
		t.Fatal("want an index result")
	}
	if err := validate.Index(res.Index); err != nil {
		t.Fatal(err)
	}
	im, err := res.Index.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != len(want) {
		t.Fatalf("%d manifests, want %d", len(im.Manifests), len(want))
	}
	var out []v1.Image
	for i, d := range im.Manifests {
		if d.Platform == nil || d.Platform.OS+"/"+d.Platform.Architecture != want[i] || d.Platform.Variant != "" || d.ArtifactType != "" {
			t.Fatalf("manifest %d: platform %+v, artifactType %q; want %s and no artifactType", i, d.Platform, d.ArtifactType, want[i])
		}
		img, err := res.Index.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cfg.OS+"/"+cfg.Architecture != want[i] {
			t.Fatalf("manifest %d: config platform %s/%s/%s, want %s", i, cfg.OS, cfg.Architecture, cfg.Variant, want[i])
		}
		out = append(out, img)
	}
	return out
}

// TestMultiArchRunUname runs `uname -m` in a base of each platform of an
// index: natively for amd64, under qemu-user (binfmt_misc) for arm64.
func TestMultiArchRunUname(t *testing.T) {
	plats, err := ParsePlatforms("linux/amd64,linux/arm64")
	if err != nil {
		t.Fatal(err)
	}
	requireEmulation(t, plats...)
	base := multiArchBase(t)
	st := newStore(t)
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN uname -m > /arch\n"})
	res, err := Build(context.Background(), Options{Store: st, ContextDir: dir, Platforms: plats, Tags: []string{"uname:multi"}})
	if err != nil {
		t.Fatal(err)
	}
	imgs := indexImages(t, res, "linux/amd64", "linux/arm64")
	for i, want := range []string{"x86_64\n", "aarch64\n"} {
		if got := imageFile(t, imgs[i], "/arch"); got != want {
			t.Errorf("%s: uname -m wrote %q, want %q", PlatformString(plats[i]), got, want)
		}
	}
}

// TestMultiArchCrossBuild builds a stage on the build platform for each
// target, which writes the target's ARGs; the final stages copy them into
// bases of the target platform. No emulator is needed: only the build
// platform runs RUN.
func TestMultiArchCrossBuild(t *testing.T) {
	requireEmulation(t, HostPlatform())
	base := multiArchBase(t)
	st := newStore(t)
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM --platform=$BUILDPLATFORM " + base + " AS build\n" +
		"ARG TARGETARCH TARGETOS TARGETPLATFORM TARGETVARIANT BUILDPLATFORM BUILDARCH\n" +
		"RUN echo $TARGETARCH > /t && echo \"$TARGETOS $TARGETPLATFORM [$TARGETVARIANT] $BUILDPLATFORM $BUILDARCH $(uname -m)\" > /all\n" +
		"FROM " + base + "\n" +
		"COPY --from=build /t /all /\n"})
	plats, err := ParsePlatforms("linux/amd64,linux/arm64")
	if err != nil {
		t.Fatal(err)
	}
	res, err := Build(context.Background(), Options{Store: st, ContextDir: dir, Platforms: plats,
		binfmtDir: "testdata/binfmt/none"}) // the final stage has no RUN: no emulator is consulted
	if err != nil {
		t.Fatal(err)
	}
	imgs := indexImages(t, res, "linux/amd64", "linux/arm64")
	host := HostPlatform()
	uname := map[string]string{"amd64": "x86_64", "arm64": "aarch64"}[host.Architecture]
	for i, arch := range []string{"amd64", "arm64"} {
		if got := imageFile(t, imgs[i], "/t"); got != arch+"\n" {
			t.Errorf("TARGETARCH %q, want %q", got, arch)
		}
		want := "linux linux/" + arch + " [] " + PlatformString(host) + " " + host.Architecture + " " + uname + "\n"
		if got := imageFile(t, imgs[i], "/all"); got != want {
			t.Errorf("%s: build stage wrote %q, want %q", arch, got, want)
		}
		// The final stage's base is the target's busybox.
		if bb := imageFile(t, imgs[i], "/bin/busybox"); !strings.HasPrefix(bb, "\x7fELF") || (arch == "arm64") != (bb[18] == 183) {
			t.Errorf("%s image has a busybox for ELF machine %d", arch, bb[18])
		}
	}
}

// TestMultiArchBaseLacksPlatform asks for a platform the base index does
// not have: the error names the platform asked for and those it has.
func TestMultiArchBaseLacksPlatform(t *testing.T) {
	base := multiArchBase(t)
	st := newStore(t)
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nCOPY Dockerfile /\n"})
	plats, err := ParsePlatforms("linux/amd64,linux/s390x")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Build(context.Background(), Options{Store: st, ContextDir: dir, Platforms: plats})
	if err == nil {
		t.Fatal("want an error")
	}
	t.Log(err)
	for _, w := range []string{"Dockerfile:1", "linux/s390x", "linux/amd64", "linux/arm64"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q: %v", w, err)
		}
	}
}

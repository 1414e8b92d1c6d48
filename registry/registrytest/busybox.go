package registrytest

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/layers/layertest"
)

// elfMachines are the ELF machines of the architectures BusyboxBinary
// serves, and debianArchs Debian's names for them.
var (
	elfMachines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64, "arm": elf.EM_ARM,
		"386": elf.EM_386, "s390x": elf.EM_S390, "ppc64le": elf.EM_PPC64, "riscv64": elf.EM_RISCV}
	debianArchs = map[string]string{"arm": "armhf", "386": "i386", "ppc64le": "ppc64el"}
)

// BusyboxBinary returns a static busybox for the GOARCH-style arch: the
// host's /bin/busybox (Debian's busybox-static) for the host's
// architecture; for another, Debian's busybox-static:<arch> fetched with
// `apt-get download` into a temporary directory, which needs the
// architecture added first (as root: `dpkg --add-architecture arm64 &&
// apt-get update`; .ci/run does). Unavailable, it skips the test (fails it
// under CI).
func BusyboxBinary(t testing.TB, arch string) string {
	t.Helper()
	var bin string
	if arch == runtime.GOARCH {
		bin = layertest.RequireTool(t, "/bin/busybox")
	} else {
		layertest.RequireTool(t, "apt-get")
		layertest.RequireTool(t, "dpkg-deb")
		deb := arch
		if d, ok := debianArchs[arch]; ok {
			deb = d
		}
		dir := t.TempDir()
		get := exec.Command("apt-get", "download", "busybox-static:"+deb)
		get.Dir = dir
		if out, err := get.CombinedOutput(); err != nil {
			layertest.SkipOrFail(t, "cannot get a %s busybox: apt-get download busybox-static:%s: %v\n%s(as root: dpkg --add-architecture %s && apt-get update)", arch, deb, err, out, deb)
		}
		debs, _ := filepath.Glob(filepath.Join(dir, "busybox-static_*.deb"))
		if len(debs) != 1 {
			t.Fatalf("apt-get download busybox-static:%s left %v", deb, debs)
		}
		if out, err := exec.Command("dpkg-deb", "-x", debs[0], filepath.Join(dir, "x")).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb -x %s: %v\n%s", debs[0], err, out)
		}
		bin = filepath.Join(dir, "x", "bin", "busybox")
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("busybox for %s: %v", arch, err)
	}
	defer f.Close()
	if want, ok := elfMachines[arch]; !ok || f.Machine != want {
		t.Fatalf("%s is a %v binary, not one for %s", bin, f.Machine, arch)
	}
	return bin
}

// busyboxApplets are linked to busybox in the fixture images' /bin.
var busyboxApplets = []string{"sh", "uname", "echo", "cat", "ls", "true", "mkdir", "env"}

// BusyboxImage is an OCI image of the static busybox for p.Architecture:
// /bin/busybox, a few applets linked to it, PATH=/bin and CMD ["sh"].
func BusyboxImage(t testing.TB, p v1.Platform) v1.Image {
	t.Helper()
	data, err := os.ReadFile(BusyboxBinary(t, p.Architecture))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mod := time.Unix(0, 0)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"bin/", "tmp/"} {
		must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: mod}))
	}
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(data)), ModTime: mod}))
	_, err = tw.Write(data)
	must(err)
	for _, a := range busyboxApplets {
		must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", ModTime: mod}))
	}
	must(tw.Close())
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(buf.Bytes())), nil
	}, tarball.WithMediaType(types.OCILayer))
	must(err)
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		OS: p.OS, Architecture: p.Architecture, Variant: p.Variant, Created: v1.Time{Time: mod},
		Config: v1.Config{Env: []string{"PATH=/bin"}, Cmd: []string{"sh"}},
		RootFS: v1.RootFS{Type: "layers"},
	})
	must(err)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{Created: v1.Time{Time: mod}, CreatedBy: "busybox-static " + p.Architecture}})
	must(err)
	return img
}

// PushBusyboxIndex pushes to ref (on a plain-HTTP registry) an OCI image
// index of BusyboxImage for each platform, with the platforms as given
// (linux/arm64/v8 keeps its variant, as Docker Hub's images have it), and
// returns the index digest.
func PushBusyboxIndex(t testing.TB, ref string, platforms ...v1.Platform) v1.Hash {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	var idx v1.ImageIndex = mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var archs []string
	for _, p := range platforms {
		p := p
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: BusyboxImage(t, p), Descriptor: v1.Descriptor{Platform: &p}})
		archs = append(archs, p.Architecture)
	}
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatalf("push busybox index (%s) to %s: %v", strings.Join(archs, ", "), ref, err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

package compat

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
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

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// basePlatforms are the platforms the test bases serve.
var basePlatforms = []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64", Variant: "v8"}}

// Docker Hub busybox's users and groups.
const (
	busyboxPasswd = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
`
	busyboxGroup = `root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nobody:x:65534:
`
)

// busyboxImage is a stand-in for Docker Hub's busybox for platform p:
// the static busybox of Debian's busybox-static with every applet hard
// linked in /bin, Docker Hub busybox's /etc/passwd and /etc/group, and
// its directories (/root 0700, /tmp 1777, /home, /usr/sbin, /var/spool/mail,
// /var/www); PATH as Docker Hub's and CMD ["sh"].
func busyboxImage(t testing.TB, p v1.Platform, applets []string) v1.Image {
	t.Helper()
	data, err := os.ReadFile(registrytest.BusyboxBinary(t, p.Architecture))
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
	dir := func(name string, mode int64) {
		must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: mod}))
	}
	file := func(name string, mode int64, body []byte) {
		must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body)), ModTime: mod}))
		_, err := tw.Write(body)
		must(err)
	}
	for _, d := range []string{"bin", "dev", "etc", "home", "root", "tmp", "usr", "usr/sbin", "var", "var/spool", "var/spool/mail", "var/www"} {
		mode := int64(0o755)
		switch d {
		case "root":
			mode = 0o700
		case "tmp":
			mode = 0o1777
		}
		dir(d, mode)
	}
	file("bin/busybox", 0o755, data)
	for _, a := range applets {
		if a == "busybox" {
			continue
		}
		// A hard link's header carries its inode's metadata, as tar
		// writes it: extractors apply it to the shared inode.
		must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeLink, Name: "bin/" + a, Linkname: "bin/busybox", Mode: 0o755, ModTime: mod}))
	}
	file("etc/passwd", 0o644, []byte(busyboxPasswd))
	file("etc/group", 0o644, []byte(busyboxGroup))
	must(tw.Close())
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(buf.Bytes())), nil
	}, tarball.WithMediaType(types.OCILayer))
	must(err)
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		OS: p.OS, Architecture: p.Architecture, Variant: p.Variant, Created: v1.Time{Time: mod},
		Config: v1.Config{Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, Cmd: []string{"sh"}},
		RootFS: v1.RootFS{Type: "layers"},
	})
	must(err)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{Created: v1.Time{Time: mod}, CreatedBy: "busybox-static " + p.Architecture + " (ibuild compat test base)"}})
	must(err)
	return img
}

// busyboxIndex is the busybox stand-in for every base platform.
func busyboxIndex(t testing.TB) v1.ImageIndex {
	t.Helper()
	out, err := exec.Command(registrytest.BusyboxBinary(t, "amd64"), "--list").Output()
	if err != nil {
		t.Fatalf("busybox --list: %v", err)
	}
	applets := strings.Fields(string(out))
	var idx v1.ImageIndex = mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range basePlatforms {
		p := p
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: busyboxImage(t, p, applets), Descriptor: v1.Descriptor{Platform: &p}})
	}
	return idx
}

// serveHubImages pushes idx to the registry reg under each Docker Hub name
// ("docker.io/library/alpine:3") and stores it in st under the same name,
// so both builders resolve the name to the same image without the
// internet: BuildKit through its docker.io mirror, ibuild from its store.
func serveHubImages(t testing.TB, reg string, st *layers.Store, idx v1.ImageIndex, names []string) {
	t.Helper()
	ctx := context.Background()
	desc, err := st.WriteIndex(ctx, idx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		repoTag := strings.TrimPrefix(n, "docker.io/")
		ref, err := name.ParseReference(reg+"/"+repoTag, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.WriteIndex(ref, idx); err != nil {
			t.Fatalf("push %s: %v", ref, err)
		}
		if err := st.Tag(ctx, n, desc); err != nil {
			t.Fatal(err)
		}
	}
}

// storeFromRegistry copies the image at ref (on the plain-HTTP test
// registry) into st under each name.
func storeFromRegistry(t testing.TB, st *layers.Store, ref string, names ...string) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r)
	if err != nil {
		t.Fatalf("fetch %s: %v", ref, err)
	}
	ctx := context.Background()
	desc, err := st.WriteImage(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if err := st.Tag(ctx, n, desc); err != nil {
			t.Fatal(err)
		}
	}
}

package registry_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ibuild/ibuild/layers/layertest"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
)

func TestParseOutput(t *testing.T) {
	tests := []struct {
		spec    string
		want    registry.Output
		wantErr string // a substring of the error, naming the key
	}{
		{spec: "type=oci,dest=img.tar", want: registry.Output{Type: "oci", Dest: "img.tar", Tar: true}},
		{spec: "type=oci,dest=dir,tar=false", want: registry.Output{Type: "oci", Dest: "dir"}},
		{spec: "type=oci,dest=-,name=demo:1", want: registry.Output{Type: "oci", Dest: "-", Tar: true, Name: "demo:1"}},
		{spec: "type=docker,dest=img.tar", want: registry.Output{Type: "docker", Dest: "img.tar", Tar: true}},
		{spec: "type=local,dest=out", want: registry.Output{Type: "local", Dest: "out"}},
		{spec: "type=tar,dest=rootfs.tar", want: registry.Output{Type: "tar", Dest: "rootfs.tar", Tar: true}},
		{spec: "type=tar,dest=-", want: registry.Output{Type: "tar", Dest: "-", Tar: true}},
		{spec: "type=image,name=demo", want: registry.Output{Type: "image", Name: "demo", ImageOutput: registry.ImageOutput{Names: []string{"demo"}}}},
		{spec: "type=image", want: registry.Output{Type: "image"}},
		{spec: `type=image,"name=reg.io/a:1,reg.io/b:2",push=true`, want: registry.Output{Type: "image", Name: "reg.io/a:1,reg.io/b:2",
			ImageOutput: registry.ImageOutput{Names: []string{"reg.io/a:1", "reg.io/b:2"}, Push: true}}},
		{spec: "type=image,name=reg.io/app,push-by-digest=true,name-canonical=true,push=true", want: registry.Output{Type: "image", Name: "reg.io/app",
			ImageOutput: registry.ImageOutput{Names: []string{"reg.io/app"}, Push: true, PushByDigest: true, NameCanonical: true}}},
		{spec: "type=registry,name=reg.io/app:1", want: registry.Output{Type: "image", Name: "reg.io/app:1", ImageOutput: registry.ImageOutput{Names: []string{"reg.io/app:1"}, Push: true}}},
		{spec: "type=registry,name=reg.io/app:1,push=false", want: registry.Output{Type: "image", Name: "reg.io/app:1", ImageOutput: registry.ImageOutput{Names: []string{"reg.io/app:1"}}}},
		{spec: "type=image,registry.insecure=true,oci-mediatypes=false", want: registry.Output{Type: "image", ImageOutput: registry.ImageOutput{Insecure: true, OCIMediaTypes: new(bool)}}},
		{spec: "type=image,annotation.a=1,annotation-index.b=2,annotation-manifest[linux/arm64/v8].c=3,annotation-manifest-descriptor.d=4,annotation-index-descriptor.e=5",
			want: registry.Output{Type: "image", Annotations: []registry.Annotation{
				{Type: registry.AnnotationManifest, Key: "a", Value: "1"},
				{Type: registry.AnnotationIndex, Key: "b", Value: "2"},
				{Type: registry.AnnotationManifest, Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}, Key: "c", Value: "3"},
				{Type: registry.AnnotationManifestDescriptor, Key: "d", Value: "4"},
				{Type: registry.AnnotationIndexDescriptor, Key: "e", Value: "5"},
			}}},
		{spec: "type=oci,dest=x.tar,annotation.k=v", want: registry.Output{Type: "oci", Dest: "x.tar", Tar: true, Annotations: []registry.Annotation{{Type: registry.AnnotationManifest, Key: "k", Value: "v"}}}},
		{spec: "out/dir", want: registry.Output{Type: "local", Dest: "out/dir"}},
		{spec: "-", want: registry.Output{Type: "tar", Dest: "-", Tar: true}},
		{spec: "dest=only", want: registry.Output{Type: "local", Dest: "only"}},
		{spec: `type=local,"dest=a,b"`, want: registry.Output{Type: "local", Dest: "a,b"}},
		{spec: "", wantErr: "empty"},
		{spec: "type=oci,dest=x,color=red", wantErr: `"color"`},
		{spec: "type=zip,dest=x", wantErr: `"type"`},
		{spec: "type=oci", wantErr: `"dest"`},
		{spec: "type=oci,dest=x,tar=maybe", wantErr: `"tar"`},
		{spec: "type=oci,dest=-,tar=false", wantErr: `"dest"`},
		{spec: "type=docker,dest=x,tar=false", wantErr: `"tar"`},
		{spec: "type=local,dest=-", wantErr: `"dest"`},
		{spec: "type=local,dest=x,tar=true", wantErr: `"tar"`},
		{spec: "type=local,dest=x,name=y", wantErr: `"name"`},
		{spec: "type=image,dest=x", wantErr: `"dest"`},
		{spec: "type=oci,type=docker,dest=x", wantErr: `"type"`},
		{spec: "type=oci,dest", wantErr: `"dest"`},
		{spec: "type=image,push=yes please", wantErr: `"push"`},
		{spec: "type=image,push-by-digest=true", wantErr: `"push-by-digest"`},
		{spec: "type=oci,dest=x,push=true", wantErr: `"push"`},
		{spec: "type=local,dest=x,annotation.k=v", wantErr: "annotations"},
		{spec: "type=image,annotation-layer.k=v", wantErr: `"annotation-layer.k"`},
		{spec: "type=image,annotation.=v", wantErr: "empty key"},
		{spec: `type=image,"name=a,,b"`, wantErr: `"name"`},
		{spec: "type=image,store=false", wantErr: "push-by-digest"},
	}
	for _, tc := range tests {
		t.Run(tc.spec, func(t *testing.T) {
			got, err := registry.ParseOutput(tc.spec)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseOutput(%q) = %+v, %v; want an error containing %s", tc.spec, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("ParseOutput(%q) = %+v, %v; want %+v", tc.spec, got, err, tc.want)
			}
		})
	}
}

type file struct {
	name, body string
	typ        byte
	link       string
}

func layerTar(t testing.TB, files []file) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := &tar.Header{Name: f.name, Typeflag: f.typ, Linkname: f.link, Mode: 0o644, ModTime: time.Unix(1700000000, 0)}
		switch f.typ {
		case 0:
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(f.body))
		case tar.TypeDir:
			hdr.Mode = 0o755
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			tw.Write([]byte(f.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// testImage builds an OCI image whose layers live in a fresh store.
func testImage(t testing.TB, arch string, layerFiles ...[]file) v1.Image {
	t.Helper()
	ctx := context.Background()
	s, err := layers.OpenStore(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	for _, fs := range layerFiles {
		d, err := s.Blobs().CommitTar(ctx, bytes.NewReader(layerTar(t, fs)), layers.CommitOptions{Compression: layers.Gzip})
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, s.Blobs().Layer(d)); err != nil {
			t.Fatal(err)
		}
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config.Cmd = []string{"/bin/sh"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

var (
	baseFiles = []file{
		{name: "etc/", typ: tar.TypeDir},
		{name: "etc/os-release", body: "ID=ibuild-test\n"},
		{name: "etc/removed", body: "removed later"},
		{name: "opq/", typ: tar.TypeDir},
		{name: "opq/old", body: "old"},
		{name: "bin/", typ: tar.TypeDir},
		{name: "bin/tool", body: "tool v1"},
		{name: "bin/tool-link", typ: tar.TypeLink, link: "bin/tool"},
		{name: "sh", typ: tar.TypeSymlink, link: "/bin/tool"},
	}
	topFiles = []file{
		{name: "etc/", typ: tar.TypeDir},
		{name: "etc/.wh.removed"},
		{name: "opq/", typ: tar.TypeDir},
		{name: "opq/.wh..wh..opq"},
		{name: "opq/new", body: "new"},
		{name: "bin/", typ: tar.TypeDir},
		{name: "bin/tool", body: "tool v2"},
		{name: "app", body: "app"},
	}
	// wantRootFS is the final filesystem: symlinks as "->target".
	wantRootFS = map[string]string{
		"etc/":           "",
		"etc/os-release": "ID=ibuild-test\n",
		"opq/":           "",
		"opq/new":        "new",
		"bin/":           "",
		"bin/tool":       "tool v2",
		"bin/tool-link":  "tool v1", // its target was replaced: it keeps the old content
		"sh":             "->/bin/tool",
		"app":            "app",
	}
)

// imageByName finds the image named name in an OCI layout index.
func imageByName(t testing.TB, idx v1.ImageIndex, ref string) v1.Image {
	t.Helper()
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range im.Manifests {
		if d.Annotations[layers.RefNameAnnotation] == ref {
			img, err := idx.Image(d.Digest)
			if err != nil {
				t.Fatal(err)
			}
			return img
		}
	}
	t.Fatalf("no image named %q in %+v", ref, im.Manifests)
	return nil
}

func sameDigest(t testing.TB, got, want interface{ Digest() (v1.Hash, error) }) {
	t.Helper()
	g, err1 := got.Digest()
	w, err2 := want.Digest()
	if err1 != nil || err2 != nil || g != w {
		t.Errorf("digest %s (%v), want %s (%v)", g, err1, w, err2)
	}
}

func TestWriteOCILayout(t *testing.T) {
	const layoutName = "localhost/x:1"
	ctx := context.Background()
	img := testImage(t, "amd64", baseFiles, topFiles)
	other := testImage(t, "arm64", baseFiles)
	dir := filepath.Join(t.TempDir(), "layout")
	if err := registry.WriteOCILayout(ctx, dir, img, nil, layoutName); err != nil {
		t.Fatal(err)
	}
	// A second image joins the layout; rewriting the first replaces it.
	if err := registry.WriteOCILayout(ctx, dir, other, nil, "other"); err != nil {
		t.Fatal(err)
	}
	if err := registry.WriteOCILayout(ctx, dir, img, nil, layoutName); err != nil {
		t.Fatal(err)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	if im, _ := idx.IndexManifest(); len(im.Manifests) != 2 {
		t.Fatalf("index.json has %d entries, want 2", len(im.Manifests))
	}
	got := imageByName(t, idx, layoutName)
	sameDigest(t, got, img)
	if err := validate.Image(got); err != nil {
		t.Fatalf("validate.Image: %v", err)
	}
	if err := registry.WriteOCILayout(ctx, dir, img, nil, "bad name!"); err == nil {
		t.Error("an invalid ref name was accepted")
	}

	t.Run("skopeo", func(t *testing.T) {
		skopeo := layertest.RequireTool(t, "skopeo")
		out, err := exec.Command(skopeo, "inspect", "oci:"+dir+":"+layoutName).CombinedOutput()
		if err != nil {
			t.Fatalf("skopeo inspect: %v\n%s", err, out)
		}
		var info struct{ Digest string }
		json.Unmarshal(out, &info)
		if want, _ := img.Digest(); info.Digest != want.String() {
			t.Errorf("skopeo saw digest %q, want %s", info.Digest, want)
		}
	})
	t.Run("umoci", func(t *testing.T) {
		umoci := layertest.RequireTool(t, "umoci")
		bundle := filepath.Join(t.TempDir(), "bundle")
		args := []string{"unpack", "--image", dir + ":" + layoutName, bundle}
		if os.Geteuid() != 0 {
			args = []string{"unpack", "--rootless", "--image", dir + ":" + layoutName, bundle}
		}
		if out, err := exec.Command(umoci, args...).CombinedOutput(); err != nil {
			t.Fatalf("umoci unpack: %v\n%s", err, out)
		}
		checkTree(t, filepath.Join(bundle, "rootfs"), wantRootFS)
	})
}

func TestWriteOCIArchive(t *testing.T) {
	ctx := context.Background()
	amd := testImage(t, "amd64", baseFiles, topFiles)
	arm := testImage(t, "arm64", baseFiles)
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, img := range []v1.Image{amd, arm} {
		cf, _ := img.ConfigFile()
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: cf.Platform()}})
	}
	tests := []struct {
		name string
		img  v1.Image
		idx  v1.ImageIndex
	}{
		{"image", amd, nil},
		{"index", nil, idx},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var a, b bytes.Buffer
			if err := registry.WriteOCIArchive(ctx, &a, tc.img, tc.idx, "demo:1"); err != nil {
				t.Fatal(err)
			}
			if err := registry.WriteOCIArchive(ctx, &b, tc.img, tc.idx, "demo:1"); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(a.Bytes(), b.Bytes()) {
				t.Error("two archives of the same input differ")
			}
			dir := t.TempDir()
			names := untar(t, a.Bytes(), dir)
			if names[0] != "oci-layout" || names[len(names)-1] != "index.json" {
				t.Errorf("archive entries %q", names)
			}
			top, err := layout.ImageIndexFromPath(dir)
			if err != nil {
				t.Fatal(err)
			}
			if tc.img != nil {
				got := imageByName(t, top, "demo:1")
				sameDigest(t, got, amd)
				if err := validate.Image(got); err != nil {
					t.Errorf("validate.Image: %v", err)
				}
				return
			}
			im, _ := top.IndexManifest()
			if len(im.Manifests) != 1 || im.Manifests[0].Annotations[layers.RefNameAnnotation] != "demo:1" {
				t.Fatalf("index.json = %+v", im)
			}
			got, err := top.ImageIndex(im.Manifests[0].Digest)
			if err != nil {
				t.Fatal(err)
			}
			sameDigest(t, got, idx)
			if err := validate.Index(got); err != nil {
				t.Errorf("validate.Index: %v", err)
			}
		})
	}
	if err := registry.WriteOCIArchive(ctx, io.Discard, nil, nil, ""); err == nil {
		t.Error("no image and no index accepted")
	}
}

// untar extracts a flat archive of regular files and directories (an OCI
// layout) and returns its entry names in order.
func untar(t testing.TB, b []byte, dir string) []string {
	t.Helper()
	var names []string
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		p := filepath.Join(dir, filepath.FromSlash(hdr.Name))
		if hdr.Typeflag == tar.TypeDir {
			os.MkdirAll(p, 0o755)
			continue
		}
		os.MkdirAll(filepath.Dir(p), 0o755)
		body, _ := io.ReadAll(tr)
		if err := os.WriteFile(p, body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestWriteDockerArchive(t *testing.T) {
	ctx := context.Background()
	img := testImage(t, "amd64", baseFiles, topFiles)
	tests := []struct {
		name     string
		tags     []string
		wantTags []string
		wantErr  bool
	}{
		{name: "tagged", tags: []string{"demo", "reg.io/x/y:2"}, wantTags: []string{"localhost/demo:latest", "reg.io/x/y:2"}},
		{name: "untagged"},
		{name: "bad tag", tags: []string{"Bad"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "docker.tar")
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			err = registry.WriteDockerArchive(ctx, f, img, tc.tags)
			f.Close()
			if (err != nil) != tc.wantErr {
				t.Fatalf("WriteDockerArchive: %v", err)
			}
			if tc.wantErr {
				return
			}
			m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(p) })
			if err != nil {
				t.Fatal(err)
			}
			got := slices.Sorted(slices.Values(m[0].RepoTags))
			if len(m) != 1 || !slices.Equal(got, tc.wantTags) {
				t.Errorf("manifest.json = %+v, want tags %q", m, tc.wantTags)
			}
			var tag *name.Tag
			if len(tc.wantTags) > 0 {
				tg, _ := name.NewTag(tc.wantTags[0])
				tag = &tg
			}
			loaded, err := tarball.ImageFromPath(p, tag)
			if err != nil {
				t.Fatal(err)
			}
			wantCfg, _ := img.ConfigName()
			if gotCfg, _ := loaded.ConfigName(); gotCfg != wantCfg {
				t.Errorf("config %s, want %s", gotCfg, wantCfg)
			}
			ls, _ := loaded.Layers()
			want, _ := img.Layers()
			for i := range want {
				g, _ := ls[i].DiffID()
				w, _ := want[i].DiffID()
				if g != w {
					t.Errorf("layer %d diffID %s, want %s", i, g, w)
				}
			}
		})
	}
}

// checkTree compares the files under root with want (see wantRootFS).
func checkTree(t testing.TB, root string, want map[string]string) {
	t.Helper()
	got := map[string]string{}
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case fi.IsDir():
			got[rel+"/"] = ""
		case fi.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			got[rel] = "->" + l
		default:
			b, _ := os.ReadFile(p)
			got[rel] = string(b)
		}
		return nil
	})
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %q (present %v), want %q", k, g, ok, v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected %s", k)
		}
	}
}

func TestWriteRootFS(t *testing.T) {
	ctx := context.Background()
	img := testImage(t, "amd64", baseFiles, topFiles)
	dir := filepath.Join(t.TempDir(), "rootfs")
	var warnings []string
	if err := registry.WriteRootFS(ctx, dir, img, func(s string) { warnings = append(warnings, s) }); err != nil {
		t.Fatal(err)
	}
	checkTree(t, dir, wantRootFS)
	if len(warnings) > 0 && os.Geteuid() == 0 {
		t.Errorf("warnings as root: %q", warnings)
	}
}

func TestWriteRootFSTar(t *testing.T) {
	ctx := context.Background()
	img := testImage(t, "amd64", baseFiles, topFiles)
	var buf bytes.Buffer
	if err := registry.WriteRootFSTar(ctx, &buf, img); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	tr := tar.NewReader(&buf)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := got[hdr.Name]; dup {
			t.Errorf("duplicate entry %s", hdr.Name)
		}
		if strings.HasPrefix(hdr.Name, "/") || strings.Contains(hdr.Name, "..") {
			t.Errorf("unsafe name %q", hdr.Name)
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			got[hdr.Name] = ""
		case tar.TypeSymlink:
			got[hdr.Name] = "->" + hdr.Linkname
		case tar.TypeReg:
			b, _ := io.ReadAll(tr)
			got[hdr.Name] = string(b)
		default:
			t.Errorf("%s: unexpected type %c", hdr.Name, hdr.Typeflag)
		}
	}
	if len(got) != len(wantRootFS) {
		t.Errorf("got %d entries, want %d: %q", len(got), len(wantRootFS), got)
	}
	for k, v := range wantRootFS {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %q (present %v), want %q", k, g, ok, v)
		}
	}
}

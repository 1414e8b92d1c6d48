package imagecmp

import (
	"archive/tar"
	"bytes"
	"io"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// ent is one tar entry of a test layer: "d path mode", "f path mode content",
// "l path target" (symlink), "h path target" (hard link), "c path major minor",
// "p path" (fifo); uid:gid after a "@" suffix ("f a 0644 x@1:2").
type ent string

func layerTar(t *testing.T, ents ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		s, owner, _ := strings.Cut(string(e), "@")
		f := strings.Fields(s)
		h := &tar.Header{Name: f[1], Mode: 0o644, Format: tar.FormatPAX}
		if owner != "" {
			u, g, _ := strings.Cut(owner, ":")
			h.Uid, h.Gid = atoi(t, u), atoi(t, g)
		}
		var body string
		switch f[0] {
		case "d":
			h.Typeflag, h.Mode = tar.TypeDir, octal(t, f[2])
		case "f":
			h.Typeflag, h.Mode = tar.TypeReg, octal(t, f[2])
			if len(f) > 3 {
				body = f[3]
			}
			h.Size = int64(len(body))
		case "l":
			h.Typeflag, h.Linkname = tar.TypeSymlink, f[2]
		case "h":
			h.Typeflag, h.Linkname = tar.TypeLink, f[2]
		case "c":
			h.Typeflag, h.Devmajor, h.Devminor = tar.TypeChar, int64(atoi(t, f[2])), int64(atoi(t, f[3]))
		case "p":
			h.Typeflag = tar.TypeFifo
		default:
			t.Fatalf("bad entry %q", e)
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, body)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func atoi(t *testing.T, s string) int {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			t.Fatalf("bad number %q", s)
		}
		n = n*10 + int(c-'0')
	}
	return n
}

func octal(t *testing.T, s string) int64 {
	var n int64
	for _, c := range s {
		if c < '0' || c > '7' {
			t.Fatalf("bad octal %q", s)
		}
		n = n*8 + int64(c-'0')
	}
	return n
}

func image(t *testing.T, cfg string, layers ...[]ent) v1.Image {
	t.Helper()
	img := empty.Image
	for _, l := range layers {
		data := layerTar(t, l...)
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			t.Fatal(err)
		}
	}
	if cfg == "" {
		cfg = `{"os":"linux","architecture":"amd64","rootfs":{"type":"layers"}}`
	}
	cf, err := v1.ParseConfigFile(strings.NewReader(cfg))
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return rawConfig{Image: img, raw: []byte(cfg)}
}

// rawConfig serves a config file as written, so fields v1.ConfigFile
// lacks (Healthcheck.StartInterval) reach CompareConfigs.
type rawConfig struct {
	v1.Image
	raw []byte
}

func (r rawConfig) RawConfigFile() ([]byte, error) { return r.raw, nil }

func dump(tr *Tree) string {
	var b strings.Builder
	for _, p := range tr.Paths() {
		n := tr.Get(p)
		b.WriteString(p + " " + describe(n))
		if n.Kind == Regular {
			b.WriteString(" " + n.Digest[len(n.Digest)-4:])
		}
		if l := tr.Links(p); l != nil {
			b.WriteString(" links=" + strings.Join(l, ","))
		}
		if n.Kind == CharDevice {
			b.WriteString(" " + string(rune('0'+n.Major)) + ":" + string(rune('0'+n.Minor)))
		}
		b.WriteString("\n")
	}
	return b.String()
}

func TestFlatten(t *testing.T) {
	for _, tc := range []struct {
		name   string
		layers [][]ent
		want   string
	}{{
		name:   "whiteout removes a file and a whole directory",
		layers: [][]ent{{"d a 0755", "f a/x 0644 x", "d a/sub 0700", "f a/sub/y 0600 y", "f keep 0644 k"}, {"f a/.wh.sub 0000", "f .wh.keep 0000"}},
		want:   "a dir 0755 0:0\na/x file 0644 0:0 1 bytes 4881\n",
	}, {
		name:   "opaque directory hides lower children only",
		layers: [][]ent{{"d a 0755", "f a/old 0644 o"}, {"d a 0750", "f a/new 0644 n", "f a/.wh..wh..opq 0000"}},
		want:   "a dir 0750 0:0\na/new file 0644 0:0 1 bytes 3db9\n",
	}, {
		name:   "hard links form groups; replacing one path breaks it out",
		layers: [][]ent{{"f a 4755 same@1:2", "h b a", "h c a"}, {"f c 0644 other"}},
		want:   "a file 4755 1:2 4 bytes b5d5 links=b\nb file 4755 1:2 4 bytes b5d5 links=a\nc file 0644 0:0 5 bytes cffa\n",
	}, {
		name:   "file replaces directory, missing parents made, devices and fifos",
		layers: [][]ent{{"d d 0755", "f d/in 0644 i"}, {"f d 0644 f", "l deep/er/link ../x", "c dev/null 1 3", "p run/fifo"}},
		want:   "d file 0644 0:0 1 bytes f111\ndeep dir 0755 0:0\ndeep/er dir 0755 0:0\ndeep/er/link symlink -> ../x\ndev dir 0755 0:0\ndev/null char-device 0644 0:0 1:3\nrun dir 0755 0:0\nrun/fifo fifo 0644 0:0\n",
	}, {
		name:   "directory over directory keeps children; ./ and / prefixes",
		layers: [][]ent{{"d ./a 0755", "f ./a/x 0644 x"}, {"d /a/ 0700@5:5"}},
		want:   "a dir 0700 5:5\na/x file 0644 0:0 1 bytes 4881\n",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := Flatten(image(t, "", tc.layers...))
			if err != nil {
				t.Fatal(err)
			}
			if got := dump(tr); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestFlattenBadHardLink(t *testing.T) {
	_, err := Flatten(image(t, "", []ent{"h b missing"}))
	if err == nil || !strings.Contains(err.Error(), "hard link to missing") {
		t.Fatalf("err = %v, want a hard link error", err)
	}
}

func TestCompareTrees(t *testing.T) {
	base := []ent{"d etc 0755", "f etc/passwd 0644 root", "l bin/sh busybox", "f bin/busybox 0755 bb", "h bin/ls bin/busybox", "c dev/null 1 3"}
	for _, tc := range []struct {
		name  string
		other []ent
		want  []string
	}{
		{"same", base, nil},
		{"mode", []ent{"d etc 0755", "f etc/passwd 0600 root", "l bin/sh busybox", "f bin/busybox 0755 bb", "h bin/ls bin/busybox", "c dev/null 1 3"},
			[]string{"/etc/passwd: mode: 0644 != 0600"}},
		{"setuid bit", []ent{"d etc 0755", "f etc/passwd 0644 root", "l bin/sh busybox", "f bin/busybox 4755 bb", "h bin/ls bin/busybox", "c dev/null 1 3"},
			[]string{"/bin/busybox: mode: 0755 != 4755", "/bin/ls: mode: 0755 != 4755"}},
		{"owner and content", []ent{"d etc 0755", "f etc/passwd 0644 rooT@1:0", "l bin/sh busybox", "f bin/busybox 0755 bb", "h bin/ls bin/busybox", "c dev/null 1 3"},
			[]string{"/etc/passwd: uid: 0 != 1", "/etc/passwd: digest: sha256:4813494d137e1631bba301d5acab6e7bb7aa74ce1185d456565ef51d737677b2 != sha256:f700a00e40077b00e299ceddfe44803c7b2d32af02598024cf4fc9018d705529"}},
		{"hard link lost, symlink target, device, missing path", []ent{"d etc 0755", "l bin/sh ./busybox", "f bin/busybox 0755 bb", "f bin/ls 0755 bb", "c dev/null 1 5"},
			[]string{"/bin/busybox: hard links: bin/ls != ", "/bin/ls: hard links: bin/busybox != ", "/bin/sh: target: busybox != ./busybox", "/dev/null: device: 1:3 != 1:5", "/etc/passwd: exists: file 0644 0:0 4 bytes != (absent)"}},
		{"type", []ent{"f etc 0755", "l bin/sh busybox", "f bin/busybox 0755 bb", "h bin/ls bin/busybox", "c dev/null 1 3"},
			[]string{"/etc: type: dir != file", "/etc/passwd: exists: file 0644 0:0 4 bytes != (absent)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := Flatten(image(t, "", base))
			if err != nil {
				t.Fatal(err)
			}
			b, err := Flatten(image(t, "", tc.other))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range CompareTrees(a, b) {
				got = append(got, d.String())
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestCompareConfigs(t *testing.T) {
	const a = `{"os":"linux","architecture":"arm64","variant":"v8","config":{"Env":["B=2","A=1"],"Cmd":["sh"],"WorkingDir":"/",
		"ExposedPorts":{"80/tcp":{}},"Labels":{"x":"1"},"Healthcheck":{"Test":["CMD","true"],"Interval":1000000000,"StartInterval":2000000000}}}`
	for _, tc := range []struct {
		name, b string
		want    []string
	}{
		{"equal modulo env order, duplicate env, root workdir, empty lists", `{"os":"linux","architecture":"arm64","variant":"v8","config":{"Env":["A=1","B=2","A=1"],"Cmd":["sh"],"Entrypoint":[],"Volumes":{},"OnBuild":null,
			"ExposedPorts":{"80/tcp":{}},"Labels":{"x":"1"},"Healthcheck":{"Test":["CMD","true"],"Interval":1000000000,"StartInterval":2000000000}}}`, nil},
		{"every field", `{"os":"linux","architecture":"amd64","config":{"Env":["A=1"],"Cmd":["sh","-c"],"Entrypoint":["e"],"WorkingDir":"/w","User":"u",
			"ExposedPorts":{"81/tcp":{}},"Volumes":{"/v":{}},"Labels":{"x":"2"},"StopSignal":"SIGKILL","OnBuild":["RUN x"],"Shell":["/bin/bash","-c"],
			"Healthcheck":{"Test":["CMD","true"],"Interval":1000000000}}}`, []string{
			"platform: linux/arm64/v8 != linux/amd64",
			`config.Env: ["A=1","B=2"] != ["A=1"]`,
			`config.Cmd: ["sh"] != ["sh","-c"]`,
			`config.Entrypoint: [] != ["e"]`,
			`config.WorkingDir: "" != "/w"`,
			`config.User: "" != "u"`,
			`config.ExposedPorts: ["80/tcp"] != ["81/tcp"]`,
			`config.Volumes: [] != ["/v"]`,
			`config.Labels: {"x":"1"} != {"x":"2"}`,
			`config.StopSignal: "" != "SIGKILL"`,
			`config.Healthcheck: test=["CMD","true"] interval=1s timeout=0s start-period=0s start-interval=2s retries=0 != test=["CMD","true"] interval=1s timeout=0s start-period=0s start-interval=0s retries=0`,
			`config.OnBuild: [] != ["RUN x"]`,
			`config.Shell: [] != ["/bin/bash","-c"]`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			diffs, err := CompareConfigs([]byte(a), []byte(tc.b))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range diffs {
				got = append(got, d.String())
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestCompareImages(t *testing.T) {
	cfg := `{"os":"linux","architecture":"amd64","rootfs":{"type":"layers"},"config":{"Env":["PATH=/bin"]}}`
	a := image(t, cfg, []ent{"d a 0755", "f a/x 0644 1"}, []ent{"f a/y 0644 2"})
	// The same tree in one layer, other config.
	b := image(t, `{"os":"linux","architecture":"amd64","rootfs":{"type":"layers"},"config":{"Env":["PATH=/usr/bin"]}}`, []ent{"d a 0755", "f a/x 0644 1", "f a/y 0644 2"})
	diffs, err := Compare(a, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(diffs) != 1 || diffs[0].Field != "config.Env" {
		t.Fatalf("diffs = %v, want only config.Env", diffs)
	}
	diffs, err = Compare(a, a)
	if err != nil || len(diffs) != 0 {
		t.Fatalf("an image differs from itself: %v %v", diffs, err)
	}
}

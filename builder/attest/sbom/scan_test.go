package sbom

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ibuild/ibuild/layers"
)

func purls(inv *Inventory) []string {
	var out []string
	for _, p := range inv.Packages {
		out = append(out, p.PURL)
	}
	return out
}

// TestScan catalogs the fixture root file systems in testdata/.
func TestScan(t *testing.T) {
	cases := []struct {
		name     string
		root     string
		want     []string // purls, in Scan's order
		warnings []string // substrings, one per warning
	}{
		{
			name: "debian status and status.d",
			root: "debian",
			want: []string{
				"pkg:deb/debian/held@1%3A2.0%2Bb1?arch=all&distro=debian-12&upstream=held-src",
				"pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12&upstream=glibc",
				"pkg:deb/debian/tzdata@2024a-0%2Bdeb12u1?arch=all&distro=debian-12",
			},
		},
		{
			name: "alpine installed db",
			root: "alpine",
			want: []string{
				"pkg:apk/alpine/libcrypto3@3.1.4-r5?arch=x86_64&distro=alpine-3.19.1&upstream=openssl",
				"pkg:apk/alpine/musl@1.2.4_git20230717-r4?arch=x86_64&distro=alpine-3.19.1",
			},
		},
		{
			name: "lockfiles and python",
			root: "lockfiles",
			want: []string{
				"pkg:cargo/serde@1.0.197",
				"pkg:cargo/srv@0.1.0",
				"pkg:npm/%40scope/thing@2.0.1",
				"pkg:npm/left-pad@1.1.0",
				"pkg:npm/left-pad@1.3.0",
				"pkg:pypi/requests-oauth@1.2",
			},
		},
		{
			name: "rpm sqlite database",
			root: "rpm",
			want: []string{ // the gpg-pubkey entry is left out
				"pkg:rpm/fedora/bigdesc@0.9.1-3.fc39?arch=noarch&distro=fedora-39&upstream=bigdesc-0.9.1-3.fc39.src.rpm",
				"pkg:rpm/fedora/epochal@3.4.5-7.fc39?arch=noarch&distro=fedora-39&epoch=2&upstream=epochal-3.4.5-7.fc39.src.rpm",
				"pkg:rpm/fedora/hello-tiny@1.0-1.fc39?arch=noarch&distro=fedora-39&upstream=hello-tiny-1.0-1.fc39.src.rpm",
			},
		},
		{
			name: "rpm sqlite database, 512-byte pages, reserved bytes",
			root: "rpm-small",
			want: []string{
				"pkg:rpm/amzn/bigdesc@0.9.1-3.fc39?arch=noarch&distro=amzn-2023&upstream=bigdesc-0.9.1-3.fc39.src.rpm",
				"pkg:rpm/amzn/epochal@3.4.5-7.fc39?arch=noarch&distro=amzn-2023&epoch=2&upstream=epochal-3.4.5-7.fc39.src.rpm",
				"pkg:rpm/amzn/hello-tiny@1.0-1.fc39?arch=noarch&distro=amzn-2023&upstream=hello-tiny-1.0-1.fc39.src.rpm",
			},
		},
		{
			name: "rpm berkeley db",
			root: "rpm-bdb",
			want: []string{
				"pkg:rpm/centos/bigdesc@0.9.1-3.fc39?arch=noarch&distro=centos-7&upstream=bigdesc-0.9.1-3.fc39.src.rpm",
				"pkg:rpm/centos/epochal@3.4.5-7.fc39?arch=noarch&distro=centos-7&epoch=2&upstream=epochal-3.4.5-7.fc39.src.rpm",
				"pkg:rpm/centos/hello-tiny@1.0-1.fc39?arch=noarch&distro=centos-7&upstream=hello-tiny-1.0-1.fc39.src.rpm",
			},
		},
		{
			name: "rpm berkeley db, big-endian, 16 KiB pages",
			root: "rpm-bdb-be",
			want: []string{
				"pkg:rpm/rhel/bigdesc@0.9.1-3.fc39?arch=noarch&distro=rhel-8.9&upstream=bigdesc-0.9.1-3.fc39.src.rpm",
				"pkg:rpm/rhel/epochal@3.4.5-7.fc39?arch=noarch&distro=rhel-8.9&epoch=2&upstream=epochal-3.4.5-7.fc39.src.rpm",
				"pkg:rpm/rhel/hello-tiny@1.0-1.fc39?arch=noarch&distro=rhel-8.9&upstream=hello-tiny-1.0-1.fc39.src.rpm",
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			inv, err := Scan(context.Background(), layers.NewRootFS([]string{filepath.Join("testdata", tc.root)}), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if got := purls(inv); !slices.Equal(got, tc.want) {
				t.Errorf("purls:\n got %q\nwant %q", got, tc.want)
			}
			if len(inv.Warnings) != len(tc.warnings) {
				t.Fatalf("warnings %q, want %d", inv.Warnings, len(tc.warnings))
			}
			for i, w := range tc.warnings {
				if !strings.Contains(inv.Warnings[i], w) {
					t.Errorf("warning %q, want it to contain %q", inv.Warnings[i], w)
				}
			}
		})
	}
}

// TestScanGoBinary finds the modules of a Go binary (this test's own) and
// the standard library.
func TestScanGoBinary(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "usr/local/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(root, "usr/local/bin/app"), os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	dst.Close()
	// A non-Go executable and a Go-looking name that is not executable
	// are skipped quietly.
	if err := os.WriteFile(filepath.Join(root, "usr/local/bin/script"), []byte("#!/bin/sh\n"+strings.Repeat("#", 2000)), 0o755); err != nil {
		t.Fatal(err)
	}
	inv, err := Scan(context.Background(), layers.NewRootFS([]string{root}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := purls(inv)
	for _, want := range []string{
		"pkg:golang/stdlib@" + strings.TrimPrefix(runtime.Version(), "go"),
		"pkg:golang/github.com/ibuild/ibuild@%28devel%29", // a test binary records its main module, not its dependencies
	} {
		if !slices.Contains(got, want) {
			t.Errorf("%s not found in %q", want, got)
		}
	}
	for _, p := range inv.Packages {
		if p.Location != "/usr/local/bin/app" || p.Type != Golang {
			t.Errorf("package %+v: want a golang package of /usr/local/bin/app", p)
		}
	}
}

// TestScanBound stops the file walk at Options.MaxEntries and says so;
// package databases are still read.
func TestScanBound(t *testing.T) {
	inv, err := Scan(context.Background(), layers.NewRootFS([]string{filepath.Join("testdata", "debian")}), Options{MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Packages) != 3 || len(inv.Warnings) != 1 || !strings.Contains(inv.Warnings[0], "more than 1 entries") {
		t.Errorf("packages %d, warnings %q", len(inv.Packages), inv.Warnings)
	}
}

// TestDocuments checks the SPDX and CycloneDX documents: valid JSON with
// one entry per package, deterministic bytes, no wall-clock time.
func TestDocuments(t *testing.T) {
	inv, err := Scan(context.Background(), layers.NewRootFS([]string{filepath.Join("testdata", "debian")}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	o := DocOptions{Subject: Subject{Name: "registry.example/app:1", Digest: "sha256:" + strings.Repeat("ab", 32)},
		Created: time.Unix(1700000000, 0), Tool: "ibuild-v1.2.3"}
	t.Run("spdx", func(t *testing.T) {
		a, err := inv.SPDX(o)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := inv.SPDX(o)
		if string(a) != string(b) {
			t.Error("two SPDX documents of the same inventory differ")
		}
		var doc struct {
			SPDXVersion, DocumentNamespace string
			CreationInfo                   struct{ Created string }
			Packages                       []struct{ SPDXID, Name, PrimaryPackagePurpose string }
			Relationships                  []struct{ RelationshipType string }
		}
		if err := json.Unmarshal(a, &doc); err != nil {
			t.Fatal(err)
		}
		if doc.SPDXVersion != "SPDX-2.3" || doc.CreationInfo.Created != "2023-11-14T22:13:20Z" || len(doc.Packages) != 4 ||
			doc.Packages[0].PrimaryPackagePurpose != "CONTAINER" || len(doc.Relationships) != 4 || !strings.HasPrefix(doc.DocumentNamespace, "https://") {
			t.Errorf("SPDX document:\n%s", a)
		}
		ids := map[string]bool{}
		for _, p := range doc.Packages {
			if ids[p.SPDXID] || strings.Trim(p.SPDXID, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") != "" {
				t.Errorf("SPDX id %q repeated or invalid", p.SPDXID)
			}
			ids[p.SPDXID] = true
		}
	})
	t.Run("cyclonedx", func(t *testing.T) {
		a, err := inv.CycloneDX(o)
		if err != nil {
			t.Fatal(err)
		}
		var bom struct {
			BOMFormat, SpecVersion, SerialNumber string
			Metadata                             struct {
				Timestamp string
				Component struct{ Type string }
			}
			Components []struct{ PURL string }
		}
		if err := json.Unmarshal(a, &bom); err != nil {
			t.Fatal(err)
		}
		if bom.BOMFormat != "CycloneDX" || bom.SpecVersion != "1.5" || len(bom.SerialNumber) != len("urn:uuid:")+36 ||
			bom.Metadata.Component.Type != "container" || len(bom.Components) != 3 || bom.Metadata.Timestamp != "2023-11-14T22:13:20Z" {
			t.Errorf("CycloneDX BOM:\n%s", a)
		}
	})
}

func TestPURLEscape(t *testing.T) {
	cases := []struct{ typ, ns, name, version, want string }{
		{"deb", "debian", "libc6", "2.36-9+deb12u4", "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4"},
		{"deb", "debian", "x", "1:2.0~rc1", "pkg:deb/debian/x@1%3A2.0~rc1"},
		{"golang", "", "github.com/a/b", "v1.0.0", "pkg:golang/github.com/a/b@v1.0.0"},
		{"npm", "@scope", "pkg", "1.0.0", "pkg:npm/%40scope/pkg@1.0.0"},
		{"pypi", "", "a b", "", "pkg:pypi/a%20b"},
	}
	for _, tc := range cases {
		if got := purl(tc.typ, tc.ns, tc.name, tc.version, nil); got != tc.want {
			t.Errorf("purl(%q, %q, %q, %q) = %q, want %q", tc.typ, tc.ns, tc.name, tc.version, got, tc.want)
		}
	}
}

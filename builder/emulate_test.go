package builder

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestReadEmulatorsArch(t *testing.T) {
	ems, err := readEmulators("testdata/binfmt/debian")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"qemu-aarch64": "arm64", "qemu-arm": "arm", "qemu-s390x": "s390x", "qemu-ppc64le": "ppc64le",
		"qemu-ppc64": "ppc64", "qemu-riscv64": "riscv64", "qemu-mips64el": "mips64le",
		"qemu-loongarch64": "loong64", "qemu-m68k": "", "qemu-mipsel": "",
	}
	if len(ems) != len(want) {
		t.Fatalf("%d handlers, want %d: %+v", len(ems), len(want), ems)
	}
	for _, e := range ems {
		if a, ok := want[e.Name]; !ok || e.Arch != a {
			t.Errorf("%s: arch %q, want %q", e.Name, e.Arch, a)
		}
		if !e.Enabled || !e.FixBinary || e.Flags != "PF" || !strings.HasPrefix(e.Interpreter, "/usr/libexec/qemu-binfmt/") {
			t.Errorf("%s: %+v", e.Name, e)
		}
	}
	if ems, err := readEmulators(filepath.Join(t.TempDir(), "absent")); err != nil || len(ems) != 0 {
		t.Fatalf("absent binfmt_misc: %v %v", ems, err)
	}
}

func TestCheckEmulator(t *testing.T) {
	arm64 := v1.Platform{OS: "linux", Architecture: "arm64"}
	tests := []struct {
		name, dir, host string
		p               v1.Platform
		want            []string // substrings of the error; nil for no error
	}{
		{name: "native", dir: "testdata/binfmt/none", host: "amd64", p: v1.Platform{OS: "linux", Architecture: "amd64"}},
		{name: "386 on amd64", dir: "testdata/binfmt/none", host: "amd64", p: v1.Platform{OS: "linux", Architecture: "386"}},
		{name: "arm on arm64", dir: "testdata/binfmt/none", host: "arm64", p: v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}},
		{name: "registered with F", dir: "testdata/binfmt/debian", host: "amd64", p: arm64},
		{name: "s390x registered", dir: "testdata/binfmt/debian", host: "amd64", p: v1.Platform{OS: "linux", Architecture: "s390x"}},
		{name: "amd64 on arm64 without handler", dir: "testdata/binfmt/debian", host: "arm64", p: v1.Platform{OS: "linux", Architecture: "amd64"},
			want: []string{"no binfmt_misc handler for amd64", "update-binfmts --enable qemu-x86_64"}},
		{name: "no handler", dir: "testdata/binfmt/none", host: "amd64", p: arm64,
			want: []string{"RUN for linux/arm64", "no binfmt_misc handler for arm64 is registered in testdata/binfmt/none",
				"apt-get install qemu-user-static binfmt-support", "update-binfmts --enable qemu-aarch64", "F (fix-binary) flag"}},
		{name: "no F flag", dir: "testdata/binfmt/nofix", host: "amd64", p: arm64,
			want: []string{"testdata/binfmt/nofix/qemu-aarch64", "lacks the F (fix-binary) flag", "/usr/bin/qemu-aarch64", "update-binfmts --disable qemu-aarch64"}},
		{name: "disabled", dir: "testdata/binfmt/disabled", host: "amd64", p: arm64,
			want: []string{"testdata/binfmt/disabled/qemu-aarch64", "is disabled", "update-binfmts --enable qemu-aarch64"}},
		{name: "not mounted", dir: t.TempDir(), host: "amd64", p: arm64,
			want: []string{"binfmt_misc is not mounted", "update-binfmts --enable qemu-aarch64"}},
		{name: "unknown arch", dir: "testdata/binfmt/debian", host: "amd64", p: v1.Platform{OS: "linux", Architecture: "sparc64"},
			want: []string{"cannot check for an emulator"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkEmulator(tc.dir, tc.host, tc.p)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestRunWithoutEmulator builds for a foreign platform with no handler
// registered (a fixture binfmt_misc): the RUN step fails with the clear
// error, at its Dockerfile line, before anything runs; a build without
// RUN needs no emulator.
func TestRunWithoutEmulator(t *testing.T) {
	st := newStore(t)
	foreign := v1.Platform{OS: "linux", Architecture: "arm64"}
	if HostPlatform().Architecture == "arm64" {
		foreign = v1.Platform{OS: "linux", Architecture: "amd64"}
	}
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM scratch\nCOPY f /f\nRUN [\"/f\"]\n",
		"f":          "not run\n",
	})
	_, err := Build(t.Context(), Options{Store: st, ContextDir: dir, Platforms: []v1.Platform{foreign}, binfmtDir: "testdata/binfmt/none"})
	if err == nil {
		t.Fatal("want an error")
	}
	t.Log(err)
	for _, w := range []string{"Dockerfile:3", "no binfmt_misc handler for " + foreign.Architecture, "update-binfmts --enable qemu-", "F (fix-binary)"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY f /f\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Build(t.Context(), Options{Store: st, ContextDir: dir, Platforms: []v1.Platform{foreign}, binfmtDir: "testdata/binfmt/none"}); err != nil {
		t.Fatalf("a build without RUN needs no emulator: %v", err)
	}
}

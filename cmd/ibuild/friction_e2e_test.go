package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// The tests in this file each try one thing a new user does first, as
// docker and buildah users write it, and check the answer explains
// itself.

// TestFlagsAfterArguments: docker build ./app -t x works, so does ibuild's;
// and after the context of a command without one (push, tag) too.
func TestFlagsAfterArguments(t *testing.T) {
	root := t.TempDir()
	ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY a /a\n", "a": "a\n"})
	out, errOut, code := ibuild(t, root, "", "build", ctxDir, "-t", "late:1", "--label", "k=v", "--progress", "plain")
	if code != 0 {
		t.Fatalf("build CONTEXT -t NAME: exit %d\n%s", code, errOut)
	}
	id := strings.TrimSpace(out)
	if !strings.HasPrefix(id, "sha256:") {
		t.Fatalf("stdout %q", out)
	}
	insp := mustIbuild(t, root, "inspect", "late:1", "--type", "image")
	if !strings.Contains(insp, `"k": "v"`) {
		t.Fatalf("label given after the context is missing:\n%s", insp)
	}
	mustIbuild(t, root, "tag", "late:1", "late:2")
	if out := mustIbuild(t, root, "images", "-q"); !strings.Contains(out, strings.TrimPrefix(id, "sha256:")[:12]) {
		t.Fatalf("images -q: %q", out)
	}
	// -- still ends the flags: what follows is an argument.
	_, errOut, code = ibuild(t, root, "", "build", ctxDir, "--", "-t")
	if code != 2 || !strings.Contains(errOut, "exactly one CONTEXT") {
		t.Fatalf("build CONTEXT -- -t: exit %d\n%s", code, errOut)
	}
}

// TestUsageErrorIsShort: an unknown flag or command prints the problem,
// the closest flag, one usage line and where help is, not the whole help.
func TestUsageErrorIsShort(t *testing.T) {
	root := t.TempDir()
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"build", "--bogus", "."}, []string{"ibuild: unknown flag --bogus\n", "Usage: ibuild build [options] CONTEXT\n", "Run 'ibuild build --help'"}},
		{[]string{"build", ".", "--tagg", "x"}, []string{"unknown flag --tagg (did you mean --tag?)"}},
		{[]string{"build", "--jobs", "many", "."}, []string{`invalid value "many" for flag --jobs`, "Usage: ibuild build"}},
		{[]string{"--rot", "/x", "images"}, []string{"unknown flag --rot (did you mean --root?)", "Run 'ibuild --help'"}},
		{[]string{"biuld", "."}, []string{`unknown command "biuld" (did you mean build?)`}},
		{[]string{"push", "-x"}, []string{"unknown flag -x", "Usage: ibuild push [options] IMAGE [DEST]"}},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, errOut, code := ibuild(t, root, "", tc.args...)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if n := strings.Count(strings.TrimSpace(errOut), "\n") + 1; n > 3 {
				t.Errorf("%d lines on stderr, want at most 3:\n%s", n, errOut)
			}
			if out != "" {
				t.Errorf("stdout: %q", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
		})
	}
}

// TestImagesQuietAndFilter: images -q prints each image ID once, and
// --filter reference=, label= and dangling= select as docker's do.
func TestImagesQuietAndFilter(t *testing.T) {
	root := t.TempDir()
	a := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nLABEL team=web tier=front\nCOPY a /a\n", "a": "a\n"})
	b := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nLABEL team=db\nCOPY b /b\n", "b": "b\n"})
	idA := strings.TrimPrefix(strings.TrimSpace(mustIbuild(t, root, "build", "-q", "-t", "web:1", "-t", "web:2", a)), "sha256:")
	idB := strings.TrimPrefix(strings.TrimSpace(mustIbuild(t, root, "build", "-q", "-t", "db:1", b)), "sha256:")
	var old struct {
		Digest    v1.Hash         `json:"digest"`
		MediaType types.MediaType `json:"mediaType"`
	}
	if err := json.Unmarshal([]byte(mustIbuild(t, root, "inspect", "db:1")), &old); err != nil {
		t.Fatal(err)
	}
	// A rebuild of db:1 with other content takes the name from the old
	// image, which stays in the store until a prune. ibuild lists no
	// entry for it; another tool writing into the layout (skopeo copy to
	// oci:ROOT without a tag) makes an entry without a name: dangling.
	if err := os.WriteFile(filepath.Join(b, "b"), []byte("b2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	idB2 := strings.TrimPrefix(strings.TrimSpace(mustIbuild(t, root, "build", "-q", "-t", "db:1", b)), "sha256:")
	addUnnamedEntry(t, root, old.Digest, old.MediaType)

	lines := func(args ...string) []string {
		t.Helper()
		return strings.Fields(mustIbuild(t, root, append([]string{"images"}, args...)...))
	}
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"-q"}, []string{idB2[:12], idA[:12]}},
		{[]string{"-q", "--no-trunc", "--filter", "reference=web"}, []string{"sha256:" + idA}},
		{[]string{"-q", "--filter", "reference=web:2"}, []string{idA[:12]}},
		{[]string{"-q", "--filter", "reference=localhost/d*"}, []string{idB2[:12]}},
		{[]string{"-q", "--filter", "reference=nothing*"}, nil},
		{[]string{"-q", "--filter", "label=team=db"}, []string{idB2[:12]}},
		{[]string{"-q", "--filter", "label=tier"}, []string{idA[:12]}},
		{[]string{"-q", "--filter", "label=team", "--filter", "label=tier=back"}, nil},
		{[]string{"-q", "--filter", "dangling=true"}, []string{idB[:12]}},
		{[]string{"-q", "-a"}, []string{idB2[:12], idB[:12], idA[:12]}},
	}
	for _, tc := range tests {
		got := lines(tc.args...)
		slices.Sort(got)
		want := slices.Clone(tc.want)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("images %s: got %q, want %q", strings.Join(tc.args, " "), got, want)
		}
	}
	_, errOut, code := ibuild(t, root, "", "images", "--filter", "since=web:1")
	if code == 0 || !strings.Contains(errOut, `unknown filter "since"`) {
		t.Errorf("unknown filter: exit %d\n%s", code, errOut)
	}
}

// addUnnamedEntry adds desc to the store's index.json without a name, as
// skopeo copy to oci:ROOT without a tag does.
func addUnnamedEntry(t *testing.T, root string, digest v1.Hash, mt types.MediaType) {
	t.Helper()
	fi, err := os.Stat(filepath.Join(root, "blobs", digest.Algorithm, digest.Hex))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, "index.json")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var im v1.IndexManifest
	if err := json.Unmarshal(data, &im); err != nil {
		t.Fatal(err)
	}
	im.Manifests = append(im.Manifests, v1.Descriptor{MediaType: mt, Size: fi.Size(), Digest: digest})
	if data, err = json.Marshal(im); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestDockerfileTyposSuggest: a misspelt instruction gets BuildKit's
// "did you mean", and --from naming no stage but close to one says so
// (after trying it as an image: a real image of that name still works).
func TestDockerfileTyposSuggest(t *testing.T) {
	root := t.TempDir()
	ctxDir := writeContext(t, map[string]string{"a": "a\n", "Dockerfile": "FROM scratch\nCOPPY a /a\n"})
	_, errOut, code := ibuild(t, root, "", "build", ctxDir)
	if code == 0 || !strings.Contains(errOut, "Dockerfile:2: COPPY a /a: unknown instruction: COPPY (did you mean COPY?)") {
		t.Fatalf("COPPY: exit %d\n%s", code, errOut)
	}

	stages := "FROM scratch AS build\nCOPY a /a\nFROM scratch\n"
	for _, tc := range []struct{ name, step, want string }{
		{"copy", "COPY --from=biuld /a /b\n", `Dockerfile:4: COPY --from=biuld /a /b: --from=biuld: no stage named "biuld" (did you mean "build"?), and no image by that name: pull docker.io/library/biuld:latest: `},
		{"mount", "RUN --mount=from=buidl,target=/x true\n", `no stage named "buidl" (did you mean "build"?)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(stages+tc.step), 0o644); err != nil {
				t.Fatal(err)
			}
			// --pull never: the test does not wait on Docker Hub; the
			// default policy tries it first and then says the same.
			_, errOut, code := ibuild(t, root, "", "build", "--pull", "never", ctxDir)
			if code == 0 || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, want %q in\n%s", code, tc.want, errOut)
			}
		})
	}

	// An image whose name is one letter from a stage's is still used.
	img := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY f /f\n", "f": "from the image\n"})
	mustIbuild(t, root, "build", "-q", "-t", "bulid", img)
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(stages+"COPY --from=bulid /f /f\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	mustIbuild(t, root, "build", "-q", "--output", "type=local,dest="+out, ctxDir)
	if data, err := os.ReadFile(filepath.Join(out, "f")); err != nil || string(data) != "from the image\n" {
		t.Fatalf("COPY --from=bulid (an image): %q %v", data, err)
	}
}

// TestRegistryErrorsExplain: a registry's refusals and a missing tag are
// said in words, with the repository and what fixes them, not as HTTP
// internals and Go maps.
func TestRegistryErrorsExplain(t *testing.T) {
	const user, pass = "carol", "friction-Pa55"
	reg := registrytest.StartWith(t, registrytest.Config{Users: map[string]string{user: pass}})
	root := t.TempDir()
	af := filepath.Join(t.TempDir(), "auth.json")
	ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY a /a\n", "a": "a\n"})
	mustIbuild(t, root, "build", "-q", "-t", "local:1", ctxDir)
	repo := reg.Host + "/friction/app"

	noInternals := func(t *testing.T, errOut string) {
		t.Helper()
		for _, bad := range []string{"map[", "HEAD responses have no body", pass} {
			if strings.Contains(errOut, bad) {
				t.Errorf("stderr shows %q:\n%s", bad, errOut)
			}
		}
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"push", []string{"push", "--authfile", af, "local:1", repo + ":1"}, []string{
			"registry " + reg.Host + " refused to push friction/app: 401 Unauthorized (no credentials for " + reg.Host + " were found)",
			"hint: log in with 'ibuild login " + reg.Host + "', or name an auth file holding credentials for it with --authfile"}},
		{"pull", []string{"pull", "--authfile", af, repo + ":1"}, []string{
			"registry " + reg.Host + " refused to pull friction/app: 401 Unauthorized: UNAUTHORIZED: authentication required",
			"ibuild login " + reg.Host}},
		{"inspect", []string{"inspect", "--authfile", af, "docker://" + repo + ":1"}, []string{"refused to pull friction/app", "ibuild login"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, code := ibuild(t, root, "", tc.args...)
			if code == 0 {
				t.Fatalf("succeeded without credentials")
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
			noInternals(t, errOut)
		})
	}

	// Wrong credentials are told apart from none.
	if err := os.WriteFile(af, []byte(`{"auths":{"`+reg.Host+`":{"username":"`+user+`","password":"`+pass+`-bad"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := ibuild(t, root, "", "push", "--authfile", af, "local:1", repo+":1")
	if code == 0 || !strings.Contains(errOut, "refused to push friction/app with the credentials found for it: 401 Unauthorized") ||
		!strings.Contains(errOut, "'ibuild login "+reg.Host+"' replaces them") {
		t.Errorf("push with a bad password: exit %d\n%s", code, errOut)
	}
	noInternals(t, errOut)

	// A missing tag names the tags the repository has.
	_, errOut, code = ibuild(t, root, pass+"\n", "login", "--authfile", af, "-u", user, "--password-stdin", reg.Host)
	if code != 0 {
		t.Fatalf("login: %s", errOut)
	}
	mustIbuild(t, root, "push", "-q", "--authfile", af, "local:1", repo+":1")
	mustIbuild(t, root, "push", "-q", "--authfile", af, "local:1", repo+":2")
	_, errOut, code = ibuild(t, t.TempDir(), "", "pull", "--authfile", af, repo+":3")
	if want := "repository " + repo + ` has no tag "3"; its tags: 1, 2`; code == 0 || !strings.Contains(errOut, want) {
		t.Errorf("pull of a missing tag: exit %d, want %q in\n%s", code, want, errOut)
	}
	noInternals(t, errOut)
	_, errOut, code = ibuild(t, t.TempDir(), "", "pull", "--authfile", af, reg.Host+"/friction/none:1")
	if want := "repository " + reg.Host + "/friction/none does not exist"; code == 0 || !strings.Contains(errOut, want) {
		t.Errorf("pull from a missing repository: exit %d, want %q in\n%s", code, want, errOut)
	}

	// Many tags: the list is bounded.
	desc, err := remote.Get(mustRef(t, repo+":1"), remote.WithAuth(&authn.Basic{Username: user, Password: pass}))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		if err := remote.Tag(mustRef(t, fmt.Sprintf("%s:t%02d", repo, i)).(name.Tag), desc, remote.WithAuth(&authn.Basic{Username: user, Password: pass})); err != nil {
			t.Fatal(err)
		}
	}
	_, errOut, code = ibuild(t, t.TempDir(), "", "pull", "--authfile", af, repo+":nope")
	if code == 0 || !strings.Contains(errOut, "its tags include ") || !strings.HasSuffix(strings.TrimSpace(errOut), ", ...") || strings.Count(errOut, ", ") > 20 {
		t.Errorf("pull of a missing tag among 32: exit %d\n%s", code, errOut)
	}
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestDockerFormatWithZstdRefused: --format docker --compression zstd would
// write a Docker manifest with zstd OCI layers, which skopeo refuses:
// build and commit refuse the pair, and push --format docker of a zstd
// image says to push it as OCI.
func TestDockerFormatWithZstdRefused(t *testing.T) {
	root := t.TempDir()
	ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY a /a\n", "a": "a\n"})
	const want = "--format docker and --compression zstd cannot be combined"
	_, errOut, code := ibuild(t, root, "", "build", "--format", "docker", "--compression", "zstd", "-t", "fz:1", ctxDir)
	if code != 2 || !strings.Contains(errOut, want) {
		t.Fatalf("build: exit %d\n%s", code, errOut)
	}
	if _, _, code := ibuild(t, root, "", "inspect", "fz:1"); code == 0 {
		t.Fatal("the refused build tagged fz:1")
	}
	name := strings.TrimSpace(mustIbuild(t, root, "from", "scratch"))
	_, errOut, code = ibuild(t, root, "", "commit", "--format", "docker", "--compression", "zstd", "--squash", name, "fz:2")
	if code != 2 || !strings.Contains(errOut, want) {
		t.Fatalf("commit: exit %d\n%s", code, errOut)
	}
	reg := registrytest.Start(t)
	mustIbuild(t, root, "build", "-q", "--compression", "zstd", "-t", "fz:3", ctxDir)
	_, errOut, code = ibuild(t, root, "", "push", "--format", "docker", "fz:3", reg.Host+"/fz:3")
	if code == 0 || !strings.Contains(errOut, "a zstd layer has no docker media type; push it in oci format") {
		t.Fatalf("push --format docker of a zstd image: exit %d\n%s", code, errOut)
	}
}

// TestProgressLabels: the build's last progress line labels the image ID
// (what stdout prints) and the manifest digest; pulls and pushes show a
// line per layer named by its short digest (plain) or its bytes and rate
// (tty), never an empty [] prefix.
func TestProgressLabels(t *testing.T) {
	reg := registrytest.Start(t)
	root := t.TempDir()
	ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY a /a\nCOPY b /b\n", "a": "a\n", "b": "b\n"})
	out, errOut, code := ibuild(t, root, "", "build", "--progress", "plain", "-t", "prog:1", ctxDir)
	if code != 0 {
		t.Fatalf("build: %s", errOut)
	}
	var insp struct {
		Digest   string `json:"digest"`
		ID       string `json:"id"`
		Manifest struct {
			Layers []struct {
				Digest string `json:"digest"`
			} `json:"layers"`
		} `json:"manifest"`
	}
	if err := json.Unmarshal([]byte(mustIbuild(t, root, "inspect", "prog:1")), &insp); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != insp.ID {
		t.Fatalf("stdout %q, image ID %s", out, insp.ID)
	}
	if want := "built image " + insp.ID + " (manifest " + insp.Digest + ") in "; !strings.Contains(errOut, want) {
		t.Fatalf("stderr lacks %q:\n%s", want, errOut)
	}

	ref := reg.Host + "/prog/app:1"
	_, errOut, code = ibuild(t, root, "", "push", "--progress", "plain", "prog:1", ref)
	if code != 0 {
		t.Fatalf("push: %s", errOut)
	}
	for _, l := range insp.Manifest.Layers {
		if want := "[push " + ref + "] layer " + strings.TrimPrefix(l.Digest, "sha256:")[:12] + ": "; !strings.Contains(errOut, want) {
			t.Errorf("push progress lacks %q:\n%s", want, errOut)
		}
	}
	fresh := t.TempDir()
	_, errOut, code = ibuild(t, fresh, "", "pull", "--progress", "plain", ref)
	if code != 0 {
		t.Fatalf("pull: %s", errOut)
	}
	for _, l := range insp.Manifest.Layers {
		if want := "[pull " + ref + "] layer " + strings.TrimPrefix(l.Digest, "sha256:")[:12] + ": "; !strings.Contains(errOut, want) {
			t.Errorf("pull progress lacks %q:\n%s", want, errOut)
		}
	}
	// A build pulling its base, plain and tty.
	base := writeContext(t, map[string]string{"Dockerfile": "FROM " + ref + "\nCOPY c /c\n", "c": "c\n"})
	for _, mode := range []string{"plain", "tty"} {
		_, errOut, code = ibuild(t, t.TempDir(), "", "build", "--progress", mode, base)
		if code != 0 {
			t.Fatalf("build on a pulled base (%s): %s", mode, errOut)
		}
		if strings.Contains(errOut, "[]") {
			t.Errorf("%s progress shows an empty [] prefix:\n%s", mode, errOut)
		}
		want := "[pull " + ref + "] layer " + strings.TrimPrefix(insp.Manifest.Layers[0].Digest, "sha256:")[:12] + ": "
		if mode == "tty" {
			want = "[pull " + ref + "] OK     layer " + strings.TrimPrefix(insp.Manifest.Layers[0].Digest, "sha256:")[:12] + ": "
		}
		if !strings.Contains(errOut, want) || !strings.Contains(errOut, "B/s") {
			t.Errorf("%s progress lacks %q and a rate:\n%s", mode, want, errOut)
		}
	}
}

// TestRootlessSetupMessagesAreIbuilds: what containers/storage logs while
// entering the user namespace (here: nobody has no /etc/subuid range)
// reads as ibuild's own warnings, once, not as logrus's time=...
// level=... lines.
func TestRootlessSetupMessagesAreIbuilds(t *testing.T) {
	requireRoot(t)
	for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
		if data, _ := os.ReadFile(f); strings.Contains("\n"+string(data), "\nnobody:") || strings.Contains("\n"+string(data), "\n65534:") {
			layertest.SkipOrFail(t, "%s gives nobody a range: this test needs a user without one", f)
		}
	}
	ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY a /a\n", "a": "a\n"})
	_, out, err := buildAsUser(t, 65534, 65534, ctxDir, "--isolation", "userns")
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	if strings.Contains(out, "level=") || strings.Contains(out, "time=") {
		t.Errorf("logrus lines in the output:\n%s", out)
	}
	// ibuild says it once; storage's own three lines saying the same
	// are left out.
	if n := strings.Count(out, "no range"); n != 1 || !strings.Contains(out, "ibuild: warning: /etc/subuid and /etc/subgid give this user no range") || strings.Contains(out, "Found no UID ranges") {
		t.Errorf("the missing range should be said once, as ibuild's warning (%d times):\n%s", n, out)
	}
}

// TestVersion: ibuild version and --version name the Go, containers/storage
// and buildkit parser versions the binary was built with.
func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out := mustIbuild(t, t.TempDir(), args...)
		for _, re := range []string{`(?m)^ibuild version \S+$`, `(?m)^  Go: +go1\.\d+`, `(?m)^  containers/storage: +v1\.\d+\.\d+$`, `(?m)^  buildkit \(Dockerfile parser\): +v0\.\d+\.\d+$`} {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Errorf("ibuild %s: output does not match %s:\n%s", args[0], re, out)
			}
		}
	}
}

package compat

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/parser"

	"github.com/ibuild/ibuild/builder/internal/oracle"
)

// compatCase is one Dockerfile build both builders run.
type compatCase struct {
	// Name is "<corpus>/<where>": buildah/<folder>/<file>,
	// buildkit/<test function>[#n], own/<fixture>.
	Name string
	// Origin says where the case came from (module file and test).
	Origin string
	// ContextDir and Dockerfile are the build's inputs.
	ContextDir string
	Dockerfile string
	BuildArgs  map[string]string
	Target     string
	// Platforms, when set, are passed to both builders.
	Platforms []string
	// Secrets maps secret ids to files.
	Secrets map[string]string
	// Skip, when set, says why the case cannot run here.
	Skip string
	// prepare, when set, makes the case's inputs (in a temporary
	// directory) before it runs; it may set Skip.
	prepare func(t *testing.T, c *compatCase)
	// hubImages are the Docker Hub images (docker.io/library/NAME:TAG) the
	// case's FROM and --from lines need, served from test bases.
	hubImages []string
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// testBases maps the Docker Hub repositories the suite serves to what
// serves them: busybox is a Docker Hub-like busybox image made from
// Debian's busybox-static; alpine is served by the same image (cases
// that install packages with apk are skipped as needing the internet).
var testBases = map[string]string{
	"library/busybox": "busybox",
	"library/alpine":  "busybox",
}

// localBases are the localhost/ (or short-name) images the suite builds
// from fixtures before the cases run: name → fixture Dockerfile relative
// to the repository root.
var localBases = map[string]string{
	"testbase:1":     "testdata/base/Dockerfile",
	"onbuild-base:1": "testdata/dockerfiles/onbuild/base.Dockerfile",
}

// randomRE finds RUN commands whose output is random by design (the
// BuildKit cache tests write /dev/urandom or the date into a file), so
// two builds never agree.
var randomRE = regexp.MustCompile(`/dev/urandom|\bdate\b|\$RANDOM`)

// envDumpRE finds RUN commands that write the whole environment, which
// under BuildKit holds its tracing variables (a random TRACEPARENT).
var envDumpRE = regexp.MustCompile(`(?:^|[\s;&|(])(?:env|printenv|export -p)\s*(?:>|\||$)`)

// networkRE finds RUN commands that need the internet.
var networkRE = regexp.MustCompile(`(?:^|[\s;&|(])(apk|apt-get|apt|dnf|microdnf|yum|zypper|pip3?|npm|curl|wget|go get|git clone|gem|cargo)\s`)

// buildahMountOption finds buildah's RUN --mount options (z, Z, U,
// relabel=), which docker refuses.
var buildahMountOption = regexp.MustCompile(`--mount=\S*,(z|Z|U|relabel=[a-z]+)(,|\s|$)`)

// buildahOnly says why c exercises a feature only buildah has, for which
// buildah's documented behaviour, not docker's, is ibuild's reference (a
// .containerignore, an ignore file chosen with --ignorefile, buildah's
// RUN --mount options), or returns "". Such cases are not compared with
// docker build: the fixtures testdata/dockerfiles/containerignore*,
// dockerfile-containerignore, ignorefile and run-mount-buildah-options
// check buildah's behaviour instead.
func buildahOnly(c *compatCase) string {
	for _, name := range []string{".containerignore", filepath.Base(c.Dockerfile) + ".containerignore"} {
		if _, err := os.Lstat(filepath.Join(filepath.Dir(c.Dockerfile), name)); err == nil {
			return "buildah-only feature (" + name + "): buildah's behaviour is the reference, checked by the containerignore fixtures"
		}
		if _, err := os.Lstat(filepath.Join(c.ContextDir, name)); err == nil {
			return "buildah-only feature (" + name + "): buildah's behaviour is the reference, checked by the containerignore fixtures"
		}
	}
	if b, err := os.ReadFile(filepath.Join(filepath.Dir(c.Dockerfile), "options.json")); err == nil && bytes.Contains(b, []byte(`"ignoreFile"`)) {
		return "buildah-only feature (--ignorefile): buildah's behaviour is the reference, checked by the ignorefile fixture"
	}
	if data, err := os.ReadFile(c.Dockerfile); err == nil {
		if m := buildahMountOption.FindStringSubmatch(string(data)); m != nil {
			return "buildah-only RUN --mount option " + m[1] + " (docker refuses it): buildah's behaviour is the reference, checked by the run-mount-buildah-options fixture"
		}
	}
	return ""
}

// analyse reads c's Dockerfile and sets Skip when it needs what the suite
// cannot offer (the internet, an image no test base serves), and
// hubImages otherwise.
func analyse(c *compatCase) {
	if c.Skip != "" {
		return
	}
	data, err := os.ReadFile(c.Dockerfile)
	if err != nil {
		c.Skip = "cannot read the Dockerfile: " + err.Error()
		return
	}
	if why := buildahOnly(c); why != "" {
		c.Skip = why
		return
	}
	res, err := parser.Parse(bytes.NewReader(data))
	if err != nil {
		return // both builders must refuse it: run it
	}
	args := map[string]string{}
	for k, v := range c.BuildArgs {
		args[k] = v
	}
	stages := map[string]bool{}
	expand := func(s string) string {
		return os.Expand(s, func(k string) string {
			if v, ok := args[k]; ok {
				return v
			}
			return "${" + k + "}"
		})
	}
	seenFrom := false
	need := map[string]bool{}
	checkImage := func(ref, where string) bool {
		ref = expand(ref)
		if strings.Contains(ref, "$") {
			return true // unknown: let both builders decide
		}
		if stages[strings.ToLower(ref)] || ref == "scratch" {
			return true
		}
		if _, err := fmt.Sscanf(ref, "%d", new(int)); err == nil && !strings.ContainsAny(ref, ":/") {
			return true // a stage index
		}
		hub, why := classify(ref)
		if why != "" {
			c.Skip = fmt.Sprintf("%s %s: %s", where, ref, why)
			return false
		}
		if hub != "" {
			need[hub] = true
		}
		return true
	}
	for _, n := range res.AST.Children {
		if strings.EqualFold(n.Value, "from") {
			var words []string
			for a := n.Next; a != nil; a = a.Next {
				words = append(words, a.Value)
			}
			if len(words) == 3 && strings.EqualFold(words[1], "as") {
				stages[strings.ToLower(words[2])] = true
			}
		}
	}
	for _, n := range res.AST.Children {
		cmd := strings.ToLower(n.Value)
		switch cmd {
		case "arg":
			for a := n.Next; a != nil; a = a.Next {
				k, v, ok := strings.Cut(a.Value, "=")
				if _, given := c.BuildArgs[k]; ok && !given && !seenFrom {
					args[k] = strings.Trim(v, `"'`)
				}
			}
		case "from":
			seenFrom = true
			var words []string
			for a := n.Next; a != nil; a = a.Next {
				words = append(words, a.Value)
			}
			if len(words) == 0 {
				continue
			}
			if !checkImage(words[0], "FROM") {
				return
			}
		case "copy", "add", "run":
			for _, f := range n.Flags {
				v, ok := strings.CutPrefix(f, "--from=")
				if !ok && cmd == "run" && strings.HasPrefix(f, "--mount=") {
					for _, opt := range strings.Split(strings.TrimPrefix(f, "--mount="), ",") {
						if fv, ok2 := strings.CutPrefix(opt, "from="); ok2 {
							v, ok = fv, true
						}
					}
				}
				if ok && !checkImage(v, strings.ToUpper(cmd)+" --from") {
					return
				}
			}
			text := nodeText(n)
			if cmd == "run" {
				if m := networkRE.FindStringSubmatch(text); m != nil {
					c.Skip = fmt.Sprintf("needs the internet (RUN %s ...)", m[1])
					return
				}
				if envDumpRE.MatchString(text) {
					c.Skip = "it writes the whole environment, which BuildKit fills with its tracing variables (a random TRACEPARENT)"
					return
				}
				if m := randomRE.FindString(text); m != "" {
					c.Skip = fmt.Sprintf("its output is random (RUN uses %s): no two builds agree", m)
					return
				}
			}
			if cmd == "add" && (strings.Contains(text, "://") || strings.Contains(text, "git@")) &&
				!strings.Contains(expand(text), "127.0.0.1") {
				c.Skip = "needs the internet (ADD of a URL or git repository)"
				return
			}
		}
	}
	c.hubImages = sortedKeys(need)
}

// nodeText is an instruction's words, heredocs included.
func nodeText(n *parser.Node) string {
	var b strings.Builder
	for a := n.Next; a != nil; a = a.Next {
		b.WriteString(a.Value + " ")
	}
	for _, h := range n.Heredocs {
		b.WriteString(h.Content)
	}
	return b.String()
}

// classify maps an image reference to the Docker Hub name the suite
// serves ("docker.io/library/busybox:latest"), "" for a local base, or
// says why it cannot be served.
func classify(ref string) (hub string, why string) {
	if strings.Contains(ref, "@") {
		return "", "pinned by digest to an image on the internet"
	}
	name, tag := ref, "latest"
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		name, tag = ref[:i], ref[i+1:]
	}
	domain, path := "docker.io", name
	if first, rest, ok := strings.Cut(name, "/"); ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		domain, path = first, rest
	}
	switch domain {
	case "docker.io", "index.docker.io", "registry-1.docker.io":
		if !strings.Contains(path, "/") {
			path = "library/" + path
		}
		if _, ok := testBases[path]; ok {
			return "docker.io/" + path + ":" + tag, ""
		}
		if _, ok := localBases[strings.TrimPrefix(path, "library/")+":"+tag]; ok {
			return "", ""
		}
		return "", "needs an image from the internet (no test image stands in for it)"
	case "localhost":
		if _, ok := localBases[path+":"+tag]; ok {
			return "", ""
		}
		return "", "needs a local image the suite does not make"
	}
	return "", "needs an image from the internet (registry " + domain + ")"
}

// dockerfileName reports whether a corpus file name is a Dockerfile.
func dockerfileName(name string) bool {
	l := strings.ToLower(name)
	if strings.HasSuffix(l, ".dockerignore") || strings.HasSuffix(l, ".containerignore") {
		return false
	}
	return strings.Contains(l, "dockerfile") || strings.Contains(l, "containerfile")
}

// buildahCases lists every Dockerfile of buildah's tests/bud folders as a
// case, with the options and skip reasons of testdata/buildah-cases.txt.
func buildahCases(t *testing.T) []*compatCase {
	t.Helper()
	dir := filepath.Join(oracle.ModuleDir(t, buildahModule, buildahVersion), "tests", "bud")
	opts := readCaseTable(t, filepath.Join("testdata", "buildah-cases.txt"))
	var out []*compatCase
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !dockerfileName(d.Name()) {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		c := &compatCase{
			Name:       "buildah/" + filepath.ToSlash(rel),
			Origin:     buildahModule + "@" + buildahVersion + " tests/bud/" + filepath.ToSlash(rel),
			ContextDir: filepath.Dir(p),
			Dockerfile: p,
		}
		if o, ok := opts[c.Name]; ok {
			o.apply(t, c)
			delete(opts, c.Name)
		}
		analyse(c)
		out = append(out, c)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for name := range opts {
		t.Errorf("testdata/buildah-cases.txt names %s, which buildah %s does not have", name, buildahVersion)
	}
	return out
}

const (
	buildahModule  = "github.com/containers/buildah"
	buildahVersion = "v1.42.0"
)

// caseOptions are one line of a case table:
// NAME [--build-arg K=V]... [--target T] [--platform P] [--context SUBDIR]
// [--secret ID=FILE] [skip: REASON].
type caseOptions struct {
	args      map[string]string
	target    string
	platforms []string
	context   string
	secrets   map[string]string
	skip      string
}

func (o caseOptions) apply(t *testing.T, c *compatCase) {
	if len(o.args) > 0 {
		c.BuildArgs = o.args
	}
	if o.target != "" {
		c.Target = o.target
	}
	if o.platforms != nil {
		c.Platforms = o.platforms
	}
	if o.context != "" {
		c.ContextDir = filepath.Join(c.ContextDir, o.context)
	}
	if len(o.secrets) > 0 {
		c.Secrets = map[string]string{}
		for id, f := range o.secrets {
			c.Secrets[id] = filepath.Join(filepath.Dir(c.Dockerfile), f)
		}
	}
	c.Skip = o.skip
}

func readCaseTable(t *testing.T, path string) map[string]caseOptions {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]caseOptions{}
	sc := bufio.NewScanner(f)
	for ln := 1; sc.Scan(); ln++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var o caseOptions
		line, o.skip, _ = strings.Cut(line, "skip:")
		o.skip = strings.TrimSpace(o.skip)
		f := strings.Fields(line)
		bad := func() { t.Fatalf("%s:%d: bad line %q", path, ln, sc.Text()) }
		if len(f) == 0 {
			bad()
		}
		for i := 1; i < len(f); i += 2 {
			if i+1 >= len(f) {
				bad()
			}
			v := f[i+1]
			switch f[i] {
			case "--build-arg":
				if o.args == nil {
					o.args = map[string]string{}
				}
				k, val, _ := strings.Cut(v, "=")
				o.args[k] = val
			case "--target":
				o.target = v
			case "--platform":
				o.platforms = strings.Split(v, ",")
			case "--context":
				o.context = v
			case "--secret":
				if o.secrets == nil {
					o.secrets = map[string]string{}
				}
				id, file, _ := strings.Cut(v, "=")
				o.secrets[id] = file
			default:
				bad()
			}
		}
		if _, dup := out[f[0]]; dup {
			t.Fatalf("%s:%d: %s listed twice", path, ln, f[0])
		}
		out[f[0]] = o
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// ownCases are the project's fixtures: testdata/dockerfiles/* (the
// builder's golden fixtures) and testdata/compat/* (written for this
// suite), each a context directory with a Dockerfile and optionally an
// options.json ({"buildArgs":{}, "target":"", "platform":""}).
func ownCases(t *testing.T, urlBase string) []*compatCase {
	t.Helper()
	var out []*compatCase
	for _, root := range []string{"../../testdata/dockerfiles", "../../testdata/compat"} {
		dirs, err := filepath.Glob(filepath.Join(root, "*", "Dockerfile"))
		if err != nil {
			t.Fatal(err)
		}
		for _, df := range dirs {
			dir, err := filepath.Abs(filepath.Dir(df))
			if err != nil {
				t.Fatal(err)
			}
			name := filepath.Base(dir)
			c := &compatCase{
				Name:       "own/" + name,
				Origin:     strings.TrimPrefix(filepath.ToSlash(filepath.Dir(df)), "../../"),
				ContextDir: dir,
				Dockerfile: filepath.Join(dir, "Dockerfile"),
				BuildArgs:  map[string]string{"URL": urlBase},
			}
			var o struct {
				BuildArgs map[string]string `json:"buildArgs"`
				Target    string            `json:"target"`
				Platform  string            `json:"platform"`
			}
			if data, err := os.ReadFile(filepath.Join(dir, "options.json")); err == nil {
				if err := json.Unmarshal(data, &o); err != nil {
					t.Fatalf("%s: %v", filepath.Join(dir, "options.json"), err)
				}
			}
			for k, v := range o.BuildArgs {
				c.BuildArgs[k] = v
			}
			c.Target = o.Target
			if o.Platform != "" {
				c.Platforms = strings.Split(o.Platform, ",")
			}
			if setup := ownSetups[name]; setup != nil {
				c.prepare = setup
			}
			analyse(c)
			out = append(out, c)
		}
	}
	return out
}

package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// scriptRunner runs shell scripts whose `ibuild` is the test's binary with
// a store root of the runner's, as root or (uid > 0) as an unprivileged
// user through setpriv.
type scriptRunner struct {
	work     string // owned by the user; holds bin/ibuild (the wrapper)
	root     string
	uid, gid int
}

// newScriptRunner makes a work directory (owned by uid:gid when uid > 0)
// with a wrapper bin/ibuild that runs the test's binary with --root.
func newScriptRunner(t *testing.T, uid, gid int) *scriptRunner {
	t.Helper()
	work, err := os.MkdirTemp("", "ibuild-wc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	if err := os.Chmod(work, 0o755); err != nil {
		t.Fatal(err)
	}
	r := &scriptRunner{work: work, root: filepath.Join(work, "root"), uid: uid, gid: gid}
	bin := ibuildBin
	if uid > 0 {
		layertest.RequireTool(t, "setpriv")
		layertest.RequireTool(t, "newuidmap")
		// The user must be able to run the binary: a copy of its own.
		bin = filepath.Join(work, "ibuild-bin")
		if out, err := exec.Command("cp", ibuildBin, bin).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
	}
	for _, d := range []string{"bin", "home", "job"} {
		if err := os.Mkdir(filepath.Join(work, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	wrapper := fmt.Sprintf("#!/bin/sh\nexec %s --root %s \"$@\"\n", bin, r.root)
	if err := os.WriteFile(filepath.Join(work, "bin", "ibuild"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	if uid > 0 {
		if out, err := exec.Command("chown", "-R", fmt.Sprintf("%d:%d", uid, gid), work).CombinedOutput(); err != nil {
			t.Fatalf("chown: %v %s", err, out)
		}
	}
	return r
}

// command is `/bin/sh -c script` in dir (relative to work), as the
// runner's user, with the wrapper first on PATH and env added.
func (r *scriptRunner) command(dir, script string, env ...string) *exec.Cmd {
	argv := []string{"/bin/sh", "-c", script}
	if r.uid > 0 {
		argv = append([]string{"setpriv", "--reuid=" + strconv.Itoa(r.uid), "--regid=" + strconv.Itoa(r.gid), "--clear-groups"}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = filepath.Join(r.work, dir)
	cmd.Env = append([]string{"PATH=" + filepath.Join(r.work, "bin") + ":/usr/bin:/bin:/usr/sbin:/sbin",
		"HOME=" + filepath.Join(r.work, "home")}, env...)
	return cmd
}

// sh runs script and returns its stdout; it fails the test when the
// script fails.
func (r *scriptRunner) sh(t *testing.T, dir, script string, env ...string) string {
	t.Helper()
	out, errOut, code := r.try(t, dir, script, env...)
	if code != 0 {
		t.Fatalf("script failed (exit %d):\n%s\nstdout:\n%s\nstderr:\n%s", code, script, out, errOut)
	}
	return out
}

// try runs script and returns its stdout, stderr and exit code.
func (r *scriptRunner) try(t *testing.T, dir, script string, env ...string) (string, string, int) {
	t.Helper()
	cmd := r.command(dir, script, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errb.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), 0
}

// buildBusybox stores busybox:1, a static busybox with its applets
// installed, in the runner's store.
func (r *scriptRunner) buildBusybox(t *testing.T) {
	t.Helper()
	ctxDir := filepath.Join(r.work, "busybox-ctx")
	if out, err := exec.Command("cp", "-a", busyboxContext(t, ""), ctxDir).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	if r.uid > 0 {
		if out, err := exec.Command("chown", "-R", fmt.Sprintf("%d:%d", r.uid, r.gid), ctxDir).CombinedOutput(); err != nil {
			t.Fatalf("chown: %v %s", err, out)
		}
	}
	r.sh(t, ".", "ibuild build -q -t busybox:1 busybox-ctx >/dev/null")
}

// docBlock returns the fenced code block of docs/containers.md between
// <!-- marker --> and <!-- /marker -->.
func docBlock(t *testing.T, marker string) string {
	t.Helper()
	data, err := os.ReadFile("../../docs/containers.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(data), "<!-- "+marker+" -->\n")
	if !ok {
		t.Fatalf("docs/containers.md has no <!-- %s --> marker", marker)
	}
	block, _, ok := strings.Cut(rest, "<!-- /"+marker+" -->")
	if !ok {
		t.Fatalf("docs/containers.md has no <!-- /%s --> marker", marker)
	}
	block = strings.TrimSpace(block)
	if i := strings.Index(block, "\n"); !strings.HasPrefix(block, "```") || i < 0 || !strings.HasSuffix(block, "```") {
		t.Fatalf("the %s block of docs/containers.md is not one fenced code block", marker)
	}
	block = block[strings.Index(block, "\n")+1 : len(block)-3]
	return block
}

// imageTree lists every path of the flattened image: type, mode, owner,
// link target and content digest, sorted.
func imageTree(t *testing.T, img v1.Image) []string {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	var out []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		line := fmt.Sprintf("%s %c %o %d:%d %s", strings.TrimSuffix(h.Name, "/"), h.Typeflag, h.Mode, h.Uid, h.Gid, h.Linkname)
		if h.Typeflag == tar.TypeReg {
			s := sha256.New()
			if _, err := io.Copy(s, tr); err != nil {
				t.Fatal(err)
			}
			line += fmt.Sprintf(" %x", s.Sum(nil))
		}
		out = append(out, line)
	}
	sort.Strings(out)
	return out
}

// sameImage compares two images' file trees, config sections, platforms
// and layer counts.
func sameImage(t *testing.T, what string, want, got v1.Image) {
	t.Helper()
	a, b := imageTree(t, want), imageTree(t, got)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("%s: file trees differ\nwant:\n%s\ngot:\n%s", what, strings.Join(a, "\n"), strings.Join(b, "\n"))
	}
	wc, err := want.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	gc, err := got.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(wc.Config, gc.Config) {
		wj, _ := json.MarshalIndent(wc.Config, "", "  ")
		gj, _ := json.MarshalIndent(gc.Config, "", "  ")
		t.Errorf("%s: configs differ\nwant:\n%s\ngot:\n%s", what, wj, gj)
	}
	if wc.OS != gc.OS || wc.Architecture != gc.Architecture || wc.Variant != gc.Variant {
		t.Errorf("%s: platform %s/%s/%s, want %s/%s/%s", what, gc.OS, gc.Architecture, gc.Variant, wc.OS, wc.Architecture, wc.Variant)
	}
	if len(wc.RootFS.DiffIDs) != len(gc.RootFS.DiffIDs) {
		t.Errorf("%s: %d layers, want %d", what, len(gc.RootFS.DiffIDs), len(wc.RootFS.DiffIDs))
	}
}

// TestContainerScriptMatchesDockerfile is issue 8's "done when": the
// script of docs/containers.md (from a busybox base; run; copy --chown;
// config; commit --push to a local registry) and the Dockerfile there
// give images with the same file tree and config, as root and as an
// unprivileged user with a subordinate id range. The unprivileged user
// also changes a container through `ibuild mount` inside `ibuild
// unshare`.
func TestContainerScriptMatchesDockerfile(t *testing.T) {
	requireRoot(t)
	reg := registrytest.Start(t)
	script, dockerfile := docBlock(t, "script"), docBlock(t, "dockerfile")
	for _, tc := range []struct {
		name     string
		rootless bool
	}{{"root", false}, {"unprivileged", true}} {
		t.Run(tc.name, func(t *testing.T) {
			uid, gid := 0, 0
			if tc.rootless {
				uid, gid = unprivilegedUser(t, usernsTestUser, true)
			}
			r := newScriptRunner(t, uid, gid)
			r.buildBusybox(t)
			ref := reg.Host + "/team/web-" + tc.name + ":1"
			if err := os.WriteFile(filepath.Join(r.work, "job", "script.sh"), []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			out := r.sh(t, "job", "/bin/sh ./script.sh", "BASE=busybox:1", "IMAGE="+ref)
			if !strings.Contains(out, "web-build") || !strings.Contains(out, "sha256:") {
				t.Errorf("the script's output lacks the container list or the image ID:\n%s", out)
			}
			if out := r.sh(t, ".", "ibuild containers --format json"); strings.TrimSpace(out) != "[]" {
				t.Errorf("commit --rm left containers: %s", out)
			}
			os.Remove(filepath.Join(r.work, "job", "script.sh"))
			if err := os.WriteFile(filepath.Join(r.work, "job", "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
				t.Fatal(err)
			}
			r.sh(t, ".", "ibuild build -q --build-arg BASE=busybox:1 -t df:1 --output type=oci,tar=false,dest=oci job >/dev/null")
			want := ociImage(t, filepath.Join(r.work, "oci"))
			pref, err := name.ParseReference(ref, name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			pushed, err := remote.Image(pref)
			if err != nil {
				t.Fatalf("pull %s: %v", ref, err)
			}
			sameImage(t, "pushed script image vs the Dockerfile's", want, pushed)
			for _, line := range imageTree(t, pushed) {
				if strings.HasPrefix(line, "srv/www/index.html ") && !strings.Contains(line, " 1000:1000 ") {
					t.Errorf("copy --chown web:web: %s", line)
				}
			}
			if !tc.rootless {
				return
			}
			// Rootless mount: inside ibuild unshare, through the
			// wrapper (IBUILD_ROOT is set there too).
			r.sh(t, ".", `set -e
c=$(ibuild from --name m df:1)
ibuild unshare sh -c 'p=$(ibuild mount m) && echo through-mount > "$p/srv/www/m.txt" && ibuild umount m'
ibuild commit -q m m:1 >/dev/null
ibuild rm m >/dev/null
c=$(ibuild from --name check m:1)
ibuild run "$c" -- cat /srv/www/m.txt > got.txt
test "$(cat got.txt)" = through-mount`)
			if _, errOut, code := r.try(t, ".", "ibuild mount check"); code == 0 || !strings.Contains(errOut, "ibuild unshare") {
				t.Errorf("mount outside ibuild unshare: exit %d, want a failure naming ibuild unshare: %s", code, errOut)
			}
			// Exit codes pass through the re-executed ibuild.
			if _, errOut, code := r.try(t, ".", "ibuild run check -- sh -c 'exit 7'"); code != 7 {
				t.Errorf("unprivileged run of exit 7: ibuild exited %d: %s", code, errOut)
			}
			if out, errOut, code := r.try(t, ".", "ibuild unshare sh -c 'id -u; exit 5'"); code != 5 || strings.TrimSpace(out) != "0" {
				t.Errorf("unprivileged unshare: exit %d, id -u %q, want 5 and 0: %s", code, out, errOut)
			}
		})
	}
}

// TestContainersConcurrent: two scripts change two containers of the same
// image at once and both succeed; two runs on one container at once: the
// second is refused saying the container is in use, the first completes,
// and the container commits whole afterwards.
func TestContainersConcurrent(t *testing.T) {
	requireRoot(t)
	r := newScriptRunner(t, 0, 0)
	r.buildBusybox(t)
	if err := os.WriteFile(filepath.Join(r.work, "job", "data.txt"), []byte("data\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `set -eu
c=$(ibuild from --name "$N" busybox:1)
ibuild run "$c" -- sh -c 'for i in 1 2 3 4 5; do echo "$i" >> /count; done'
ibuild copy "$c" data.txt /data/
ibuild config --env "N=$N" --label "n=$N" "$c"
ibuild run "$c" -- sh -c 'test "$N" = "$(cat /data/data.txt | sed s/data/$N/)"'
ibuild commit -q --rm "$c" "$N:1"
`
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for _, n := range []string{"one", "two"} {
		cmd := r.command("job", script, "N="+n)
		var b bytes.Buffer
		cmd.Stdout, cmd.Stderr = &b, &b
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, &b)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("script %d: %v\n%s", i, err, outs[i])
		}
	}
	for _, n := range []string{"one", "two"} {
		var insp struct {
			Config struct {
				Config struct {
					Env    []string
					Labels map[string]string
				} `json:"config"`
			} `json:"config"`
		}
		if err := json.Unmarshal([]byte(mustIbuild(t, r.root, "inspect", n+":1")), &insp); err != nil {
			t.Fatal(err)
		}
		if insp.Config.Config.Labels["n"] != n {
			t.Errorf("%s:1 labels %v", n, insp.Config.Config.Labels)
		}
	}

	// Two runs on one container.
	nap := strconv.Itoa(1250000000 + os.Getpid()%100000*10)
	r.sh(t, ".", "ibuild from --name shared busybox:1 >/dev/null")
	first := r.command(".", "ibuild run shared -- sh -c 'sleep "+nap+"; echo first > /first'")
	var firstOut bytes.Buffer
	first.Stdout, first.Stderr = &firstOut, &firstOut
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Process.Kill(); first.Wait() })
	sleepers := waitForProcs(t, "sleep\x00"+nap+"\x00")
	_, errOut, code := r.try(t, ".", "ibuild run shared -- sh -c 'echo second > /second'")
	if code == 0 || !strings.Contains(errOut, "container shared is in use by another ibuild process") {
		t.Errorf("a second run during the first: exit %d, want a refusal saying the container is in use:\n%s", code, errOut)
	}
	_, errOut, code = r.try(t, ".", "ibuild commit shared shared:1")
	if code == 0 || !strings.Contains(errOut, "in use") {
		t.Errorf("commit during a run: exit %d: %s", code, errOut)
	}
	// The first run's sleep ends; the run completes.
	for _, pid := range sleepers {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if err := first.Wait(); err != nil {
		t.Fatalf("the first run: %v\n%s", err, firstOut.String())
	}
	r.sh(t, ".", "ibuild commit -q shared shared:1 >/dev/null && c=$(ibuild from shared:1) && test \"$(ibuild run $c -- cat /first)\" = first && ! ibuild run $c -- test -e /second")
	layertest.CheckBlobs(t, r.root)
}

// waitForProcs waits (at most 30s) until processes whose command line
// holds s run, and returns their pids.
func waitForProcs(t *testing.T, s string) []int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if pids := procsWith(t, s); len(pids) > 0 {
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("no process with %q after 30s", s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestKilledContainerRun kills `ibuild run` with SIGKILL while its command
// sleeps: no process of it stays, nothing stays mounted under the store,
// and the container can be inspected, run in, committed and removed.
func TestKilledContainerRun(t *testing.T) {
	requireRoot(t)
	r := newScriptRunner(t, 0, 0)
	r.buildBusybox(t)
	r.sh(t, ".", "c=$(ibuild from --name k busybox:1) && ibuild run k -- sh -c 'echo before > /before' && ibuild commit -q k before:1 >/dev/null")
	nap := strconv.Itoa(1260000000 + os.Getpid()%100000*10)
	cmd := exec.Command(ibuildBin, "--root", r.root, "run", "k", "--", "sh", "-c", "echo half > /half; sleep "+nap)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitForProcs(t, "sleep\x00"+nap+"\x00")
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if ws := cmd.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() {
		t.Fatalf("ibuild run ended with %v, not by SIGKILL\n%s", cmd.ProcessState, out.String())
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := procsWith(t, nap)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			for _, pid := range pids {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			t.Fatalf("10s after SIGKILL, processes of the run still run: %v", pids)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mi), "\n") {
		if strings.Contains(line, r.root) {
			t.Errorf("mount left behind by the killed run: %s", line)
		}
	}
	if out := mustIbuild(t, r.root, "inspect", "k"); !strings.Contains(out, `"name": "k"`) {
		t.Errorf("inspect k after the kill:\n%s", out)
	}
	// The killed run changed nothing; the container works on.
	r.sh(t, ".", `set -e
! ibuild run k -- test -e /half
ibuild run k -- sh -c 'echo after > /after'
ibuild commit -q k after:1 >/dev/null
ibuild rm k
c=$(ibuild from after:1)
test "$(ibuild run $c -- cat /before /after)" = "before
after"`)
	layertest.CheckBlobs(t, r.root)
}

// TestContainerCommands covers the rest of the commands as root: exit
// code passthrough, containers --format json, inspect of a container,
// mount/umount, add of an archive, copy --chmod, config flags, rm --all and unshare.
func TestContainerCommands(t *testing.T) {
	requireRoot(t)
	r := newScriptRunner(t, 0, 0)
	r.buildBusybox(t)
	root := r.root
	name := strings.TrimSpace(mustIbuild(t, root, "from", "busybox:1"))
	if name != "busybox-working-container" {
		t.Errorf("default name %q", name)
	}

	out, errOut, code := ibuild(t, root, "", "run", name, "--", "sh", "-c", "echo out-line; echo err-line >&2; exit 7")
	if code != 7 {
		t.Errorf("run exit 7: ibuild exited %d\n%s", code, errOut)
	}
	if !strings.Contains(out, "out-line") || !strings.Contains(errOut, "exit code 7") || !strings.Contains(errOut, name) {
		t.Errorf("run exit 7: stdout %q, stderr %q", out, errOut)
	}
	if _, errOut, code := ibuild(t, root, "", "run", "nope", "--", "true"); code != 1 || !strings.Contains(errOut, "container nope: no such container (list them with ibuild containers)") {
		t.Errorf("run on a missing container: exit %d: %s", code, errOut)
	}
	if out := mustIbuild(t, root, "run", "--env", "X=1", "--user", "65534", "--workingdir", "/tmp", name, "--", "sh", "-c", "echo $X $(id -u) $(pwd)"); strings.TrimSpace(out) != "1 65534 /tmp" {
		t.Errorf("run --env --user --workingdir printed %q", out)
	}

	// Mount, write through the mount point, umount: the file is a layer.
	mp := strings.TrimSpace(mustIbuild(t, root, "mount", name))
	if err := os.WriteFile(filepath.Join(mp, "via-mount.txt"), []byte("mounted\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := ibuild(t, root, "", "run", name, "--", "true"); code == 0 || !strings.Contains(errOut, "umount") {
		t.Errorf("run while mounted: exit %d: %s", code, errOut)
	}
	mustIbuild(t, root, "umount", name)
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), mp) {
		t.Errorf("%s still mounted after umount", mp)
	}

	// add extracts an archive.
	arch := filepath.Join(r.work, "job", "a.tar")
	if err := os.WriteFile(filepath.Join(r.work, "job", "in-tar.txt"), []byte("from tar\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("tar", "-C", filepath.Join(r.work, "job"), "-cf", arch, "in-tar.txt").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	mustIbuild(t, root, "add", name, arch, "/x/")
	mustIbuild(t, root, "copy", "--chmod", "0600", name, filepath.Join(r.work, "job", "in-tar.txt"), "/y/")
	mustIbuild(t, root, "config", "--env", "A=1", "--entrypoint", `["/bin/sh", "-c"]`, "--cmd", "echo hi", "--label", "l=v",
		"--annotation", "org.example/a=b", "--volume", "/vol", "--stop-signal", "SIGINT", "--user", "0:0", "--author", "me",
		"--healthcheck", "NONE", "--onbuild", "RUN echo child", name)

	var list []struct {
		Name       string `json:"name"`
		ID         string `json:"id"`
		Image      string `json:"image"`
		BaseLayers int    `json:"base_layers"`
		Layers     []any  `json:"layers"`
	}
	if err := json.Unmarshal([]byte(mustIbuild(t, root, "containers", "--format", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != name || list[0].Image != "busybox:1" || len(list[0].ID) != 32 || len(list[0].Layers) != list[0].BaseLayers+4 {
		t.Errorf("containers --format json: %+v (want a layer each from the run in /tmp, the mount, add and copy)", list)
	}
	if table := mustIbuild(t, root, "containers"); !strings.Contains(table, "NAME") || !strings.Contains(table, list[0].ID[:12]+"  ") {
		t.Errorf("containers table:\n%s", table)
	}
	var st struct {
		Name   string `json:"name"`
		Config struct {
			Config struct {
				Env        []string
				Entrypoint []string
				Cmd        []string
				Labels     map[string]string
				StopSignal string
				OnBuild    []string
			} `json:"config"`
		} `json:"config"`
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal([]byte(mustIbuild(t, root, "inspect", name)), &st); err != nil {
		t.Fatal(err)
	}
	cfg := st.Config.Config
	if st.Name != name || cfg.Labels["l"] != "v" || cfg.StopSignal != "SIGINT" || len(cfg.OnBuild) != 1 || st.Annotations["org.example/a"] != "b" ||
		!reflect.DeepEqual(cfg.Entrypoint, []string{"/bin/sh", "-c"}) || !reflect.DeepEqual(cfg.Cmd, []string{"/bin/sh", "-c", "echo hi"}) {
		t.Errorf("inspect %s: %+v", name, st)
	}
	if _, errOut, code := ibuild(t, root, "", "inspect", "--type", "image", name); code == 0 || !strings.Contains(errOut, "not known") {
		t.Errorf("inspect --type image of a container: exit %d: %s", code, errOut)
	}

	mustIbuild(t, root, "commit", "-q", "--format", "docker", name, "wc:1")
	var img struct {
		Manifest struct {
			MediaType   string            `json:"mediaType"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifest"`
	}
	if err := json.Unmarshal([]byte(mustIbuild(t, root, "inspect", "wc:1")), &img); err != nil {
		t.Fatal(err)
	}
	if img.Manifest.MediaType != "application/vnd.docker.distribution.manifest.v2+json" {
		t.Errorf("commit --format docker: %s", img.Manifest.MediaType)
	}
	c2 := strings.TrimSpace(mustIbuild(t, root, "from", "--name", "check", "wc:1"))
	if out := mustIbuild(t, root, "run", "--user", "0", c2, "--", "/bin/cat", "/via-mount.txt", "/x/in-tar.txt"); out != "mounted\nfrom tar\n" {
		t.Errorf("committed image holds %q, want the file written through the mount and the extracted one", out)
	}
	if out := mustIbuild(t, root, "run", c2, "--", "/bin/stat", "-c", "%a", "/y/in-tar.txt"); strings.TrimSpace(out) != "600" {
		t.Errorf("copy --chmod 0600: mode %s", out)
	}
	if _, errOut, code := ibuild(t, root, "", "from", "--name", "check", "busybox:1"); code == 0 || !strings.Contains(errOut, "already exists") {
		t.Errorf("from with a taken --name: exit %d: %s", code, errOut)
	}

	// unshare as root runs the command with IBUILD_ROOT and passes its
	// exit code through.
	out, _, code = ibuild(t, root, "", "unshare", "sh", "-c", "echo $IBUILD_ROOT; exit 3")
	if code != 3 || strings.TrimSpace(out) != root {
		t.Errorf("unshare: exit %d, output %q; want 3 and %s", code, out, root)
	}

	mustIbuild(t, root, "rm", "--all")
	if out := mustIbuild(t, root, "containers", "--format", "json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("rm --all left %s", out)
	}
	if _, errOut, code := ibuild(t, root, "", "rm", name); code == 0 || !strings.Contains(errOut, "no such container") {
		t.Errorf("rm of a removed container: exit %d: %s", code, errOut)
	}
	layertest.CheckBlobs(t, root)
}

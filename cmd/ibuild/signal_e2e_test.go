package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"github.com/ibuild/ibuild/layers/layertest"
	"github.com/ibuild/ibuild/registry/registrytest"
)

// stopBound is how long ibuild may take to exit after SIGINT or SIGTERM.
// The requirement is about a second; the bound is generous so that a
// loaded 2-core machine does not make the test flaky, and still far below
// what each phase takes when it does not look at the signal (the inputs
// below are sized for that: 10 s or more of remaining work).
const stopBound = 5 * time.Second

// stopPhase is one phase of a command that a signal must stop.
type stopPhase struct {
	name string
	sig  syscall.Signal
	// root: the phase needs root (RUN, containers/storage).
	root bool
	// prepare makes the phase's inputs and returns how to run it.
	prepare func(t *testing.T, root string) phaseRun
}

// phaseRun is a command to stop and how to tell it reached its phase.
type phaseRun struct {
	args  []string
	stdin *os.File
	env   []string
	// reached reports what the command (process pid) is doing once it is
	// in the phase, or "".
	reached func(pid int) string
	// check runs after the command stopped, before the store checks.
	check func(t *testing.T)
}

// TestSignalStopsEveryPhase sends SIGTERM or SIGINT to ibuild once it is
// in the middle of each phase of a build, a pull and a push, made slow by
// a big but bounded input, and expects it to exit within stopBound with
// status 128+signal, to have tagged nothing, to have removed its
// temporary files, and to leave a store that the next build and prune
// use.
func TestSignalStopsEveryPhase(t *testing.T) {
	if testing.Short() {
		t.Skip("slow end-to-end test (big inputs, a registry)")
	}
	for _, tc := range stopPhases() {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				layertest.SkipOrFail(t, "this phase needs root")
			}
			root := filepath.Join(t.TempDir(), "root")
			mustIbuild(t, root, "images") // creates the store
			run := tc.prepare(t, root)
			before := sortedImageNames(t, root)
			b := startIbuild(t, root, run.stdin, run.env, run.args...)
			what := b.waitUntil(t, func() string { return run.reached(b.cmd.Process.Pid) })
			if what == "" {
				t.Fatalf("ibuild finished before reaching the phase: the test proves nothing\n%s", b.out.String())
			}
			if err := b.cmd.Process.Signal(tc.sig); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			select {
			case <-b.done:
			case <-time.After(stopBound):
				b.kill()
				t.Fatalf("ibuild still ran %v after %s, sent while %s\n%s", stopBound, unix.SignalName(tc.sig), what, b.out.String())
			}
			t.Logf("%s sent while %s; ibuild exited (%v) %v later", unix.SignalName(tc.sig), what, b.cmd.ProcessState, time.Since(start).Round(time.Millisecond))
			wantExit(t, b, tc.sig)
			if !strings.Contains(b.out.String(), "interrupted by "+unix.SignalName(tc.sig)) {
				t.Errorf("ibuild did not say it was interrupted by %s:\n%s", unix.SignalName(tc.sig), b.out.String())
			}
			if run.check != nil {
				run.check(t)
			}
			if left := tmpLeftovers(t, root, "*"); len(left) > 0 {
				t.Errorf("ibuild handled %s but left temporary files: %v", unix.SignalName(tc.sig), left)
			}
			checkStoreAfterStop(t, root, before)
		})
	}
}

// TestSecondSignalForcesExit stops a build that cannot stop by itself:
// its standard error is a pipe nobody reads (a pager that was paused), so
// every progress line, and the final error, blocks. The first SIGINT
// cannot end it; the second must, at once, as docker and buildah do. The
// store it leaves must work, with the temporary files it had no time to
// remove removed by prune once they are old.
func TestSecondSignalForcesExit(t *testing.T) {
	if testing.Short() {
		t.Skip("slow end-to-end test")
	}
	root := filepath.Join(t.TempDir(), "root")
	mustIbuild(t, root, "images")
	var df strings.Builder
	df.WriteString("FROM scratch\n")
	for i := range 20000 {
		fmt.Fprintf(&df, "LABEL l%d=v%d\n", i, i)
	}
	ctxDir := writeContext(t, map[string]string{"Dockerfile": df.String()})
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	cmd := exec.Command(ibuildBin, "--root", root, "build", "--progress", "plain", "--isolation", "chroot", "-t", "blocked:1", ctxDir)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=")
	cmd.Stdout, cmd.Stderr = io.Discard, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })

	// The pipe (64 KiB) is full once it holds nearly that and no more
	// comes for 200ms.
	deadline := time.Now().Add(time.Minute)
	for last := -1; ; {
		n, err := unix.IoctlGetInt(int(pr.Fd()), unix.TIOCINQ)
		if err != nil {
			t.Fatal(err)
		}
		if n >= 60<<10 && n == last {
			break
		}
		last = n
		select {
		case <-done:
			t.Fatalf("the build ended before filling its standard error (%d bytes): %v", n, cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the build's standard error held only %d bytes after a minute", n)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		t.Fatalf("the build stopped on the first SIGINT with its standard error blocked (%v): the test proves nothing", cmd.ProcessState)
	case <-time.After(time.Second):
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	select {
	case <-done:
	case <-time.After(stopBound):
		t.Fatalf("ibuild still ran %v after a second SIGINT", stopBound)
	}
	t.Logf("ibuild exited (%v) %v after the second SIGINT", cmd.ProcessState, time.Since(start).Round(time.Millisecond))
	ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() || ws.ExitStatus() != 128+int(syscall.SIGINT) {
		t.Errorf("ibuild ended with %v, want exit status %d", cmd.ProcessState, 128+int(syscall.SIGINT))
	}
	if _, _, code := ibuild(t, root, "", "inspect", "blocked:1"); code == 0 {
		t.Error("the stopped build tagged blocked:1")
	}
	leftovers := tmpLeftovers(t, root, "*")
	checkStoreAfterStop(t, root, nil)
	pruneKeepsFreshLeftovers(t, root, leftovers, "after-stop:1")
}

func stopPhases() []stopPhase {
	return []stopPhase{
		{name: "read Dockerfile from stdin", sig: syscall.SIGINT, prepare: func(t *testing.T, root string) phaseRun {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { r.Close() })
			fed := feedAndHold(t, func() (*os.File, error) { return w, nil })
			return phaseRun{
				args:    []string{"build", "--isolation", "chroot", "-t", "stopped:1", "-f", "-", t.TempDir()},
				stdin:   r,
				reached: chanReached(fed, "reading a Dockerfile from stdin that never ends"),
			}
		}},
		{name: "parse", sig: syscall.SIGTERM, prepare: func(t *testing.T, root string) phaseRun {
			// About 7 s of parsing (0.5 us a byte), within the 16 MiB limit.
			// (A FIFO given as the Dockerfile is refused without reading:
			// see TestBuildRefusesUnboundedInput.)
			df := writeLines(t, "FROM scratch\n", 700_000, func(w *bufio.Writer, i int) { fmt.Fprintf(w, "LABEL l%d=v%d\n", i, i) })
			return phaseRun{
				args:    []string{"build", "--isolation", "chroot", "-t", "stopped:1", "-f", df, t.TempDir()},
				reached: readAll(df, "parsing a 700,000-line Dockerfile"),
			}
		}},
		{name: "expand build args", sig: syscall.SIGINT, prepare: func(t *testing.T, root string) phaseRun {
			// 4,000 ARGs before FROM, each expanding to 512 KiB: about
			// 20 s of expansion (10 ns a byte).
			head := "ARG B=" + strings.Repeat("b", 16<<10) + "\n"
			refs := strings.Repeat("${B}", 32)
			df := writeLines(t, head, 4000, func(w *bufio.Writer, i int) { fmt.Fprintf(w, "ARG X%d=%s\n", i%2, refs) })
			f, err := os.OpenFile(df, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString("FROM scratch\nLABEL x=$X0\n")
			f.Close()
			read := readAll(df, "")
			return phaseRun{
				args: []string{"build", "--isolation", "chroot", "-t", "stopped:1", "-f", df, t.TempDir()},
				reached: func(pid int) string {
					// Parsing this file takes about 0.1 s; after a second
					// of CPU the build is expanding.
					if read(pid) == "" || cpuTime(pid) < time.Second {
						return ""
					}
					return "expanding 4,000 build args of 512 KiB each"
				},
			}
		}},
		{name: "hash context", sig: syscall.SIGTERM, prepare: func(t *testing.T, root string) phaseRun {
			// 12 GiB of holes: nothing on disk, and SHA-256 of it takes
			// 8 s at 1.6 GB/s.
			ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY big /big\n"})
			f, err := os.Create(filepath.Join(ctxDir, "big"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := f.Truncate(12 << 30); err != nil {
				t.Fatal(err)
			}
			return phaseRun{
				args: []string{"build", "--isolation", "chroot", "-t", "stopped:1", ctxDir},
				reached: func(pid int) string {
					if n := readBytes(pid); n >= 256<<20 {
						return fmt.Sprintf("hashing a 12 GiB context file (%d MiB read)", n>>20)
					}
					return ""
				},
			}
		}},
		{name: "extract layer native", sig: syscall.SIGINT, prepare: extractPhase("native")},
		{name: "extract layer overlay", sig: syscall.SIGTERM, root: true, prepare: extractPhase("overlay")},
		{name: "pull", sig: syscall.SIGTERM, prepare: func(t *testing.T, root string) phaseRun {
			px, ref := slowImage(t)
			return phaseRun{
				args:    []string{"pull", ref},
				reached: served(px, "pulling a layer at 256 KiB/s"),
			}
		}},
		{name: "pull base image in build", sig: syscall.SIGINT, prepare: func(t *testing.T, root string) phaseRun {
			px, ref := slowImage(t)
			ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM " + ref + "\nLABEL a=b\n"})
			return phaseRun{
				args:    []string{"build", "--isolation", "chroot", "-t", "stopped:1", ctxDir},
				reached: served(px, "pulling the base image's layer at 256 KiB/s"),
			}
		}},
		{name: "credential helper", sig: syscall.SIGTERM, prepare: func(t *testing.T, root string) phaseRun {
			px, ref := slowImage(t)
			px.Throttle(0)
			dir := t.TempDir()
			started := filepath.Join(dir, "helper-started")
			helper := "#!/bin/sh\ntouch " + started + "\nexec sleep 60\n"
			if err := os.WriteFile(filepath.Join(dir, "docker-credential-ibuildsigtest"), []byte(helper), 0o755); err != nil {
				t.Fatal(err)
			}
			cfg := `{"credHelpers": {"` + px.Host + `": "ibuildsigtest"}}`
			if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			return phaseRun{
				args: []string{"pull", ref},
				env: []string{"DOCKER_CONFIG=" + dir, "PATH=" + dir + ":" + os.Getenv("PATH"),
					"REGISTRY_AUTH_FILE=" + filepath.Join(dir, "none.json")},
				reached: func(int) string {
					if _, err := os.Stat(started); err == nil {
						return "waiting for a credential helper that hangs"
					}
					return ""
				},
			}
		}},
		{name: "push", sig: syscall.SIGINT, prepare: func(t *testing.T, root string) phaseRun {
			reg, px := slowRegistry(t)
			ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY big /big\n"})
			writeBigFile(t, filepath.Join(ctxDir, "big"), 8, 4)
			mustIbuild(t, root, "build", "-q", "-t", "topush:1", ctxDir)
			return phaseRun{
				args:    []string{"push", "topush:1", px.Host + "/stopped/push:1"},
				reached: uploaded(px, "pushing a layer at 256 KiB/s"),
				check:   noManifest(reg, "stopped/push", "1"),
			}
		}},
		{name: "build --push", sig: syscall.SIGTERM, prepare: func(t *testing.T, root string) phaseRun {
			reg, px := slowRegistry(t)
			ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY big /big\n"})
			writeBigFile(t, filepath.Join(ctxDir, "big"), 8, 5)
			return phaseRun{
				args:    []string{"build", "--isolation", "chroot", "--push", "-t", px.Host + "/stopped/build:1", ctxDir},
				reached: uploaded(px, "pushing the built layer at 256 KiB/s"),
				check:   noManifest(reg, "stopped/build", "1"),
			}
		}},
		{name: "RUN isolation chroot", sig: syscall.SIGTERM, root: true, prepare: runPhase("chroot", 0)},
		{name: "RUN isolation none", sig: syscall.SIGINT, root: true, prepare: runPhase("none", 1)},
	}
}

// extractPhase builds a base image with a 512 MiB layer whose snapshot
// is not stored, then a build on it that needs its files (WORKDIR of a
// new directory), with the given storage driver.
func extractPhase(driver string) func(t *testing.T, root string) phaseRun {
	return func(t *testing.T, root string) phaseRun {
		t.Setenv("IBUILD_STORAGE_DRIVER", driver)
		baseDir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY big /big\n"})
		writeBigFile(t, filepath.Join(baseDir, "big"), 512, 6)
		buildWithoutSnapshot(t, root, "base:1", baseDir)
		childDir := writeContext(t, map[string]string{"Dockerfile": "FROM base:1\nWORKDIR /new\n"})
		return phaseRun{
			args: []string{"build", "--isolation", "chroot", "-t", "stopped:1", childDir},
			reached: func(int) string {
				for _, pattern := range []string{"tmp/snapshot-*/big", "storage/overlay/tempdirs/*/*/big", "storage/overlay/*/diff/big"} {
					ms, _ := filepath.Glob(filepath.Join(root, pattern))
					for _, m := range ms {
						if fi, err := os.Lstat(m); err == nil && fi.Size() >= killThreshold && fi.Size() < 512<<20 {
							return fmt.Sprintf("extracting a 512 MiB layer (%s)", filepath.Base(filepath.Dir(m)))
						}
					}
				}
				return ""
			},
		}
	}
}

// runPhase is a RUN step that sleeps, with the given isolation. None of
// its processes may outlive the build.
func runPhase(isolation string, n int) func(t *testing.T, root string) phaseRun {
	return func(t *testing.T, root string) phaseRun {
		// A number no other test or process sleeps for.
		nap := strconv.Itoa(1240000000 + os.Getpid()%100000*10 + n)
		ctxDir := busyboxContext(t, "RUN sleep "+nap+"\n")
		return phaseRun{
			args: []string{"build", "--isolation", isolation, "-t", "stopped:1", ctxDir},
			reached: func(int) string {
				if pids := procsWith(t, "sleep\x00"+nap+"\x00"); len(pids) > 0 {
					return fmt.Sprintf("running sleep %s (pid %v)", nap, pids)
				}
				return ""
			},
			check: func(t *testing.T) {
				deadline := time.Now().Add(5 * time.Second)
				for {
					pids := procsWith(t, "sleep\x00"+nap+"\x00")
					if len(pids) == 0 {
						return
					}
					if time.Now().After(deadline) {
						for _, pid := range pids {
							syscall.Kill(pid, syscall.SIGKILL)
						}
						t.Fatalf("the RUN step's sleep still runs 5s after ibuild exited: %v", pids)
					}
					time.Sleep(10 * time.Millisecond)
				}
			},
		}
	}
}

// startIbuild starts `ibuild --root root args...` with extra environment.
func startIbuild(t *testing.T, root string, stdin *os.File, env []string, args ...string) *runningBuild {
	t.Helper()
	b := &runningBuild{done: make(chan struct{})}
	b.cmd = exec.Command(ibuildBin, append([]string{"--root", root}, args...)...)
	b.cmd.Env = append(append(os.Environ(), "SOURCE_DATE_EPOCH="), env...)
	b.cmd.Stdout, b.cmd.Stderr = &b.out, &b.out
	if stdin != nil {
		b.cmd.Stdin = stdin
	}
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		b.err = b.cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(b.kill)
	return b
}

// wantExit checks that ibuild handled sig itself: exit status 128+sig.
func wantExit(t *testing.T, b *runningBuild, sig syscall.Signal) {
	t.Helper()
	ws := b.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() || ws.ExitStatus() != 128+int(sig) {
		t.Errorf("ibuild ended with %v after %s, want exit status %d\n%s", b.cmd.ProcessState, unix.SignalName(sig), 128+int(sig), b.out.String())
	}
}

// checkStoreAfterStop checks that the stopped command tagged nothing
// (the store lists the names before), and that a build and prune work.
func checkStoreAfterStop(t *testing.T, root string, before []string) {
	t.Helper()
	if names := sortedImageNames(t, root); !slices.Equal(names, before) {
		t.Errorf("images after the stop: %v, before: %v", names, before)
	}
	layertest.CheckBlobs(t, root)
	ctxDir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY f /f\n", "f": "after the stop\n"})
	mustIbuild(t, root, "build", "-q", "--isolation", "chroot", "-t", "after-stop:1", ctxDir)
	mustIbuild(t, root, "prune")
	mustIbuild(t, root, "inspect", "after-stop:1")
	layertest.CheckBlobs(t, root)
}

func sortedImageNames(t *testing.T, root string) []string {
	t.Helper()
	names := imageNames(t, root)
	slices.Sort(names)
	return names
}

// feedAndHold writes 1 MiB of comment lines to the pipe open returns (a
// blocking open waits for the reader) and keeps it open until the test
// ends. The returned channel is closed once the reader took the 1 MiB,
// less what the pipe buffers: it then reads on, waiting for more.
func feedAndHold(t *testing.T, open func() (*os.File, error)) <-chan struct{} {
	t.Helper()
	fed := make(chan struct{})
	held := make(chan *os.File, 1)
	go func() {
		f, err := open()
		if err != nil {
			held <- nil
			return
		}
		held <- f
		line := "# " + strings.Repeat("x", 60) + "\n"
		for written := 0; written < 1<<20; written += len(line) {
			if _, err := f.WriteString(line); err != nil {
				return
			}
		}
		close(fed)
	}()
	t.Cleanup(func() {
		select {
		case f := <-held:
			if f != nil {
				f.Close()
			}
		case <-time.After(5 * time.Second):
		}
	})
	return fed
}

func chanReached(ch <-chan struct{}, what string) func(int) string {
	return func(int) string {
		select {
		case <-ch:
			return what
		default:
			return ""
		}
	}
}

// writeLines writes head, then n lines made by line, to a new file and
// returns its path.
func writeLines(t *testing.T, head string, n int, line func(w *bufio.Writer, i int)) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "Dockerfile")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	w.WriteString(head)
	for i := range n {
		line(w, i)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// readAll reports what once the process has read as many bytes as file
// holds.
func readAll(file, what string) func(pid int) string {
	fi, err := os.Stat(file)
	size := int64(0)
	if err == nil {
		size = fi.Size()
	}
	return func(pid int) string {
		if readBytes(pid) < size {
			return ""
		}
		if what == "" {
			return "read"
		}
		return what
	}
}

// readBytes is how many bytes the process pid has read (rchar), or 0.
func readBytes(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "rchar: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// cpuTime is the CPU time the process pid used so far (user + system).
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces): state is
	// field 3, utime 14 and stime 15, in clock ticks of 1/100 s.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(fields[11], 10, 64)
	k, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(u+k) * 10 * time.Millisecond
}

// slowRegistry starts a registry and a proxy in front of it that moves
// blobs at 256 KiB/s.
func slowRegistry(t *testing.T) (*registrytest.Registry, *registrytest.Proxy) {
	t.Helper()
	reg := registrytest.Start(t)
	px := registrytest.NewProxy(t, reg.Host)
	px.Throttle(256 << 10)
	return reg, px
}

// slowImage stores an image for this platform with a 16 MiB layer in a
// registry and returns the throttled proxy and the image's reference
// through it.
func slowImage(t *testing.T) (*registrytest.Proxy, string) {
	t.Helper()
	reg, px := slowRegistry(t)
	img, err := random.Image(16<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(reg.Host + "/slow/base:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	return px, px.Host + "/slow/base:1"
}

func served(px *registrytest.Proxy, what string) func(int) string {
	return func(int) string {
		if px.Served() >= 64<<10 {
			return what
		}
		return ""
	}
}

func uploaded(px *registrytest.Proxy, what string) func(int) string {
	var total int64
	return func(int) string {
		total += px.Uploaded()
		if total >= 64<<10 {
			return what
		}
		return ""
	}
}

// noManifest checks that the registry has no manifest for repo:tag.
func noManifest(reg *registrytest.Registry, repo, tag string) func(t *testing.T) {
	return func(t *testing.T) {
		req, err := http.NewRequest(http.MethodHead, "http://"+reg.Host+"/v2/"+repo+"/manifests/"+tag, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("the registry answers %s for %s:%s after the stopped push, want 404", resp.Status, repo, tag)
		}
	}
}

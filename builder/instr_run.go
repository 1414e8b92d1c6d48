package builder

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"golang.org/x/sys/unix"

	"github.com/ibuild/ibuild/builder/internal/copier"
	"github.com/ibuild/ibuild/builder/progress"
	"github.com/ibuild/ibuild/builder/sandbox"
	"github.com/ibuild/ibuild/layers"
)

// defaultPath is the PATH of a step when the image sets none (docker's).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// sandboxHostname is the host name steps see.
const sandboxHostname = "ibuild"

// generatedFiles are provided for every step and never land in a layer.
// As with BuildKit there is no /etc/hostname (the host name is set in the
// step's UTS namespace).
var generatedFiles = []string{"/etc/hosts", "/etc/resolv.conf"}

// mountDirs are the directories the sandbox mounts over. Those the image
// lacks stay in the step's layer as empty root-owned 0755 directories: the
// runtime BuildKit uses (runc) creates them and BuildKit keeps them, so
// docker build's images have them.
var mountDirs = []string{"/proc", "/dev", "/sys"}

// persistentPoint reports whether a mount point is one of mountDirs.
func persistentPoint(p string) bool { return slices.Contains(mountDirs, p) }

// run handles RUN: the command runs in the sandbox over the image's layers
// and what it changed becomes a layer.
func (s *stageRun) run(ctx context.Context, c *instructions.RunCommand) error {
	// Expanding parses and validates --mount and --network.
	if err := s.expand(c); err != nil {
		return err
	}
	// ibuild has no CDI devices: like BuildKit without a CDI spec for it,
	// a required --device fails and an optional one is left out.
	for _, d := range instructions.GetDevices(c) {
		if d.Required {
			return fmt.Errorf("--device=%s: required device %q is not registered (ibuild provides no CDI devices)", d.Name, d.Name)
		}
	}
	mode := instructions.GetNetwork(c)
	if mode == instructions.NetworkHost && !s.b.opts.AllowNetworkHost {
		return &EntitlementError{Name: "network.host", Step: "RUN --network=host", Option: "AllowNetworkHost"}
	}
	if mode == instructions.NetworkDefault || mode == "" {
		mode = string(s.b.opts.Network)
	}
	network, err := ParseNetwork(mode)
	if err != nil {
		return err
	}
	isolation, err := ParseIsolation(string(s.b.opts.Isolation))
	if err != nil {
		return err
	}
	isolation, why := chooseIsolation(isolation)
	if why != "" {
		s.emit(progress.Event{Kind: progress.Log, Instruction: cmdText(c), Message: "ibuild: isolation " + string(isolation) + " (" + why + ")"})
	}
	if err := sandbox.Supported(); err != nil {
		return err
	}
	if err := s.b.emulator.check(s.b.opts.binfmtDir, s.c.Platform()); err != nil {
		return err
	}
	if isolation == IsolationNone {
		return s.runNone(ctx, c, network)
	}
	snapshotter, err := s.b.opts.Store.ResolvedSnapshotter()
	if err != nil {
		return err
	}
	if snapshotter == layers.SnapshotterNative {
		return ErrNativeSnapshots
	}
	if snapshotter == layers.SnapshotterVFS {
		// No overlay can be mounted: the step runs over the unpacked root.
		return s.runInPlace(ctx, c, network, isolation)
	}
	rootfs, err := s.c.RootFS(ctx)
	if err != nil {
		return err
	}
	lowers, err := s.c.snapshotDirs(ctx)
	if err != nil {
		return err
	}
	tmp, err := s.b.opts.Store.TempDir("run-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	dirs := map[string]string{}
	for _, d := range []string{"upper", "work", "merged", "empty"} {
		dirs[d] = filepath.Join(tmp, d)
		if err := os.Mkdir(dirs[d], 0o755); err != nil {
			return err
		}
	}
	if len(lowers) == 0 {
		lowers = []string{dirs["empty"]}
	}
	spec := sandbox.Spec{
		Lowers: lowers, Upper: dirs["upper"], Work: dirs["work"], Merged: dirs["merged"],
		Env: s.runEnv(), Dir: s.c.imageConfig().WorkingDir, Hostname: sandboxHostname,
		Network: network, Isolation: isolation,
	}
	if err := s.setCommand(c, &spec, rootfs); err != nil {
		return err
	}
	points, release, err := s.planMounts(ctx, c, &spec, rootfs, tmp)
	defer release()
	if err != nil {
		return err
	}
	created, parents := planMountPoints(rootfs, points)
	if err := s.runSandbox(ctx, c, spec); err != nil {
		return err
	}
	if err := cleanMountPoints(dirs["upper"], created, parents, rootfs); err != nil {
		return err
	}
	if ents, err := os.ReadDir(dirs["upper"]); err == nil && len(ents) == 0 && !isOpaque(dirs["upper"]) {
		// Nothing changed: no layer, as BuildKit does.
		s.c.addHistory(cmdText(c))
		return nil
	}
	desc, err := s.c.addLayerDir(ctx, dirs["upper"], cmdText(c))
	if err != nil {
		return stepCreated(err)
	}
	s.layerSize = desc.ReportedSize()
	return nil
}

// stepCreated words the failed commit of a step's layer that holds a
// file no layer can carry (a ".wh." name) as what the command did.
func stepCreated(err error) error {
	var wn *layers.WhiteoutNameError
	if errors.As(err, &wn) {
		return fmt.Errorf("the command created %w; remove or rename it within the same RUN step", wn)
	}
	return err
}

// runArgs is the step's argv and standard input. Shell form runs under the
// image's SHELL; a heredoc standing alone is the script, and heredocs after
// a command are handed to the shell as written, which feeds them to it.
func (s *stageRun) runArgs(c *instructions.RunCommand) ([]string, string) {
	files := c.Files
	if !c.PrependShell {
		stdin := ""
		if len(files) > 0 {
			stdin = heredocData(files[0])
		}
		return append([]string(nil), c.CmdLine...), stdin
	}
	sh := s.c.imageConfig().Shell
	if len(sh) == 0 {
		sh = s.defaultShell()
	}
	if name, _, ok := shebangHeredoc(c); ok {
		return append(append([]string(nil), sh...), path.Join(heredocScriptDir, name)), ""
	}
	if len(files) == 1 && len(c.CmdLine) == 1 && parser.MustParseHeredoc(c.CmdLine[0]) != nil {
		return append(append([]string(nil), sh...), heredocData(files[0])), ""
	}
	script := strings.Join(c.CmdLine, " ")
	for _, f := range files {
		script += "\n" + f.Data + f.Name
	}
	return append(append([]string(nil), sh...), script), ""
}

// heredocScriptDir is where a RUN heredoc script with a shebang line is
// mounted (read-only, executable) for its step, as BuildKit does; it is
// inside the sandbox's /dev, so it never reaches a layer.
const heredocScriptDir = "/dev/pipes"

// shebangHeredoc reports a RUN that is a single heredoc whose content
// starts with "#!": BuildKit runs it as an executable script file, not as
// shell input.
func shebangHeredoc(c *instructions.RunCommand) (name, data string, ok bool) {
	if !c.PrependShell || len(c.Files) != 1 || len(c.CmdLine) != 1 || parser.MustParseHeredoc(c.CmdLine[0]) == nil {
		return "", "", false
	}
	data = heredocData(c.Files[0])
	if !strings.HasPrefix(data, "#!") {
		return "", "", false
	}
	return c.Files[0].Name, data, true
}

func heredocData(f instructions.ShellInlineFile) string {
	if f.Chomp {
		return parser.ChompHeredocContent(f.Data)
	}
	return f.Data
}

// runEnv is the step's environment: the image's ENV, the ARGs in scope
// that ENV does not override, and predefined proxy args given with
// --build-arg. None of the ARGs is written to the image.
func (s *stageRun) runEnv() []string {
	env := s.scope()
	for k, v := range s.b.opts.BuildArgs {
		if isPredefinedArg(k) {
			if _, set := env.Get(k); !set {
				env.Set(k, v)
			}
		}
	}
	if _, ok := env.Get("PATH"); !ok {
		env.Set("PATH", defaultPath)
	}
	return env.Environ()
}

// resolveRunUser resolves USER for a step: a name or uid, optionally with
// a group; without a group, the user's primary group from /etc/passwd (0
// for an unknown numeric uid); supplementary groups from /etc/group.
func resolveRunUser(spec string, files copier.FileReader) (uid, gid uint32, groups []uint32, err error) {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	var name string
	if n, err := strconv.ParseUint(userPart, 10, 32); err == nil {
		uid = uint32(n)
		if e, ok := copier.LookupPasswd(files, "", int(n)); ok {
			gid, name = uint32(e.GID), e.Name
		}
	} else {
		e, ok := copier.LookupPasswd(files, userPart, -1)
		if !ok {
			return 0, 0, nil, fmt.Errorf("unable to find user %s: no matching entries in passwd file", userPart)
		}
		uid, gid, name = uint32(e.UID), uint32(e.GID), e.Name
	}
	if hasGroup {
		g, err := copier.ResolveGroup(groupPart, files)
		if err != nil {
			return 0, 0, nil, err
		}
		gid = uint32(g)
		return uid, gid, []uint32{gid}, nil
	}
	groups = []uint32{gid}
	if name != "" {
		for _, g := range supplementaryGroups(files, name) {
			if uint32(g) != gid {
				groups = append(groups, uint32(g))
			}
		}
	}
	return uid, gid, groups, nil
}

// supplementaryGroups lists the gids of /etc/group entries naming user.
func supplementaryGroups(files copier.FileReader, user string) []int {
	data, err := files.ReadFile("/etc/group")
	if err != nil {
		return nil
	}
	var out []int
	copier.ScanColonFile(data, func(f []string) bool {
		if len(f) >= 4 {
			for _, m := range strings.Split(f[3], ",") {
				if strings.TrimSpace(m) == user {
					if g, err := strconv.Atoi(f[2]); err == nil {
						out = append(out, g)
					}
				}
			}
		}
		return true
	})
	return out
}

// generatedFileContent is what a step sees in /etc/hosts and
// /etc/resolv.conf (the host's), by image path; like docker build, no
// /etc/hostname is made.
func generatedFileContent() map[string]string {
	resolv, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		resolv = nil
	}
	return map[string]string{
		"/etc/hosts":       "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t" + sandboxHostname + "\n",
		"/etc/resolv.conf": string(resolv),
	}
}

// planMountPoints says, for mount points the sandbox will make, which
// paths it creates (absent from the image: the mount points and their
// missing parents) and which existing directories the overlay may copy
// up to hold them. Both lists are deepest first.
func planMountPoints(rootfs *layers.RootFS, points []mountPointSpec) (created []mountPointSpec, parents []string) {
	seen := map[string]bool{}
	for _, pt := range points {
		comps := strings.Split(strings.Trim(path.Clean(pt.path), "/"), "/")
		cur := "/"
		for i, c := range comps {
			cur = path.Join(cur, c)
			last := i == len(comps)-1
			if seen[cur] {
				continue
			}
			if _, _, err := rootfs.Lstat(cur); err == nil {
				if !last {
					seen[cur] = true
					parents = append(parents, cur)
				}
				continue
			}
			seen[cur] = true
			created = append(created, mountPointSpec{path: cur, dir: !last || pt.dir})
		}
	}
	deeper := func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") }
	slices.SortStableFunc(created, func(a, b mountPointSpec) int { return deeper(a.path, b.path) })
	slices.SortStableFunc(parents, deeper)
	return created, parents
}

// cleanMountPoints removes from the upper directory what the sandbox made
// only to mount over: the created mount points (when the step left them
// empty) and copies of existing parents that hold nothing else.
func cleanMountPoints(upper string, created []mountPointSpec, parents []string, rootfs *layers.RootFS) error {
	for _, pt := range created {
		h := filepath.Join(upper, filepath.FromSlash(pt.path))
		fi, err := os.Lstat(h)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if pt.dir != fi.IsDir() || (!pt.dir && (!fi.Mode().IsRegular() || fi.Size() != 0)) {
			continue // the step replaced it: it is the step's
		}
		if persistentPoint(pt.path) {
			if pt.dir {
				// Kept, with the mode and owner runc gives it.
				if err := os.Chmod(h, 0o755); err != nil {
					return err
				}
				if err := os.Lchown(h, 0, 0); err != nil {
					return err
				}
			}
			continue
		}
		if pt.dir {
			if ents, err := os.ReadDir(h); err != nil || len(ents) > 0 || isOpaque(h) {
				if err != nil {
					return err
				}
				continue
			}
		}
		if err := os.Remove(h); err != nil {
			return err
		}
	}
	// A parent was only copied up to hold a new mount point: an empty copy
	// with the image's mode and owner changes nothing (its mtime moved
	// when the mount point came and went, so it is not compared).
	for _, p := range parents {
		h := filepath.Join(upper, filepath.FromSlash(p))
		up, err := os.Lstat(h)
		if err != nil || !up.IsDir() {
			continue
		}
		if ents, err := os.ReadDir(h); err != nil || len(ents) > 0 || isOpaque(h) {
			if err != nil {
				return err
			}
			continue
		}
		low, _, err := rootfs.Lstat(p)
		if err == nil && low.Mode() == up.Mode() && sameOwner(low, up) {
			if err := os.Remove(h); err != nil {
				return err
			}
		}
	}
	return nil
}

// isOpaque reports whether an overlay upper directory is marked opaque.
func isOpaque(dir string) bool {
	buf := make([]byte, 4)
	for _, attr := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
		if n, err := unix.Lgetxattr(dir, attr, buf); err == nil && n == 1 && buf[0] == 'y' {
			return true
		}
	}
	return false
}

func sameOwner(a, b fs.FileInfo) bool {
	sa, ok1 := a.Sys().(*syscall.Stat_t)
	sb, ok2 := b.Sys().(*syscall.Stat_t)
	return ok1 && ok2 && sa.Uid == sb.Uid && sa.Gid == sb.Gid
}

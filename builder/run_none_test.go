package builder

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/registry"
)

// noneDockerfile writes, modifies and deletes files and directories, makes
// symlinks and hardlinks, changes modes and owners and replaces a
// directory, over a COPY the next RUN must see.
const noneDockerfile = "FROM busybox:1\n" +
	"RUN mkdir -p /opt/d/sub /data && echo old > /opt/d/old && echo s > /opt/d/sub/s && echo keep > /etc/keep && echo x > /data/f && echo y > /data/g && ln -s /data/f /data/link\n" +
	"COPY copied.txt /data/copied\n" +
	"RUN echo more >> /data/f && rm /data/g && chmod 600 /etc/keep && chown 1000:50 /data/f && ln -s /nowhere /sym && echo a > /h1 && ln /h1 /h2 && " +
	"rm -rf /opt/d && mkdir /opt/d && echo new > /opt/d/new && cat /data/copied > /seen && mkdir -p /w && chmod 4755 /w/../h1\n" +
	"WORKDIR /work/dir\n" +
	"RUN echo here > f && rm -rf /data/link && mkdir /data/link && touch -d @1000000000 /etc/keep\n" +
	"RUN true\n" +
	"RUN rm -rf /w /opt && echo file > /opt\n"

// TestRunIsolationNone builds one Dockerfile with the namespaced overlay
// sandbox and with IsolationNone and compares the flattened images and
// every added layer's entries (names, types, modes, owners, link targets,
// content digests).
func TestRunIsolationNone(t *testing.T) {
	st := newStore(t)
	base := busyboxBase(t, st)
	baseCfg, err := base.Image.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	dir := writeContext(t, map[string]string{"Dockerfile": noneDockerfile, "copied.txt": "copied\n"})
	build := func(isolation Isolation) ([]string, [][]string, v1.Image) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		res, err := Build(ctx, Options{Store: st, ContextDir: dir, StepOptions: StepOptions{Isolation: isolation}, NoCache: true, Tags: []string{"none-" + string(isolation) + ":1"}})
		if err != nil {
			t.Fatalf("isolation %s: %v", isolation, err)
		}
		root := filepath.Join(t.TempDir(), "rootfs")
		if err := registry.WriteRootFS(ctx, root, res.Image, nil); err != nil {
			t.Fatal(err)
		}
		ls, err := res.Image.Layers()
		if err != nil {
			t.Fatal(err)
		}
		var entries [][]string
		for _, l := range ls[len(baseCfg.RootFS.DiffIDs):] {
			entries = append(entries, layerEntries(t, l))
		}
		return treeListing(t, root), entries, res.Image
	}
	overlayTree, overlayLayers, _ := build(IsolationAuto)
	noneTree, noneLayers, img := build(IsolationNone)
	if d := listDiff(overlayTree, noneTree); d != "" {
		t.Errorf("flattened trees differ (- overlay, + none):\n%s", d)
	}
	if len(overlayLayers) != len(noneLayers) {
		t.Fatalf("overlay made %d layers, none %d", len(overlayLayers), len(noneLayers))
	}
	for i := range overlayLayers {
		t.Logf("layer %d: %d entries with isolation none:\n  %s", i+1, len(noneLayers[i]), strings.Join(noneLayers[i], "\n  "))
		if d := listDiff(overlayLayers[i], noneLayers[i]); d != "" {
			t.Errorf("layer %d differs (- overlay, + none):\n%s", i+1, d)
		}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(cfg.History); n == 0 || !cfg.History[n-2].EmptyLayer {
		t.Errorf("RUN true made a layer with isolation none: %+v", cfg.History)
	}
	// Nothing is left unpacked or mounted under the store.
	if ents, _ := filepath.Glob(filepath.Join(st.Root(), "tmp", "rootfs-*")); len(ents) > 0 {
		t.Errorf("unpacked roots left behind: %q", ents)
	}
}

// layerEntries describes each entry of a layer on one line; directory
// mtimes are left out (they are the time of the build).
func layerEntries(t *testing.T, l v1.Layer) []string {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var out []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.New()
		if _, err := io.Copy(sum, tr); err != nil {
			t.Fatal(err)
		}
		var xattrs []string
		for k, v := range h.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") {
				xattrs = append(xattrs, k+"="+v)
			}
		}
		slices.Sort(xattrs)
		out = append(out, fmt.Sprintf("%s type=%c mode=%o owner=%d:%d link=%q sha=%s xattrs=%q",
			h.Name, h.Typeflag, h.Mode, h.Uid, h.Gid, h.Linkname, hex.EncodeToString(sum.Sum(nil))[:12], xattrs))
	}
}

// treeListing describes each path under root on one line.
func treeListing(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		line := fmt.Sprintf("%s mode=%v owner=%d:%d nlink=%d", rel, fi.Mode(), st.Uid, st.Gid, st.Nlink)
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			line += " -> " + target
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			line += " sha=" + hex.EncodeToString(sum[:6])
			if !fi.ModTime().Equal(time.Unix(1000000000, 0)) && rel == "etc/keep" {
				line += " (touch -d lost)"
			}
		}
		out = append(out, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// listDiff shows the lines only in a (-) or only in b (+).
func listDiff(a, b []string) string {
	var d strings.Builder
	for _, l := range a {
		if !slices.Contains(b, l) {
			d.WriteString("- " + l + "\n")
		}
	}
	for _, l := range b {
		if !slices.Contains(a, l) {
			d.WriteString("+ " + l + "\n")
		}
	}
	return d.String()
}

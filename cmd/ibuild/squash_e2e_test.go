package main

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBuildSquash builds the demo plain, with --squash and with
// --squash-all, and compares layer counts, history and file trees.
func TestBuildSquash(t *testing.T) {
	root := t.TempDir()
	type inspected struct {
		Digest string `json:"digest"`
		Config struct {
			History []struct {
				EmptyLayer bool `json:"empty_layer"`
			} `json:"history"`
		} `json:"config"`
		Manifest struct {
			Layers []json.RawMessage `json:"layers"`
		} `json:"manifest"`
	}
	build := func(name string, flags ...string) (inspected, string) {
		t.Helper()
		out := filepath.Join(t.TempDir(), "rootfs")
		args := append([]string{"build", "-q", "-t", name, "--source-date-epoch", "1700000000", "-o", "type=local,dest=" + out}, flags...)
		mustIbuild(t, root, append(args, "../../testdata/demo")...)
		var v inspected
		if err := json.Unmarshal([]byte(mustIbuild(t, root, "inspect", name)), &v); err != nil {
			t.Fatal(err)
		}
		return v, out
	}
	plain, plainTree := build("d:plain")
	if len(plain.Manifest.Layers) < 2 {
		t.Fatalf("the demo has %d layers: too few to squash", len(plain.Manifest.Layers))
	}
	for _, flag := range []string{"--squash", "--squash-all"} {
		t.Run(flag, func(t *testing.T) {
			// The demo's final stage is FROM scratch: both flags make one layer.
			sq, tree := build("d:"+strings.TrimPrefix(flag, "--"), flag)
			if n := len(sq.Manifest.Layers); n != 1 {
				t.Errorf("%d layers, want 1", n)
			}
			layered := 0
			for _, h := range sq.Config.History {
				if !h.EmptyLayer {
					layered++
				}
			}
			if len(sq.Config.History) != len(plain.Config.History) || layered != 1 {
				t.Errorf("history: %d entries (%d with a layer), want %d (1)", len(sq.Config.History), layered, len(plain.Config.History))
			}
			if got, want := treeListing(t, tree), treeListing(t, plainTree); got != want {
				t.Errorf("files differ from the plain build's:\ngot:\n%s\nwant:\n%s", got, want)
			}
		})
	}
	_, errOut, code := ibuild(t, root, "", "build", "--squash", "--squash-all", "../../testdata/demo")
	if code != 2 || !strings.Contains(errOut, "--squash and --squash-all exclude each other") {
		t.Errorf("--squash with --squash-all: exit %d, %s", code, errOut)
	}
}

// treeListing lists the paths under dir with their modes and file contents.
func treeListing(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		b.WriteString(rel + " " + info.Mode().String())
		if info.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			b.WriteString(" " + string(data))
		}
		b.WriteString("\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

package builder

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// withoutHistory drops the history lines of a dumpImage text: the two
// ways of building name their steps differently (a script's RUN is in
// exec form).
func withoutHistory(s string) string {
	var out []string
	skip := false
	for _, l := range strings.Split(s, "\n") {
		switch {
		case l == "history:":
			skip = true
			continue
		case strings.HasPrefix(l, "layers:"):
			skip = false
		}
		if !skip {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestWorkingContainerMatchesDockerfile builds one image with a
// Dockerfile and the same image with working container operations: the
// file trees and configs are the same.
func TestWorkingContainerMatchesDockerfile(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	busyboxBase(t, st)
	dir := writeContext(t, map[string]string{
		"data/a.txt":     "a",
		"data/sub/b.txt": "b",
	})
	df := "FROM busybox:1\n" +
		"RUN mkdir -p /app && echo hello > /app/greeting\n" +
		"COPY --chown=1000:1000 data/ /app/data/\n" +
		"ENV MODE=prod\n" +
		"WORKDIR /app\n" +
		"EXPOSE 8080/tcp\n" +
		"LABEL owner=team\n" +
		`CMD ["/bin/sh", "-c", "cat /app/greeting"]` + "\n"
	res, err := Build(ctx, Options{Store: st, ContextDir: dir, DockerfileContent: []byte(df), StepOptions: StepOptions{SourceDateEpoch: &epoch}, NoCache: true})
	if err != nil {
		t.Fatal(err)
	}
	want := withoutHistory(dumpImage(t, res.Image))

	opts := StepOptions{SourceDateEpoch: &epoch}
	c, err := From(ctx, st, "busybox:1", FromOptions{Name: "script"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Name() != "script" {
		t.Errorf("name %q", c.Name())
	}
	c.Close()
	step := func(name string, f func(c *Container) error) {
		t.Helper()
		c, err := OpenContainer(ctx, st, "script")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		defer c.Close()
		if err := f(c); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	var out []string
	step("run", func(c *Container) error {
		return c.Run(ctx, RunOptions{Args: []string{"/bin/sh", "-c", "mkdir -p /app && echo hello > /app/greeting && echo done $HOME"},
			Output: func(l string) { out = append(out, l) }, Options: opts})
	})
	// HOME as in a RUN step: root's home from the image's /etc/passwd.
	if strings.Join(out, "\n") != "done /root" {
		t.Errorf("run output %q", out)
	}
	step("copy", func(c *Container) error {
		return c.Copy(ctx, CopyOptions{Sources: []string{filepath.Join(dir, "data") + "/"}, Dest: "/app/data/", Chown: "1000:1000", Options: opts})
	})
	cmd, wd := `["/bin/sh", "-c", "cat /app/greeting"]`, "/app"
	step("config", func(c *Container) error {
		return c.Config(ctx, ConfigOptions{Env: []string{"MODE=prod"}, WorkingDir: &wd, Ports: []string{"8080/tcp"},
			Labels: map[string]string{"owner": "team"}, Cmd: &cmd, Options: opts})
	})
	var got string
	step("commit", func(c *Container) error {
		img, _, err := c.Commit(ctx, "script:1", CommitOptions{})
		if err == nil {
			got = withoutHistory(dumpImage(t, img))
		}
		return err
	})
	if got != want {
		t.Errorf("working container image differs from the Dockerfile's:\n%s", lineDiff(want, got))
	}
	// Squashed commits: the same files, in one layer on the base's, or in
	// one layer altogether.
	treeOf := func(s string) string { return s[strings.Index(s, "files:"):] }
	for _, tc := range []struct {
		name   string
		o      CommitOptions
		layers int
	}{{"squash", CommitOptions{Squash: true}, 4}, {"squash-all", CommitOptions{SquashAll: true}, 1}} { // busybox:1 has 3 layers
		step(tc.name, func(c *Container) error {
			img, _, err := c.Commit(ctx, "script:"+tc.name, tc.o)
			if err != nil {
				return err
			}
			ls, _ := img.Layers()
			if len(ls) != tc.layers {
				t.Errorf("%s: %d layers, want %d", tc.name, len(ls), tc.layers)
			}
			if sq := withoutHistory(dumpImage(t, img)); treeOf(sq) != treeOf(got) {
				t.Errorf("%s changed the files:\n%s", tc.name, lineDiff(treeOf(got), treeOf(sq)))
			}
			return nil
		})
	}
	// A failing command leaves the container as it was and says why.
	step("failing run", func(c *Container) error {
		before := len(c.State().Layers)
		err := c.Run(ctx, RunOptions{Args: []string{"/bin/sh", "-c", "touch /x; exit 3"}, Options: opts})
		if code, ok := ExitCode(err); !ok || code != 3 {
			return errors.New("want exit code 3, got " + errString(err))
		}
		if len(c.State().Layers) != before {
			return errors.New("failed run added a layer")
		}
		return nil
	})
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}

// TestWorkingContainerLocked: a container being changed by one opener is
// refused to another, with a message that says so.
func TestWorkingContainerLocked(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	c, err := From(ctx, st, "scratch", FromOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Name() != "scratch-working-container" {
		t.Errorf("default name %q", c.Name())
	}
	c2, err := From(ctx, st, "scratch", FromOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c2.Name() != "scratch-working-container-1" {
		t.Errorf("second default name %q", c2.Name())
	}
	a, err := OpenContainer(ctx, st, c.Name())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenContainer(ctx, st, c.Name()); err == nil || !strings.Contains(err.Error(), "in use by another ibuild process") {
		t.Errorf("second open: %v", err)
	}
	a.Close()
	b, err := OpenContainer(ctx, st, c.Name())
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	if err := b.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenContainer(ctx, st, c.Name()); !errors.Is(err, ErrNoContainer) {
		t.Errorf("open removed container: %v", err)
	}
	list, err := Containers(ctx, st)
	if err != nil || len(list) != 1 || list[0].Name != c2.Name() {
		t.Errorf("Containers = %v, %v", list, err)
	}
}

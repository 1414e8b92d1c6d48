package builder_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/layers"
)

// Build the demo image into a fresh store and read its config back.
func ExampleBuild() {
	ctx := context.Background()
	root, err := os.MkdirTemp("", "ibuild-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(root)

	st, err := layers.OpenStore(ctx, filepath.Join(root, "store"))
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	res, err := builder.Build(ctx, builder.Options{
		Store:      st,
		ContextDir: "../testdata/demo",
		Tags:       []string{"demo:1"},
		BuildArgs:  map[string]string{"VERSION": "2.0"},
	})
	if err != nil {
		log.Fatal(err)
	}
	cfg, err := res.Image.ConfigFile()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Names[0])
	fmt.Println(cfg.Config.WorkingDir, cfg.Config.Labels["org.opencontainers.image.version"])
	fmt.Println(cfg.Config.Entrypoint, cfg.Config.Cmd)
	// Output:
	// localhost/demo:1
	// /srv/www 2.0
	// [/bin/serve] [--root /srv/www]
}

// Build an image without a Dockerfile: a working container from scratch,
// a file copied in, its config set, committed under a name.
func ExampleFrom() {
	ctx := context.Background()
	root, err := os.MkdirTemp("", "ibuild-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(root)
	st, err := layers.OpenStore(ctx, filepath.Join(root, "store"))
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	src := filepath.Join(root, "hello.txt")
	if err := os.WriteFile(src, []byte("hello\n"), 0o644); err != nil {
		log.Fatal(err)
	}

	c, err := builder.From(ctx, st, "scratch", builder.FromOptions{Name: "hello"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if err := c.Copy(ctx, builder.CopyOptions{Sources: []string{src}, Dest: "/srv/", Chown: "1000:1000"}); err != nil {
		log.Fatal(err)
	}
	cmd, wd := `["/bin/cat", "hello.txt"]`, "/srv"
	if err := c.Config(ctx, builder.ConfigOptions{Env: []string{"GREETING=hello"}, WorkingDir: &wd, Cmd: &cmd,
		Labels: map[string]string{"org.opencontainers.image.title": "hello"}}); err != nil {
		log.Fatal(err)
	}
	img, _, err := c.Commit(ctx, "hello:1", builder.CommitOptions{})
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Remove(ctx); err != nil {
		log.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		log.Fatal(err)
	}
	desc, err := st.Lookup(ctx, "hello:1")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(desc.MediaType)
	fmt.Println(cfg.Config.Env, cfg.Config.WorkingDir, cfg.Config.Cmd, len(cfg.RootFS.DiffIDs))
	// Output:
	// application/vnd.oci.image.manifest.v1+json
	// [GREETING=hello] /srv [/bin/cat hello.txt] 1
}

// A program that builds Dockerfiles with RUN steps as an ordinary user
// enters a user namespace first, as the ibuild command does: main starts
// with reexec.Init() (go.podman.io/storage/pkg/reexec), then calls
// MaybeReexecUsingUserNamespace, which re-executes the program as root of
// a namespace mapping the user's /etc/subuid range (and does not return),
// or returns at once as root or inside it. cmd/ibuild/testdata/libuserns
// is the whole program; a test runs it as an unprivileged user.
func ExampleMaybeReexecUsingUserNamespace() {
	root := "/var/tmp/my-builder" // fixed before the re-exec: inside, the program is root
	if err := builder.MaybeReexecUsingUserNamespace(builder.ReexecOptions{
		Isolation: builder.IsolationAuto,
		Warn:      func(msg string) { log.Print("warning: ", msg) },
	}); err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	st, err := layers.OpenStore(ctx, root)
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	res, err := builder.Build(ctx, builder.Options{Store: st, ContextDir: "."})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.ID)
}

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

package builder

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ibuild/ibuild/layers"
)

// TestDockerFormatRefusesZstd: Format docker with Compression zstd is
// refused before anything is built, and so is a docker-format image
// whose base brings zstd layers.
func TestDockerFormatRefusesZstd(t *testing.T) {
	ctx := context.Background()
	st, err := layers.OpenStore(ctx, filepath.Join(t.TempDir(), "root"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	dir := t.TempDir()
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a", "a\n")
	write("Dockerfile", "FROM scratch\nCOPY a /a\n")
	_, err = Build(ctx, Options{Store: st, ContextDir: dir, Tags: []string{"z:docker"}, Format: FormatDocker, Compression: layers.Zstd})
	if !errors.Is(err, ErrDockerZstd) {
		t.Fatalf("Format docker, Compression zstd: %v", err)
	}
	if _, err := st.Lookup(ctx, "z:docker"); err == nil {
		t.Fatal("a refused build tagged its image")
	}
	if _, err := Build(ctx, Options{Store: st, ContextDir: dir, Tags: []string{"z:base"}, Compression: layers.Zstd}); err != nil {
		t.Fatal(err)
	}
	write("Dockerfile", "FROM z:base\nCOPY a /b\n")
	_, err = Build(ctx, Options{Store: st, ContextDir: dir, Format: FormatDocker, Compression: layers.Gzip})
	if !errors.Is(err, ErrDockerZstd) {
		t.Fatalf("Format docker on a zstd base: %v", err)
	}
	if _, err := Build(ctx, Options{Store: st, ContextDir: dir, Format: FormatOCI, Compression: layers.Gzip}); err != nil {
		t.Fatalf("Format oci on a zstd base: %v", err)
	}
}

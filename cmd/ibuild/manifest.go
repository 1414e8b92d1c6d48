package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/urfave/cli/v2"

	"github.com/ibuild/ibuild/builder"
	"github.com/ibuild/ibuild/layers"
	"github.com/ibuild/ibuild/registry"
)

// manifestCommand is buildah's `manifest`: manifest lists (image indexes)
// made from stored images and images that live in a registry.
func manifestCommand() *cli.Command {
	registryFlags := func() []cli.Flag {
		return []cli.Flag{
			&cli.StringSliceFlag{Name: "insecure-registry", Usage: "reach this registry host[:port] over plain HTTP (repeatable; localhost and 127.0.0.1 always are)"},
			&cli.BoolFlag{Name: "tls-verify", Value: true, Usage: "verify registries' TLS certificates"},
			authfileFlag, certDirFlag,
		}
	}
	entryFlags := func() []cli.Flag {
		return []cli.Flag{
			&cli.StringFlag{Name: "os", Usage: "record this OS for the image"},
			&cli.StringFlag{Name: "arch", Usage: "record this architecture for the image"},
			&cli.StringFlag{Name: "variant", Usage: "record this architecture variant for the image (v7, v8...)"},
			&cli.StringFlag{Name: "os-version", Usage: "record this OS version for the image"},
			&cli.StringSliceFlag{Name: "os-features", Usage: "record these OS features for the image (comma-separated)"},
			&cli.StringSliceFlag{Name: "features", Usage: "record these features for the image (comma-separated)"},
			&cli.StringSliceFlag{Name: "annotation", Usage: "annotate the image's entry: KEY=VALUE (repeatable)"},
		}
	}
	return &cli.Command{
		Name:  "manifest",
		Usage: "create, edit and push manifest lists (image indexes), as buildah manifest",
		Description: `A manifest list is a stored image index under a name. Its entries are stored images,
or images that live in a registry (docker://REF): of those only the manifest and config
are fetched, and pushing the list copies them without downloading their layers.

  ibuild manifest create app:1
  ibuild manifest add app:1 docker://reg.io/app@sha256:<amd64 digest>
  ibuild manifest add app:1 docker://reg.io/app@sha256:<arm64 digest>
  ibuild manifest push app:1 docker://reg.io/app:1`,
		Subcommands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "create a manifest list, optionally with images, and print its digest",
				ArgsUsage: "LIST [IMAGE...]",
				Flags: append([]cli.Flag{
					&cli.BoolFlag{Name: "all", Usage: "add every image of an IMAGE that is an index (default: the one for this platform)"},
					&cli.BoolFlag{Name: "amend", Usage: "add to the list LIST when it exists (an image named LIST becomes its first entry)"},
					&cli.StringSliceFlag{Name: "annotation", Usage: "annotate the index: KEY=VALUE (repeatable)"},
					&cli.StringFlag{Name: "format", Value: "oci", Usage: "oci (an OCI image index) or docker (a docker manifest list; v2s2 too)"},
				}, registryFlags()...),
				Action: manifestCreate,
			},
			{
				Name:      "add",
				Usage:     "add an image to a manifest list; print LIST-DIGEST: IMAGE-DIGEST",
				ArgsUsage: "LIST IMAGE",
				Description: `IMAGE is docker://REF (a registry's image: only its manifest and config are fetched),
else a stored image (name, digest or ID), else, when it names a registry, that registry's
image (REF@sha256:... pins one).`,
				Flags: append(append([]cli.Flag{
					&cli.BoolFlag{Name: "all", Usage: "add every image of an IMAGE that is an index (default: the one for this platform, or for --os/--arch)"},
				}, entryFlags()...), registryFlags()...),
				Action: manifestAdd,
			},
			{
				Name:      "remove",
				Usage:     "remove an entry from a manifest list; print LIST-DIGEST: ENTRY-DIGEST",
				ArgsUsage: "LIST DIGEST|IMAGE",
				Flags:     registryFlags(),
				Action:    manifestRemove,
			},
			{
				Name:      "annotate",
				Usage:     "change the platform or annotations of an entry, or (--index) the list's annotations",
				ArgsUsage: "LIST [DIGEST|IMAGE]",
				Flags: append(append([]cli.Flag{
					&cli.BoolFlag{Name: "index", Usage: "set --annotation on the index itself, not on an entry"},
				}, entryFlags()...), registryFlags()...),
				Action: manifestAnnotate,
			},
			{
				Name:      "inspect",
				Usage:     "print a manifest list (stored, or docker://REF) as JSON",
				ArgsUsage: "LIST|docker://REF",
				Flags:     registryFlags(),
				Action:    manifestInspect,
			},
			{
				Name:      "push",
				Usage:     "push a manifest list (and its images) to a registry; print the pushed digest",
				ArgsUsage: "LIST [[docker://]DEST]",
				Flags: append([]cli.Flag{
					&cli.BoolFlag{Name: "all", Value: true, Usage: "also push the list's images (--all=false: push the index alone; the images must be in DEST's repository)"},
					&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Usage: "push as oci or docker (v2s2) media types (default: as stored)"},
					&cli.StringFlag{Name: "digestfile", Usage: "write the pushed digest to this file"},
					&cli.BoolFlag{Name: "rm", Usage: "remove the list from the store once pushed"},
					&cli.IntFlag{Name: "jobs", Value: 3, Usage: "blobs uploaded at once"},
					&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the digest"},
				}, registryFlags()...),
				Action: manifestPush,
			},
			{
				Name:      "rm",
				Usage:     "remove manifest lists, and the data only they used",
				ArgsUsage: "LIST...",
				Action:    manifestRm,
			},
			{
				Name:      "exists",
				Usage:     "exit 0 when LIST is a stored manifest list, 1 when not",
				ArgsUsage: "LIST",
				Action:    manifestExists,
			},
		},
	}
}

// listFormat maps --format to a list media type.
func listFormat(s string) (types.MediaType, error) {
	switch strings.ToLower(s) {
	case "", "oci":
		return types.OCIImageIndex, nil
	case "docker", "v2s2":
		return types.DockerManifestList, nil
	}
	return "", fmt.Errorf("--format %q: want oci or docker (v2s2)", s)
}

// annotationFlag parses --annotation KEY=VALUE values.
func annotationFlag(c *cli.Context) (map[string]string, error) {
	anns, err := parseKeyValues(c.StringSlice("annotation"), false)
	if err != nil {
		return nil, fmt.Errorf("--annotation: %w", err)
	}
	if len(anns) == 0 {
		return nil, nil
	}
	return anns, nil
}

// entryOptions reads the entry flags of add and annotate.
func entryOptions(c *cli.Context) (registry.ListEntryOptions, error) {
	anns, err := annotationFlag(c)
	if err != nil {
		return registry.ListEntryOptions{}, err
	}
	return registry.ListEntryOptions{
		OS: c.String("os"), Architecture: c.String("arch"), Variant: c.String("variant"), OSVersion: c.String("os-version"),
		OSFeatures: splitList(c.StringSlice("os-features")), Features: splitList(c.StringSlice("features")),
		Annotations: anns,
	}, nil
}

// splitList splits comma-separated values of a repeatable flag.
func splitList(vs []string) []string {
	var out []string
	for _, v := range vs {
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				out = append(out, f)
			}
		}
	}
	return out
}

func needArgs(c *cli.Context, min, max int, usage string) error {
	if c.NArg() < min || (max >= 0 && c.NArg() > max) {
		return cli.Exit("manifest "+c.Command.Name+" needs "+usage, 2)
	}
	return nil
}

func manifestCreate(c *cli.Context) error {
	if err := needArgs(c, 1, -1, "LIST and optionally images to add (e.g. ibuild manifest create app:1 docker://reg.io/app@sha256:...)"); err != nil {
		return err
	}
	mt, err := listFormat(c.String("format"))
	if err != nil {
		return err
	}
	anns, err := annotationFlag(c)
	if err != nil {
		return err
	}
	st, err := openStore(c)
	if err != nil {
		return err
	}
	defer st.Close()
	list := c.Args().First()
	desc, err := registry.CreateList(c.Context, st, list, registry.ListCreateOptions{MediaType: mt, Annotations: anns, Amend: c.Bool("amend")})
	if err != nil {
		return err
	}
	for _, img := range c.Args().Slice()[1:] {
		if _, desc, err = registry.AddToList(c.Context, st, list, img, registry.ListAddOptions{Conn: connOptions(c), All: c.Bool("all"), Progress: stderrProgress}); err != nil {
			return err
		}
	}
	fmt.Println(desc.Digest)
	return nil
}

// stderrProgress prints progress lines on stderr.
func stderrProgress(msg string) { fmt.Fprintln(os.Stderr, msg) }

func manifestAdd(c *cli.Context) error {
	if err := needArgs(c, 2, 2, "LIST and IMAGE (e.g. ibuild manifest add app:1 docker://reg.io/app@sha256:...)"); err != nil {
		return err
	}
	eo, err := entryOptions(c)
	if err != nil {
		return err
	}
	// Of an index, --os and --arch pick the image (as buildah does).
	opts := registry.ListAddOptions{Conn: connOptions(c), ListEntryOptions: eo, All: c.Bool("all"), Progress: stderrProgress}
	st, err := openStore(c)
	if err != nil {
		return err
	}
	defer st.Close()
	added, desc, err := registry.AddToList(c.Context, st, c.Args().Get(0), c.Args().Get(1), opts)
	if err != nil {
		return err
	}
	for _, d := range added {
		fmt.Printf("%s: %s\n", desc.Digest, d.Digest)
	}
	return nil
}

func manifestRemove(c *cli.Context) error {
	if err := needArgs(c, 2, 2, "LIST and the entry's digest (or image)"); err != nil {
		return err
	}
	st, err := openStore(c)
	if err != nil {
		return err
	}
	defer st.Close()
	removed, desc, err := registry.RemoveFromList(c.Context, st, c.Args().Get(0), c.Args().Get(1), connOptions(c))
	if err != nil {
		return err
	}
	fmt.Printf("%s: %s\n", desc.Digest, removed)
	return nil
}

func manifestAnnotate(c *cli.Context) error {
	if err := needArgs(c, 1, 2, "LIST and the entry's digest (or image), or LIST with --index"); err != nil {
		return err
	}
	eo, err := entryOptions(c)
	if err != nil {
		return err
	}
	st, err := openStore(c)
	if err != nil {
		return err
	}
	defer st.Close()
	entry, desc, err := registry.AnnotateList(c.Context, st, c.Args().Get(0), c.Args().Get(1),
		registry.ListAnnotateOptions{Conn: connOptions(c), ListEntryOptions: eo, Index: c.Bool("index")})
	if err != nil {
		return err
	}
	if c.Bool("index") {
		fmt.Println(desc.Digest)
	} else {
		fmt.Printf("%s: %s\n", desc.Digest, entry)
	}
	return nil
}

func manifestInspect(c *cli.Context) error {
	if err := needArgs(c, 1, 1, "one LIST or docker://REF"); err != nil {
		return err
	}
	var raw []byte
	var err error
	if ref, ok := strings.CutPrefix(c.Args().First(), registry.DockerTransport); ok {
		raw, err = registry.InspectRemoteList(c.Context, ref, connOptions(c))
	} else {
		st, oerr := openStore(c)
		if oerr != nil {
			return oerr
		}
		defer st.Close()
		raw, err = registry.InspectList(c.Context, st, c.Args().First())
	}
	if err != nil {
		return err
	}
	// As buildah prints it.
	var b bytes.Buffer
	if err := json.Indent(&b, raw, "", "    "); err != nil {
		return fmt.Errorf("manifest inspect: %w", err)
	}
	fmt.Println(b.String())
	return nil
}

func manifestPush(c *cli.Context) error {
	if err := needArgs(c, 1, 2, "LIST and optionally the destination (e.g. ibuild manifest push app:1 docker://reg.io/app:1)"); err != nil {
		return err
	}
	st, err := openStore(c)
	if err != nil {
		return err
	}
	defer st.Close()
	format := c.String("format")
	if format == "v2s2" {
		format = "docker"
	}
	po := pushOptions(c)
	po.Format, po.Jobs = format, c.Int("jobs")
	list := c.Args().Get(0)
	d, err := registry.PushList(c.Context, st, list, c.Args().Get(1), registry.ListPushOptions{PushOptions: po, All: c.Bool("all")})
	if err != nil {
		return err
	}
	if f := c.String("digestfile"); f != "" {
		if err := os.WriteFile(f, []byte(d.String()), 0o644); err != nil {
			return fmt.Errorf("--digestfile: %w", err)
		}
	}
	if c.Bool("rm") {
		if _, err := registry.RemoveList(c.Context, st, list); err != nil {
			return fmt.Errorf("pushed %s, but --rm: %w", d, err)
		}
	}
	fmt.Println(d)
	return nil
}

func manifestRm(c *cli.Context) error {
	if err := needArgs(c, 1, -1, "at least one LIST"); err != nil {
		return err
	}
	if err := enterUserNamespace(c, builder.IsolationAuto); err != nil {
		return err
	}
	st, err := openStore(c)
	if err != nil {
		return err
	}
	defer st.Close()
	for _, list := range c.Args().Slice() {
		rep, err := registry.RemoveList(c.Context, st, list)
		if err != nil {
			return err
		}
		for _, n := range rep.Untagged {
			fmt.Println("Untagged:", n)
		}
		for _, d := range rep.Deleted {
			fmt.Println("Deleted:", d)
		}
	}
	return nil
}

func manifestExists(c *cli.Context) error {
	if err := needArgs(c, 1, 1, "one LIST"); err != nil {
		return err
	}
	st, err := openStore(c)
	if err != nil {
		return err
	}
	defer st.Close()
	d, err := st.Lookup(c.Context, c.Args().First())
	if errors.Is(err, layers.ErrNotFound) || (err == nil && !d.MediaType.IsIndex()) {
		return cli.Exit("", 1)
	}
	return err
}

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ibuild/ibuild/builder/progress"
)

func imagesCommand() *cli.Command {
	return &cli.Command{
		Name:  "images",
		Usage: "list images in the local store",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "format", Value: "table", Usage: "table or json"},
			&cli.BoolFlag{Name: "all", Aliases: []string{"a"}, Usage: "include untagged images"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only image IDs (each once)"},
			&cli.BoolFlag{Name: "no-trunc", Usage: "print whole image IDs"},
			&cli.StringSliceFlag{Name: "filter", Aliases: []string{"f"}, Usage: "list only images matching: reference=PATTERN (e.g. app:*), label=KEY[=VALUE], dangling=true|false (repeatable)"},
		},
		Action: func(c *cli.Context) error {
			filter, err := parseImageFilters(c.StringSlice("filter"))
			if err != nil {
				return err
			}
			st, err := openStore(c)
			if err != nil {
				return err
			}
			defer st.Close()
			recs, err := st.Images(c.Context)
			if err != nil {
				return err
			}
			type row struct {
				Name      string    `json:"name,omitempty"`
				Digest    string    `json:"digest"`
				ID        string    `json:"id,omitempty"`
				Created   time.Time `json:"created"`
				Size      int64     `json:"size"`
				MediaType string    `json:"mediaType"`
				Platforms []string  `json:"platforms,omitempty"`
			}
			var rows []row
			for _, r := range recs {
				names := r.Names
				if len(names) == 0 {
					if !filter.showUntagged(c.Bool("all")) {
						continue
					}
					names = []string{""}
				}
				if ok, err := filter.keepRecord(c.Context, st, r); err != nil || !ok {
					if err != nil {
						return err
					}
					continue
				}
				for _, n := range names {
					if !filter.keepName(n) {
						continue
					}
					rows = append(rows, row{Name: n, Digest: r.Digest.String(), ID: r.ID.Hex, Created: r.Created,
						Size: r.Size, MediaType: string(r.MediaType), Platforms: r.Platforms})
				}
			}
			if c.Bool("quiet") {
				seen := map[string]bool{}
				for _, r := range rows {
					id := r.ID
					if id == "" {
						id = strings.TrimPrefix(r.Digest, "sha256:")
					}
					if c.Bool("no-trunc") {
						id = "sha256:" + id
					} else {
						id = id[:min(12, len(id))]
					}
					if !seen[id] {
						seen[id] = true
						fmt.Println(id)
					}
				}
				return nil
			}
			switch c.String("format") {
			case "json":
				if rows == nil {
					rows = []row{}
				}
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			case "table", "":
				tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tTAG\tIMAGE ID\tCREATED\tSIZE\tPLATFORMS")
				for _, r := range rows {
					repo, tag := splitName(r.Name)
					id := r.ID
					if id == "" {
						id = strings.TrimPrefix(r.Digest, "sha256:")
					}
					if !c.Bool("no-trunc") {
						id = id[:min(12, len(id))]
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", repo, tag, id, r.Created.Format(time.RFC3339), progress.HumanSize(r.Size), strings.Join(r.Platforms, ","))
				}
				return tw.Flush()
			}
			return fmt.Errorf("--format: want table or json, not %q", c.String("format"))
		},
	}
}

// splitName splits "registry/repo:tag" into repo and tag ("<none>" when
// empty).
func splitName(n string) (string, string) {
	if n == "" {
		return "<none>", "<none>"
	}
	if i := strings.LastIndex(n, "@"); i >= 0 {
		return n[:i], n[i+1:]
	}
	if i := strings.LastIndex(n, ":"); i > strings.LastIndex(n, "/") {
		return n[:i], n[i+1:]
	}
	return n, "<none>"
}

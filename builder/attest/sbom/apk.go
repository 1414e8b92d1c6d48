package sbom

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
)

// apkInstalled is Alpine's installed-package database.
const apkInstalled = "/lib/apk/db/installed"

// catalogApk adds the packages apk records as installed: records are
// separated by blank lines, each line is "X:value" with a one-letter key.
func catalogApk(fsys FS, inv *Inventory) error {
	data, err := fsys.ReadFile(apkInstalled)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("sbom: %s: %w", apkInstalled, err)
	}
	rec := map[byte]string{}
	flush := func() {
		defer clear(rec)
		if rec['P'] == "" || rec['V'] == "" {
			return
		}
		p := Package{Name: rec['P'], Version: rec['V'], Type: Apk, Arch: rec['A'], Source: rec['o'],
			Supplier: rec['m'], License: rec['L'], Location: apkInstalled}
		q := map[string]string{"arch": p.Arch, "distro": inv.Distro.qualifier()}
		if p.Source != "" && p.Source != p.Name {
			q["upstream"] = p.Source
		}
		ns := inv.Distro.ID
		if ns == "" {
			ns = "alpine"
		}
		p.PURL = purl(string(Apk), ns, p.Name, p.Version, q)
		inv.Packages = append(inv.Packages, p)
	}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimRight(line, "\r")
		if line == "" {
			flush()
			continue
		}
		if len(line) >= 2 && line[1] == ':' {
			if _, seen := rec[line[0]]; !seen {
				rec[line[0]] = line[2:]
			}
		}
	}
	flush()
	return nil
}

package sbom

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
)

// dpkgStatus and dpkgStatusDir are where dpkg (and distroless images,
// one file per package) record installed packages.
const (
	dpkgStatus    = "/var/lib/dpkg/status"
	dpkgStatusDir = "/var/lib/dpkg/status.d"
)

// catalogDpkg adds the packages dpkg records as installed.
func catalogDpkg(fsys FS, inv *Inventory) error {
	data, err := fsys.ReadFile(dpkgStatus)
	switch {
	case err == nil:
		addDpkg(string(data), dpkgStatus, true, inv)
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("sbom: %s: %w", dpkgStatus, err)
	}
	ents, err := fsys.ReadDir(dpkgStatusDir)
	if err != nil {
		return nil
	}
	for _, e := range ents {
		if !e.Type().IsRegular() || strings.HasSuffix(e.Name(), ".md5sums") {
			continue
		}
		p := path.Join(dpkgStatusDir, e.Name())
		if data, err := fsys.ReadFile(p); err == nil {
			// Distroless status.d files often have no Status field: each
			// names one installed package.
			addDpkg(string(data), p, false, inv)
		}
	}
	return nil
}

// addDpkg parses dpkg control paragraphs; with needStatus only those whose
// Status says installed count.
func addDpkg(data, location string, needStatus bool, inv *Inventory) {
	for _, para := range ParseDebControl(data) {
		name, version := para["Package"], para["Version"]
		if name == "" || version == "" {
			continue
		}
		if st, ok := para["Status"]; ok || needStatus {
			if !DpkgInstalled(st) {
				continue
			}
		}
		p := Package{
			Name: name, Version: version, Type: Deb, Arch: para["Architecture"],
			Supplier: para["Maintainer"], Location: location,
		}
		if src := para["Source"]; src != "" {
			// "Source: name (version)" when the versions differ.
			p.Source, _, _ = strings.Cut(src, " ")
		}
		q := map[string]string{"arch": p.Arch, "distro": inv.Distro.qualifier()}
		if p.Source != "" && p.Source != p.Name {
			q["upstream"] = p.Source
		}
		ns := inv.Distro.ID
		if ns == "" {
			ns = "debian"
		}
		p.PURL = purl(string(Deb), ns, p.Name, p.Version, q)
		inv.Packages = append(inv.Packages, p)
	}
}

// DpkgInstalled reports whether a dpkg Status field ("install ok
// installed", "hold ok installed") says the package is installed.
func DpkgInstalled(status string) bool {
	f := strings.Fields(status)
	return len(f) == 3 && f[2] == "installed"
}

// ParseDebControl parses Debian control paragraphs (dpkg's status file):
// paragraphs are separated by blank lines, continuation lines start with
// a space or tab and are joined to the field before them.
func ParseDebControl(data string) []map[string]string {
	var out []map[string]string
	cur := map[string]string{}
	last := ""
	flush := func() {
		if len(cur) > 0 {
			out = append(out, cur)
		}
		cur, last = map[string]string{}, ""
	}
	for _, line := range strings.Split(data, "\n") {
		line = strings.TrimRight(line, "\r")
		switch {
		case strings.TrimSpace(line) == "":
			flush()
		case line[0] == ' ' || line[0] == '\t':
			if last != "" {
				cur[last] += "\n" + strings.TrimSpace(line)
			}
		default:
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			last = strings.TrimSpace(k)
			cur[last] = strings.TrimSpace(v)
		}
	}
	flush()
	return out
}

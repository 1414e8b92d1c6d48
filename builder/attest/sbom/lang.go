package sbom

import (
	"bytes"
	"debug/buildinfo"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"sort"
	"strings"
)

// catalogGoBinary adds the modules of the Go binary at host (in-image
// path p): the main module, its dependencies (replacements win) and the
// standard library as "stdlib" at the Go version. Files that are not Go
// binaries are skipped quietly.
func catalogGoBinary(host, p string, inv *Inventory) {
	f, err := os.Open(host)
	if err != nil {
		return
	}
	var magic [4]byte
	_, err = f.ReadAt(magic[:], 0)
	f.Close()
	if err != nil || !bytes.Equal(magic[:], []byte("\x7fELF")) {
		return
	}
	bi, err := buildinfo.ReadFile(host)
	if err != nil {
		return
	}
	add := func(name, version string) {
		if name == "" {
			return
		}
		inv.Packages = append(inv.Packages, Package{Name: name, Version: version, Type: Golang, Location: p,
			PURL: purl(string(Golang), "", name, version, nil)})
	}
	if bi.Main.Path != "" {
		add(bi.Main.Path, bi.Main.Version)
	}
	for _, d := range bi.Deps {
		if d.Replace != nil {
			d = d.Replace
		}
		add(d.Path, d.Version)
	}
	add("stdlib", strings.TrimPrefix(bi.GoVersion, "go"))
}

// catalogNpmLock adds the packages an npm package-lock.json pins.
func catalogNpmLock(fsys FS, p string, inv *Inventory) error {
	data, err := fsys.ReadFile(p)
	if err != nil {
		return nil
	}
	var lock struct {
		Packages map[string]struct {
			Name    string `json:"name"`
			Version string `json:"version"`
			License any    `json:"license"`
			Link    bool   `json:"link"`
		} `json:"packages"`
		Dependencies map[string]json.RawMessage `json:"dependencies"`
	}
	if err := json.Unmarshal(data, &lock); err != nil {
		return fmt.Errorf("%s: not a valid package-lock.json (%v): its packages are missing from the SBOM", p, err)
	}
	add := func(name, version, license string) {
		inv.Packages = append(inv.Packages, Package{Name: name, Version: version, Type: Npm, License: license,
			Location: p, PURL: npmPURL(name, version)})
	}
	if len(lock.Packages) > 0 {
		keys := make([]string, 0, len(lock.Packages))
		for k := range lock.Packages {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			e := lock.Packages[k]
			if k == "" || e.Link || e.Version == "" {
				continue // the project itself, or a workspace link
			}
			name := e.Name
			if name == "" {
				i := strings.LastIndex(k, "node_modules/")
				name = k[i+len("node_modules/"):]
			}
			lic, _ := e.License.(string)
			add(name, e.Version, lic)
		}
		return nil
	}
	// lockfileVersion 1: nested "dependencies".
	var walk func(deps map[string]json.RawMessage, depth int)
	walk = func(deps map[string]json.RawMessage, depth int) {
		if depth > 64 {
			return
		}
		for name, raw := range deps {
			var d struct {
				Version      string                     `json:"version"`
				Dependencies map[string]json.RawMessage `json:"dependencies"`
			}
			if json.Unmarshal(raw, &d) != nil || d.Version == "" {
				continue
			}
			add(name, d.Version, "")
			walk(d.Dependencies, depth+1)
		}
	}
	walk(lock.Dependencies, 0)
	return nil
}

func npmPURL(name, version string) string {
	if scope, n, ok := strings.Cut(name, "/"); ok && strings.HasPrefix(scope, "@") {
		return purl(string(Npm), scope, n, version, nil)
	}
	return purl(string(Npm), "", name, version, nil)
}

// catalogCargoLock adds the crates a Cargo.lock pins: its [[package]]
// tables' name and version.
func catalogCargoLock(fsys FS, p string, inv *Inventory) error {
	data, err := fsys.ReadFile(p)
	if err != nil {
		return nil
	}
	var name, version string
	flush := func() {
		if name != "" && version != "" {
			inv.Packages = append(inv.Packages, Package{Name: name, Version: version, Type: Cargo, Location: p,
				PURL: purl(string(Cargo), "", name, version, nil)})
		}
		name, version = "", ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "[") {
			flush()
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		v = strings.Trim(strings.TrimSpace(v), `"`)
		switch strings.TrimSpace(k) {
		case "name":
			name = v
		case "version":
			version = v
		}
	}
	flush()
	return nil
}

// pythonDist adds the Python distribution installed as the *.dist-info
// directory dir (its METADATA's Name and Version).
func (w *walker) pythonDist(dir string) {
	data, err := w.fsys.ReadFile(path.Join(dir, "METADATA"))
	if err != nil {
		return
	}
	var name, version, license string
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimRight(line, "\r")
		if line == "" {
			break // the headers end at the first blank line
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Name":
			name = v
		case "Version":
			version = v
		case "License-Expression":
			license = v
		}
	}
	if name == "" || version == "" {
		return
	}
	// PyPI names are normalized: lower case, runs of -_. become -.
	norm := strings.ToLower(strings.NewReplacer("_", "-", ".", "-").Replace(name))
	w.inv.Packages = append(w.inv.Packages, Package{Name: name, Version: version, Type: PyPI, License: license,
		Location: dir, PURL: purl(string(PyPI), "", norm, version, nil)})
}

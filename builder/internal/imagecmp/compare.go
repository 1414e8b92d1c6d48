package imagecmp

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Difference is one way two images differ. Path is the file's path
// ("/etc/passwd") for a file-tree difference and "" for a config one;
// Field names what differs ("mode", "config.Env", "platform"); A and B
// are the two sides' values, "(absent)" where a path is missing.
type Difference struct {
	Path  string
	Field string
	A, B  string
}

func (d Difference) String() string {
	if d.Path == "" {
		return fmt.Sprintf("%s: %s != %s", d.Field, d.A, d.B)
	}
	return fmt.Sprintf("%s: %s: %s != %s", d.Path, d.Field, d.A, d.B)
}

// Absent is the value of the missing side of a path only one tree has.
const Absent = "(absent)"

// Compare flattens both images and compares their trees and configs.
func Compare(a, b v1.Image) ([]Difference, error) {
	ta, err := Flatten(a)
	if err != nil {
		return nil, fmt.Errorf("first image: %w", err)
	}
	tb, err := Flatten(b)
	if err != nil {
		return nil, fmt.Errorf("second image: %w", err)
	}
	ca, err := a.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("first image config: %w", err)
	}
	cb, err := b.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("second image config: %w", err)
	}
	diffs, err := CompareConfigs(ca, cb)
	if err != nil {
		return nil, err
	}
	return append(diffs, CompareTrees(ta, tb)...), nil
}

// CompareTrees lists the differences between two flattened trees, in path
// order.
func CompareTrees(a, b *Tree) []Difference {
	seen := map[string]bool{}
	var paths []string
	for _, t := range []*Tree{a, b} {
		for p := range t.files {
			if !seen[p] {
				seen[p] = true
				paths = append(paths, p)
			}
		}
	}
	sort.Strings(paths)
	var out []Difference
	for _, p := range paths {
		na, nb := a.files[p], b.files[p]
		shown := "/" + p
		if na == nil || nb == nil {
			out = append(out, Difference{Path: shown, Field: "exists", A: describe(na), B: describe(nb)})
			continue
		}
		add := func(field string, va, vb any) {
			sa, sb := fmt.Sprint(va), fmt.Sprint(vb)
			if sa != sb {
				out = append(out, Difference{Path: shown, Field: field, A: sa, B: sb})
			}
		}
		if na.Kind != nb.Kind {
			add("type", na.Kind, nb.Kind)
			continue
		}
		add("mode", fmt.Sprintf("%04o", na.Mode), fmt.Sprintf("%04o", nb.Mode))
		add("uid", na.UID, nb.UID)
		add("gid", na.GID, nb.GID)
		switch na.Kind {
		case Regular:
			add("size", na.Size, nb.Size)
			add("digest", na.Digest, nb.Digest)
			add("hard links", strings.Join(a.Links(p), ","), strings.Join(b.Links(p), ","))
		case Symlink:
			add("target", na.Target, nb.Target)
		case CharDevice, BlockDevice:
			add("device", fmt.Sprintf("%d:%d", na.Major, na.Minor), fmt.Sprintf("%d:%d", nb.Major, nb.Minor))
		}
	}
	return out
}

func describe(n *Inode) string {
	if n == nil {
		return Absent
	}
	switch n.Kind {
	case Regular:
		return fmt.Sprintf("file %04o %d:%d %d bytes", n.Mode, n.UID, n.GID, n.Size)
	case Symlink:
		return fmt.Sprintf("symlink -> %s", n.Target)
	}
	return fmt.Sprintf("%s %04o %d:%d", n.Kind, n.Mode, n.UID, n.GID)
}

// configFile is the part of an OCI/Docker image config that is compared.
// It is decoded here rather than through v1.ConfigFile, whose health
// check has no start interval.
type configFile struct {
	OS           string        `json:"os"`
	Architecture string        `json:"architecture"`
	Variant      string        `json:"variant"`
	Config       runtimeConfig `json:"config"`
}

type runtimeConfig struct {
	User         string              `json:"User"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts"`
	Env          []string            `json:"Env"`
	Entrypoint   []string            `json:"Entrypoint"`
	Cmd          []string            `json:"Cmd"`
	Volumes      map[string]struct{} `json:"Volumes"`
	WorkingDir   string              `json:"WorkingDir"`
	Labels       map[string]string   `json:"Labels"`
	StopSignal   string              `json:"StopSignal"`
	Healthcheck  *healthConfig       `json:"Healthcheck"`
	OnBuild      []string            `json:"OnBuild"`
	Shell        []string            `json:"Shell"`
}

type healthConfig struct {
	Test          []string      `json:"Test"`
	Interval      time.Duration `json:"Interval"`
	Timeout       time.Duration `json:"Timeout"`
	StartPeriod   time.Duration `json:"StartPeriod"`
	StartInterval time.Duration `json:"StartInterval"`
	Retries       int           `json:"Retries"`
}

// CompareConfigs compares two raw image config files.
func CompareConfigs(a, b []byte) ([]Difference, error) {
	var ca, cb configFile
	if err := json.Unmarshal(a, &ca); err != nil {
		return nil, fmt.Errorf("first image config: %w", err)
	}
	if err := json.Unmarshal(b, &cb); err != nil {
		return nil, fmt.Errorf("second image config: %w", err)
	}
	var out []Difference
	add := func(field, va, vb string) {
		if va != vb {
			out = append(out, Difference{Field: field, A: va, B: vb})
		}
	}
	add("platform", platform(ca), platform(cb))
	x, y := ca.Config, cb.Config
	add("config.Env", list(set(x.Env)), list(set(y.Env)))
	add("config.Cmd", list(x.Cmd), list(y.Cmd))
	add("config.Entrypoint", list(x.Entrypoint), list(y.Entrypoint))
	add("config.WorkingDir", workdir(x.WorkingDir), workdir(y.WorkingDir))
	add("config.User", strconv.Quote(x.User), strconv.Quote(y.User))
	add("config.ExposedPorts", keys(x.ExposedPorts), keys(y.ExposedPorts))
	add("config.Volumes", keys(x.Volumes), keys(y.Volumes))
	add("config.Labels", labels(x.Labels), labels(y.Labels))
	add("config.StopSignal", strconv.Quote(x.StopSignal), strconv.Quote(y.StopSignal))
	add("config.Healthcheck", health(x.Healthcheck), health(y.Healthcheck))
	add("config.OnBuild", list(x.OnBuild), list(y.OnBuild))
	add("config.Shell", list(x.Shell), list(y.Shell))
	return out, nil
}

func platform(c configFile) string {
	s := c.OS + "/" + c.Architecture
	if c.Variant != "" {
		s += "/" + c.Variant
	}
	return s
}

// list renders a string list; nil and empty are the same.
func list(l []string) string {
	b, _ := json.Marshal(append([]string{}, l...))
	return string(b)
}

func set(l []string) []string {
	s := append([]string(nil), l...)
	sort.Strings(s)
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

func keys[V any](m map[string]V) string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return list(ks)
}

func labels(m map[string]string) string {
	if len(m) == 0 {
		return "{}"
	}
	b, _ := json.Marshal(m) // map keys are sorted
	return string(b)
}

func workdir(w string) string {
	if w == "/" {
		w = ""
	}
	return strconv.Quote(w)
}

func health(h *healthConfig) string {
	if h == nil {
		return "none"
	}
	var zero healthConfig
	if reflect.DeepEqual(*h, zero) {
		return "none"
	}
	return fmt.Sprintf("test=%s interval=%s timeout=%s start-period=%s start-interval=%s retries=%d",
		list(h.Test), h.Interval, h.Timeout, h.StartPeriod, h.StartInterval, h.Retries)
}

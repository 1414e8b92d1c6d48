package dockerfile

import (
	"fmt"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// MountExtras are the options of one RUN --mount flag that buildah accepts
// and BuildKit's parser refuses: z, Z, U and relabel=shared|private. Parse
// takes them out of the flag before BuildKit's parser reads it and keeps
// them here; the instruction's text (history, messages) still shows them.
type MountExtras struct {
	// Relabel is the SELinux relabeling asked for: "shared" (z or
	// relabel=shared), "private" (Z or relabel=private) or "".
	Relabel string
	// RelabelOption is the option that asked for it, as written, for
	// messages ("z", "Z" or "relabel=...").
	RelabelOption string
	// Chown (U) asks for the mount's source, as the step sees it, to be
	// owned by the step's user and group.
	Chown bool
}

// Empty reports whether no buildah option was given.
func (e MountExtras) Empty() bool { return e.Relabel == "" && !e.Chown }

// String lists the options as buildah spells them, for cache keys.
func (e MountExtras) String() string {
	var o []string
	if e.RelabelOption != "" {
		o = append(o, e.RelabelOption)
	}
	if e.Chown {
		o = append(o, "U")
	}
	return strings.Join(o, ",")
}

// RunMountExtras returns the buildah options of c's --mount flags, one
// entry per flag in order (as instructions.GetMounts lists the mounts), or
// nil when none has any.
func (df *Dockerfile) RunMountExtras(c *instructions.RunCommand) []MountExtras {
	return df.mountExtras[c]
}

// takeBuildahMountOptions removes buildah's own options from the --mount
// flags of the RUN node n and returns them per flag (nil when there are
// none).
func takeBuildahMountOptions(n *parser.Node) ([]MountExtras, error) {
	if !strings.EqualFold(n.Value, "run") {
		return nil, nil
	}
	var out []MountExtras
	found := false
	for i, f := range n.Flags {
		value, ok := strings.CutPrefix(f, "--mount=")
		if !ok {
			continue
		}
		kept, extras, err := splitBuildahMountOptions(value)
		if err != nil {
			return nil, fmt.Errorf("--mount=%s: %w", value, err)
		}
		if !extras.Empty() {
			n.Flags[i] = "--mount=" + kept
			found = true
		}
		out = append(out, extras)
	}
	if !found {
		return nil, nil
	}
	return out, nil
}

// splitBuildahMountOptions takes buildah's options out of one --mount
// value, a comma-separated list whose fields may be double-quoted (CSV,
// as BuildKit reads it). The other fields are kept exactly as written.
func splitBuildahMountOptions(value string) (string, MountExtras, error) {
	var e MountExtras
	var kept []string
	relabelGiven := false
	relabel := func(option, mode string) error {
		if e.Relabel != "" && e.Relabel != mode {
			return fmt.Errorf("options %s and %s ask for different relabeling", e.RelabelOption, option)
		}
		if e.Relabel == "" {
			e.RelabelOption, e.Relabel = option, mode
		}
		return nil
	}
	for _, field := range splitCSVRaw(value) {
		key, v, hasValue := strings.Cut(field, "=")
		switch key {
		case "z", "Z", "U":
			if hasValue {
				return "", e, fmt.Errorf("option %s takes no value (buildah's %s: %s)", key, key, buildahOptionMeaning(key))
			}
			if key == "U" {
				e.Chown = true
				continue
			}
			if err := relabel(key, map[string]string{"z": "shared", "Z": "private"}[key]); err != nil {
				return "", e, err
			}
		case "relabel":
			if v != "shared" && v != "private" {
				return "", e, fmt.Errorf("relabel=%s: want relabel=shared or relabel=private", v)
			}
			if relabelGiven {
				return "", e, fmt.Errorf("relabel is given more than once")
			}
			relabelGiven = true
			if err := relabel(field, v); err != nil {
				return "", e, err
			}
		default:
			kept = append(kept, field)
		}
	}
	return strings.Join(kept, ","), e, nil
}

func buildahOptionMeaning(key string) string {
	switch key {
	case "z":
		return "relabel the source as shared content"
	case "Z":
		return "relabel the source as private content"
	}
	return "make the source owned by the step's user"
}

// splitCSVRaw splits s at the commas that are not inside a double-quoted
// field, keeping every field exactly as written (quotes included).
func splitCSVRaw(s string) []string {
	var fields []string
	start, inQuotes := 0, false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' && inQuotes:
			if i+1 < len(s) && s[i+1] == '"' {
				i++ // an escaped quote
				continue
			}
			inQuotes = false
		case c == '"' && i == start:
			inQuotes = true
		case c == ',' && !inQuotes:
			fields = append(fields, s[start:i])
			start = i + 1
		}
	}
	return append(fields, s[start:])
}

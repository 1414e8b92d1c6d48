package builder

import (
	"fmt"
	"strings"

	"github.com/containerd/platforms"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// HostPlatform is the platform ibuild runs on, normalized as
// containerd/platforms does (arm64 has no variant, arm v7 by default).
func HostPlatform() v1.Platform {
	p := platforms.Normalize(platforms.DefaultSpec())
	return v1.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}
}

// ParsePlatform parses "os/arch[/variant]" (or "arch", or "local") and
// normalizes it as containerd/platforms does (aarch64 -> arm64, x86_64 ->
// amd64, arm64/v8 -> arm64, arm -> arm/v7), as docker writes platforms.
func ParsePlatform(s string) (v1.Platform, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "local" {
		return HostPlatform(), nil
	}
	p, err := platforms.Parse(s)
	if err != nil {
		return v1.Platform{}, fmt.Errorf("invalid platform %q: %w", s, err)
	}
	p = platforms.Normalize(p)
	return v1.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}, nil
}

// ParsePlatforms parses a comma-separated --platform list.
func ParsePlatforms(s string) ([]v1.Platform, error) {
	var out []v1.Platform
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		p, err := ParsePlatform(part)
		if err != nil {
			return nil, err
		}
		if k := PlatformString(p); !seen[k] {
			seen[k] = true
			out = append(out, p)
		}
	}
	return out, nil
}

// PlatformString formats p as "os/arch[/variant]", leaving out the default
// variant of arm64 (v8) as docker does in TARGETPLATFORM.
func PlatformString(p v1.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" && !(p.Architecture == "arm64" && p.Variant == "v8") {
		s += "/" + p.Variant
	}
	return s
}

// platformArgs are the automatic platform ARGs with docker's values.
func platformArgs(buildP, targetP v1.Platform) map[string]string {
	variant := func(p v1.Platform) string {
		if p.Architecture == "arm64" && p.Variant == "v8" {
			return ""
		}
		return p.Variant
	}
	return map[string]string{
		"BUILDPLATFORM":  PlatformString(buildP),
		"BUILDOS":        buildP.OS,
		"BUILDARCH":      buildP.Architecture,
		"BUILDVARIANT":   variant(buildP),
		"TARGETPLATFORM": PlatformString(targetP),
		"TARGETOS":       targetP.OS,
		"TARGETARCH":     targetP.Architecture,
		"TARGETVARIANT":  variant(targetP),
	}
}

// indexEntry is an image added to a multi-platform index. Its descriptor
// has no artifactType: go-containerregistry would copy the config's media
// type there, which docker and buildx never write (and which a docker
// manifest list has no field for).
type indexEntry struct{ v1.Image }

// ArtifactType is empty: the entry is an image, not an artifact.
func (indexEntry) ArtifactType() (string, error) { return "", nil }

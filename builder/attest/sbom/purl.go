package sbom

import (
	"sort"
	"strings"
)

// purl formats a package URL: pkg:TYPE/NAMESPACE/NAME@VERSION?QUALIFIERS,
// each part percent-encoded as the purl specification asks (namespace
// segments one by one; qualifiers sorted by key, empty ones left out).
func purl(typ, namespace, name, version string, qualifiers map[string]string) string {
	var b strings.Builder
	b.WriteString("pkg:")
	b.WriteString(typ)
	b.WriteByte('/')
	if namespace != "" {
		for _, seg := range strings.Split(namespace, "/") {
			b.WriteString(purlEscape(seg))
			b.WriteByte('/')
		}
	}
	if typ == "golang" {
		// Go module paths keep their slashes as namespace segments.
		segs := strings.Split(name, "/")
		for i, s := range segs {
			segs[i] = purlEscape(s)
		}
		b.WriteString(strings.Join(segs, "/"))
	} else {
		b.WriteString(purlEscape(name))
	}
	if version != "" {
		b.WriteByte('@')
		b.WriteString(purlEscape(version))
	}
	keys := make([]string, 0, len(qualifiers))
	for k, v := range qualifiers {
		if v != "" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for i, k := range keys {
		if i == 0 {
			b.WriteByte('?')
		} else {
			b.WriteByte('&')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(purlEscape(qualifiers[k]))
	}
	return b.String()
}

// purlEscape percent-encodes everything but unreserved characters
// (A-Z a-z 0-9 - . _ ~), as the purl specification asks.
func purlEscape(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '.', c == '_', c == '~':
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}

package cachekey

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
)

// History is what the last build of each step of a stage (a stage of a
// Dockerfile in a context, for a platform) had as key inputs, by step
// number, as digests (Key.Digests), so that a miss can say which input
// changed. A stage's history is one file, read once and written once a
// build: a file a step cost a file creation a step.
type History struct {
	Steps map[int]map[string]string `json:"steps"`
}

// LoadHistory reads the history file p; a missing or unreadable one gives
// an empty history.
func LoadHistory(p string) *History {
	h := &History{}
	if b, err := os.ReadFile(p); err == nil {
		_ = json.Unmarshal(b, h)
	}
	if h.Steps == nil {
		h.Steps = map[int]map[string]string{}
	}
	return h
}

// HistoryName is the file name of the history of stage number index of
// the Dockerfile at dockerfile, built in the context contextID for
// platform.
func HistoryName(contextID, dockerfile, platform string, index int) string {
	id := sha256.Sum256([]byte(fmt.Sprintf("stage\x00%s\x00%s\x00%s\x00%d", contextID, dockerfile, platform, index)))
	return hex.EncodeToString(id[:16]) + ".json"
}

// ExplainMiss names the inputs that differ between two builds of a step,
// given as History digests.
// The first step's parent is the stage's start (base image and options),
// whose own change fromReason describes.
func ExplainMiss(old, cur map[string]string, first bool, fromReason string) string {
	if old["parent"] != cur["parent"] {
		if first {
			if fromReason != "" {
				return fromReason
			}
			return "the base image or build options changed"
		}
		return "an earlier step changed"
	}
	if old["instruction"] != cur["instruction"] || old["run-flags"] != cur["run-flags"] {
		return "the instruction changed"
	}
	var args, changed, added, removed, other []string
	for n, v := range cur {
		ov, ok := old[n]
		switch {
		case ok && ov == v:
			continue
		case strings.HasPrefix(n, "arg:"):
			args = append(args, strings.TrimPrefix(n, "arg:"))
		case !ok && isSourceInput(n):
			added = append(added, sourceName(n))
		case isSourceInput(n):
			changed = append(changed, sourceName(n))
		default:
			other = append(other, n)
		}
	}
	for n := range old {
		if _, ok := cur[n]; !ok {
			if strings.HasPrefix(n, "arg:") {
				args = append(args, strings.TrimPrefix(n, "arg:"))
			} else if isSourceInput(n) {
				removed = append(removed, sourceName(n))
			}
		}
	}
	var parts []string
	if len(args) > 0 {
		sort.Strings(args)
		parts = append(parts, "build arg "+strings.Join(args, ", ")+" changed")
	}
	for _, g := range []struct {
		what  string
		names []string
	}{{"changed", changed}, {"added", added}, {"removed", removed}} {
		if len(g.names) > 0 {
			parts = append(parts, "source "+g.what+": "+listSome(g.names))
		}
	}
	for _, n := range other {
		switch {
		case n == "from" || strings.HasSuffix(n, ":from"):
			parts = append(parts, "the --from source changed")
		case strings.HasPrefix(n, "url:"):
			parts = append(parts, "the download "+strings.TrimPrefix(n, "url:")+" changed")
		}
	}
	if len(parts) == 0 {
		return "no cache record for these inputs (pruned, or the last build of this step failed)"
	}
	return strings.Join(parts, "; ")
}

func isSourceInput(n string) bool {
	return strings.HasPrefix(n, "src:") || (strings.HasPrefix(n, "mount") && !strings.HasSuffix(n, ":from"))
}

func sourceName(n string) string {
	_, after, _ := strings.Cut(n, ":")
	return strings.TrimPrefix(after, "/")
}

// listSome lists up to three names and how many more there are.
func listSome(names []string) string {
	sort.Strings(names)
	if len(names) <= 3 {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s (and %d more)", strings.Join(names[:3], ", "), len(names)-3)
}

// FromMissReason explains why a stage's start key differs from the last
// build's (the base image digest, or the build options).
func FromMissReason(old, cur map[string]string, baseDesc string) string {
	switch {
	case old == nil:
		return ""
	case old["base"] != cur["base"]:
		return "the base image changed (now " + baseDesc + ")"
	case old["platform"] != cur["platform"]:
		return "the platform changed"
	case old["options"] != cur["options"]:
		return "the build options changed (compression, format or SOURCE_DATE_EPOCH)"
	case old["executor"] != cur["executor"]:
		return "this version of ibuild builds differently (the cache was made by an older one)"
	case old["records"] != cur["records"]:
		return "the build cache format changed (records of an older ibuild are not used)"
	}
	return ""
}

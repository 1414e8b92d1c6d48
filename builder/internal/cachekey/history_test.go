package cachekey

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// TestExplainMiss names what changed between two builds of a step.
func TestExplainMiss(t *testing.T) {
	base := map[string]string{"parent": "p", "instruction": "i", "arg:A": "1", "src:/a": "x", "src:/b": "y", "from": "f"}
	with := func(changes map[string]string, drop ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for k, v := range changes {
			m[k] = v
		}
		for _, k := range drop {
			delete(m, k)
		}
		return m
	}
	for _, tc := range []struct {
		name       string
		cur        map[string]string
		first      bool
		fromReason string
		want       string
	}{
		{"same", with(nil), false, "", "no cache record for these inputs (pruned, or the last build of this step failed)"},
		{"parent", with(map[string]string{"parent": "q"}), false, "", "an earlier step changed"},
		{"first-parent", with(map[string]string{"parent": "q"}), true, "", "the base image or build options changed"},
		{"first-parent-reason", with(map[string]string{"parent": "q"}), true, "the platform changed", "the platform changed"},
		{"instruction", with(map[string]string{"instruction": "j", "src:/a": "z"}), false, "", "the instruction changed"},
		{"run-flags", with(map[string]string{"run-flags": "n"}), false, "", "the instruction changed"},
		{"arg", with(map[string]string{"arg:A": "2", "arg:B": "1"}), false, "", "build arg A, B changed"},
		{"arg-removed", with(nil, "arg:A"), false, "", "build arg A changed"},
		{"sources", with(map[string]string{"src:/a": "z", "src:/c": "n"}, "src:/b"), false, "",
			"source changed: a; source added: c; source removed: b"},
		{"many-sources", with(map[string]string{"src:/1": "", "src:/2": "", "src:/3": "", "src:/4": "", "src:/5": ""}), false, "",
			"source added: 1, 2, 3 (and 2 more)"},
		{"mount-source", with(map[string]string{"mount0:/d/x": "z"}), false, "", "source added: d/x"},
		{"from", with(map[string]string{"from": "g", "mount1:from": "h"}), false, "", "the --from source changed; the --from source changed"},
		{"url", with(map[string]string{"url:http://h/x": "new"}), false, "", "the download http://h/x changed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ExplainMiss(base, tc.cur, tc.first, tc.fromReason); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestFromMissReason explains a changed stage start.
func TestFromMissReason(t *testing.T) {
	old := map[string]string{"base": "b", "platform": "p", "options": "o", "executor": "e", "records": "r"}
	for _, tc := range []struct {
		change, want string
	}{
		{"", ""},
		{"base", "the base image changed (now sha256:new)"},
		{"platform", "the platform changed"},
		{"options", "the build options changed (compression, format or SOURCE_DATE_EPOCH)"},
		{"executor", "this version of ibuild builds differently (the cache was made by an older one)"},
		{"records", "the build cache format changed (records of an older ibuild are not used)"},
	} {
		cur := map[string]string{}
		for k, v := range old {
			cur[k] = v
		}
		if tc.change != "" {
			cur[tc.change] = "changed"
		}
		if got := FromMissReason(old, cur, "sha256:new"); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.change, got, tc.want)
		}
	}
	if got := FromMissReason(nil, old, "x"); got != "" {
		t.Errorf("no history: %q", got)
	}
}

// TestHistory pins the history file's name and format, and reads back
// what was written; a missing or corrupt file is an empty history.
func TestHistory(t *testing.T) {
	if got, want := HistoryName("/ctx", "/ctx/Dockerfile", "linux/amd64", 2), "a0217f70e6371d8e8aa3ef9281dcee29.json"; got != want {
		t.Errorf("HistoryName = %s, want %s: every stage's history would be lost", got, want)
	}
	dir := t.TempDir()
	k := New()
	k.Add("parent", "p")
	k.Add("arg:SECRETISH", "value")
	h := &History{Steps: map[int]map[string]string{2: k.Digests()}}
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"steps":{"2":{"arg:SECRETISH":"cd42404d52ad55ccfa9aca4a","parent":"148de9c5a7a44d19e56cd9ae"}}}`; string(b) != want {
		t.Errorf("history file:\n%s\nwant:\n%s", b, want)
	}
	p := filepath.Join(dir, "h.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := LoadHistory(p); !reflect.DeepEqual(got, h) {
		t.Errorf("read back %v, want %v", got, h)
	}
	for _, bad := range []string{filepath.Join(dir, "missing.json"), p + ".corrupt"} {
		_ = os.WriteFile(p+".corrupt", []byte("{"), 0o644)
		if got := LoadHistory(bad); got.Steps == nil || len(got.Steps) != 0 {
			t.Errorf("%s: %v", bad, got)
		}
	}
}

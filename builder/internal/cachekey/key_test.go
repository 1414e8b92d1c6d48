package cachekey

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// checkGolden compares got with the golden file p (rewritten with
// -update).
func checkGolden(t *testing.T, p, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs: keys stored in every user's cache would change; if that is meant, bump Version and run with -update\nwant:\n%s\ngot:\n%s", p, want, got)
	}
}

// TestKeySumGolden pins how a key's inputs become its digest (the golden
// file was made by the code before it moved to this package).
func TestKeySumGolden(t *testing.T) {
	var sb strings.Builder
	for _, tc := range []struct {
		name   string
		inputs map[string]string
	}{
		{"empty", nil},
		{"one", map[string]string{"parent": "sha256:00"}},
		{"empty-value", map[string]string{"arg:X": ""}},
		{"separators-in-names-and-values", map[string]string{"a=b": "c:d\ne", "a": "=b:c", "src:/x y": "f 644 abc"}},
		{"unicode", map[string]string{"src:/ünï": "f 644 ✓"}},
		{"order-independent", map[string]string{"z": "1", "a": "2", "m": "3"}},
		{"large", map[string]string{"big": strings.Repeat("0123456789", 5000), "small": "x"}},
		{"many", func() map[string]string {
			m := map[string]string{}
			for i := range 3000 {
				m[fmt.Sprintf("src:/dir/file%04d", i)] = fmt.Sprintf("f 644 %064x", i)
			}
			return m
		}()},
	} {
		k := New()
		for n, v := range tc.inputs {
			k.Add(n, v)
		}
		fmt.Fprintf(&sb, "%s %s\n", tc.name, k.Sum())
	}
	checkGolden(t, filepath.Join("testdata", "sum.golden"), sb.String())
}

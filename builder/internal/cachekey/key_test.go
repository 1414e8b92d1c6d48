package builder

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ibuild/ibuild/builder/internal/cachekey"
)

// TestKeySumGolden pins how a key's inputs become its digest.
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
		k := cachekey.New()
		for n, v := range tc.inputs {
			k.Add(n, v)
		}
		fmt.Fprintf(&sb, "%s %s\n", tc.name, k.Sum())
	}
	checkGolden(t, filepath.Join("testdata", "cachekey", "sum.golden"), sb.String())
}

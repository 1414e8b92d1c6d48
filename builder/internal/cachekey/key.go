package cachekey

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Version is the first line of every key's digested text: the format of
// keys. Changing it (or the way inputs are written) invalidates every
// cache.
const Version = "ibuild-cache-v1"

// ExecutorRevision names the executor's semantics in every stage's first
// key: it changes whenever the same instruction on the same inputs gives
// another result than before (a config default, a step's environment), so
// that records made by an older ibuild are not taken for the new
// behaviour.
const ExecutorRevision = "2"

// Key accumulates the inputs of a cache key. Each input is named, so a
// miss can say which one changed (see ExplainMiss).
type Key struct {
	inputs map[string]string
}

// New returns a key without inputs.
func New() *Key { return &Key{inputs: map[string]string{}} }

// Add sets the input name to value.
func (k *Key) Add(name, value string) { k.inputs[name] = value }

// AddJSON sets the input name to v's JSON encoding.
func (k *Key) AddJSON(name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("cache key: %w", err)
	}
	k.inputs[name] = string(b)
	return nil
}

// Get returns the input name ("" when unset).
func (k *Key) Get(name string) string { return k.inputs[name] }

// Inputs returns the inputs by name; the map is the key's own, not to be
// changed.
func (k *Key) Inputs() map[string]string { return k.inputs }

// Sum is the key: SHA-256 over Version and the sorted, length-prefixed
// inputs.
func (k *Key) Sum() v1.Hash {
	names := make([]string, 0, len(k.inputs))
	for n := range k.inputs {
		names = append(names, n)
	}
	sort.Strings(names)
	h := sha256.New()
	buf := []byte(Version + "\n")
	for _, n := range names {
		v := k.inputs[n]
		buf = strconv.AppendInt(buf, int64(len(n)), 10)
		buf = append(buf, ':')
		buf = append(buf, n...)
		buf = append(buf, '=')
		buf = strconv.AppendInt(buf, int64(len(v)), 10)
		buf = append(buf, ':')
		buf = append(buf, v...)
		buf = append(buf, '\n')
		if len(buf) > 32<<10 {
			h.Write(buf)
			buf = buf[:0]
		}
	}
	h.Write(buf)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

// Digests returns each input's value as a short digest, for a History:
// build args may hold things that should not sit in plain text in the
// store.
func (k *Key) Digests() map[string]string {
	out := make(map[string]string, len(k.inputs))
	for n, v := range k.inputs {
		sum := sha256.Sum256([]byte(v))
		out[n] = hex.EncodeToString(sum[:12])
	}
	return out
}

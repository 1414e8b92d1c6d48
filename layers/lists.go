package layers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Manifest lists. A list (buildah's name for an image index that the user
// edits) is stored as every index is: a named index.json entry pointing at
// an index blob. Its entries are image manifests. A stored entry keeps its
// manifest, config and layers alive, as an index's children always do. An
// entry whose image lives only in a registry has just its manifest and
// config stored (a few KB), no layer; the repositories its blobs can be
// fetched or mounted from are recorded as its sources, in
// Root/sources/<manifest hex>.json, which live as long as the manifest.

// UpdateList replaces the list that name names with what fn makes of it,
// under an exclusive lock on Root/lists.lock, so that concurrent edits of
// lists (by any number of processes) never lose one. fn receives the
// current index (a copy; nil when name names no index) and the descriptor
// name points at (nil when name names nothing: fn may then create the
// list). The index fn returns is stored as a blob and name is pointed at
// it; its descriptor is returned. fn's error aborts the update. The index's
// media type must be an index type; a nil Manifests is written as [].
func (s *Store) UpdateList(ctx context.Context, name string, fn func(cur *v1.IndexManifest, named *v1.Descriptor) (*v1.IndexManifest, error)) (v1.Descriptor, error) {
	if strings.HasPrefix(name, "sha256:") {
		return v1.Descriptor{}, fmt.Errorf("list %s: a list is edited by its name, not by a digest", name)
	}
	n, err := NormalizeName(name)
	if err != nil {
		return v1.Descriptor{}, err
	}
	unlockList, err := LockFile(ctx, filepath.Join(s.root, "lists.lock"), true)
	if err != nil {
		return v1.Descriptor{}, err
	}
	defer unlockList()
	unlock, err := s.Lock(ctx, false)
	if err != nil {
		return v1.Descriptor{}, err
	}
	defer unlock()
	var named *v1.Descriptor
	var cur *v1.IndexManifest
	if d, byName, err := s.lookup(n); err == nil && byName == n {
		named = &d
		if d.MediaType.IsIndex() {
			raw, err := s.readManifestBlob(d.Digest)
			if err != nil {
				return v1.Descriptor{}, fmt.Errorf("list %s: %w", n, err)
			}
			if err := json.Unmarshal(raw, &cur); err != nil {
				return v1.Descriptor{}, fmt.Errorf("list %s: index %s: %w", n, d.Digest, err)
			}
		}
	} else if err != nil && !errors.Is(err, ErrNotFound) {
		return v1.Descriptor{}, err
	}
	next, err := fn(cur, named)
	if err != nil {
		return v1.Descriptor{}, err
	}
	if next == nil || !next.MediaType.IsIndex() {
		return v1.Descriptor{}, fmt.Errorf("list %s: not an index", n)
	}
	if next.Manifests == nil {
		next.Manifests = []v1.Descriptor{}
	}
	if next.SchemaVersion == 0 {
		next.SchemaVersion = 2
	}
	raw, err := json.Marshal(next)
	if err != nil {
		return v1.Descriptor{}, err
	}
	dg, size, err := s.blobs.Put(ctx, bytes.NewReader(raw), nil)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("list %s: %w", n, err)
	}
	desc := v1.Descriptor{MediaType: next.MediaType, Size: size, Digest: dg}
	if err := s.Tag(ctx, n, desc); err != nil {
		return v1.Descriptor{}, err
	}
	return desc, nil
}

// sourcesFile is the record of where a manifest can be fetched from.
type sourcesFile struct {
	Repositories []string `json:"repositories"`
}

// maxSources bounds the repositories recorded for one manifest.
const maxSources = 64

// AddSources records repos ("registry/repository", such as
// "reg.io/team/app") as repositories the manifest h and the blobs it
// references can be fetched or mounted from, in addition to those already
// recorded. The record lives as long as h is stored: Prune and Remove
// delete it with the manifest.
func (s *Store) AddSources(ctx context.Context, h v1.Hash, repos ...string) error {
	if !validHash(h) {
		return fmt.Errorf("add sources: invalid digest %q", h)
	}
	for _, r := range repos {
		if r == "" || len(r) > 512 || strings.IndexFunc(r, func(c rune) bool { return unicode.IsSpace(c) || unicode.IsControl(c) }) >= 0 {
			return fmt.Errorf("add sources %s: invalid repository %q", h, r)
		}
	}
	unlock, err := LockFile(ctx, filepath.Join(s.root, "sources.lock"), true)
	if err != nil {
		return err
	}
	defer unlock()
	have, err := s.Sources(h)
	if err != nil {
		return err
	}
	all := append(have, repos...)
	slices.Sort(all)
	all = slices.Compact(all)
	if len(all) > maxSources {
		return fmt.Errorf("add sources %s: more than %d repositories", h, maxSources)
	}
	if slices.Equal(all, have) {
		return touchNow(s.sourcesPath(h))
	}
	b, err := json.Marshal(sourcesFile{Repositories: all})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(s.root, "sources"), 0o755); err != nil {
		return fmt.Errorf("add sources %s: %w", h, err)
	}
	if err := s.writeAtomic(s.sourcesPath(h), b); err != nil {
		return fmt.Errorf("add sources %s: %w", h, err)
	}
	return nil
}

// Sources returns the repositories recorded for the manifest h (see
// AddSources), sorted; none when there is no record.
func (s *Store) Sources(h v1.Hash) ([]string, error) {
	if !validHash(h) {
		return nil, fmt.Errorf("sources: invalid digest %q", h)
	}
	b, err := os.ReadFile(s.sourcesPath(h))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("sources %s: %w", h, err)
	}
	var f sourcesFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("sources %s: %s: %w", h, s.sourcesPath(h), err)
	}
	return f.Repositories, nil
}

func (s *Store) sourcesPath(h v1.Hash) string {
	return filepath.Join(s.root, "sources", h.Hex+".json")
}

// pruneSources deletes the source records of manifests that are not live,
// once the record is older than cutoff (as blobs are kept when fresh).
func (s *Store) pruneSources(live *marks, cutoff time.Time) error {
	dir := filepath.Join(s.root, "sources")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("prune sources: %w", err)
	}
	for _, e := range ents {
		hexName, ok := strings.CutSuffix(e.Name(), ".json")
		h := v1.Hash{Algorithm: "sha256", Hex: hexName}
		if !ok || !validHash(h) || live.blobs[h] {
			continue
		}
		fi, err := e.Info()
		if err != nil || !fi.ModTime().Before(cutoff) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("prune sources: %w", err)
		}
	}
	return nil
}

// dropSources deletes the source records of deleted manifests.
func (s *Store) dropSources(deleted []v1.Hash) {
	for _, h := range deleted {
		os.Remove(s.sourcesPath(h))
	}
}

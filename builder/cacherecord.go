package builder

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/layers"
)

// cacheRecordVersion names the format of the step records this builder
// writes (the Config of a layers.CacheRecord). It is an input of every
// stage's first cache key (fromKey), so records of another format are
// never found: they read as misses. A record that says another version
// is refused too.
//
// Version 1 held the whole image config after the step, history
// included: a record grew with the number of steps before it, and a
// Dockerfile of n instructions wrote O(n^2) bytes of records. Version 2
// holds what the step changed.
const cacheRecordVersion = "ibuild-step-v2"

// stepRecord is what one step did to the image, as its cache record
// holds it. Its size depends on the step, not on the steps before it.
type stepRecord struct {
	Version string `json:"version"`
	// Below is the chain ID of the image's layers before the step ("" for
	// none): the record applies only on top of them.
	Below string `json:"below,omitempty"`
	// Created is the image's creation time after the step: a fully
	// cached build reproduces the image of the build that ran the steps.
	Created v1.Time `json:"created"`
	// History holds the history entries the step appended.
	History []v1.History `json:"history"`
	// Config is, for a step that is not run again on a hit (RUN, COPY,
	// ADD, WORKDIR), the JSON merge patch (RFC 7386) from the image's
	// runtime config before the step to after it; absent when the step
	// left it alone. Other steps run again on a hit, and their record
	// only restores the times.
	Config json.RawMessage `json:"config,omitempty"`
}

// stepMark is the container's state before a step, for its record.
type stepMark struct {
	below   string
	history int
	layers  int
	// config is the runtime config as JSON, kept for steps that are not
	// run again on a hit.
	config []byte
}

// mark notes the container's state before a step.
func (c *Container) mark() stepMark {
	return stepMark{below: c.chainID(), history: len(c.config.History), layers: len(c.config.RootFS.DiffIDs)}
}

// markConfig adds the runtime config to m, before a step that is about to
// run and that a hit does not run again: its record holds a patch of the
// config. (Taken only then: a hit needs none, and it costs a copy of the
// config.)
func (c *Container) markConfig(m *stepMark) error {
	b, err := json.Marshal(&c.config.Config)
	if err != nil {
		return fmt.Errorf("cache record: %w", err)
	}
	m.config = b
	return nil
}

// cacheRecord is the cache record of the step that just ran, since m:
// what it changed, and the layer it added.
func (c *Container) cacheRecord(m stepMark) (*layers.CacheRecord, v1.Layer, error) {
	r := stepRecord{
		Version: cacheRecordVersion,
		Below:   m.below,
		Created: c.config.Created,
		History: slices.Clone(c.config.History[m.history:]),
	}
	if m.config != nil {
		after, err := json.Marshal(&c.config.Config)
		if err != nil {
			return nil, nil, fmt.Errorf("cache record: %w", err)
		}
		if !bytes.Equal(after, m.config) {
			if r.Config, err = configPatch(m.config, after); err != nil {
				return nil, nil, fmt.Errorf("cache record: %w", err)
			}
		}
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, nil, fmt.Errorf("cache record: %w", err)
	}
	rec := &layers.CacheRecord{Config: b}
	var l v1.Layer
	if c.lastLayer != nil {
		d := *c.lastLayer
		rec.Layer = &d
		l = c.layers[len(c.layers)-1]
		if d.Lazy() {
			ch := layers.ChainIDs(c.config.RootFS.DiffIDs)
			rec.Chain = &ch[len(ch)-1]
		}
	}
	return rec, l, nil
}

// errRecordMismatch is a record that does not continue this image.
var errRecordMismatch = errors.New("cache record does not continue this image")

// applyCached takes a step's result from the cache record rec and its
// layer. With replayed, the step has just run again (config-only steps
// do, for their effect on the stage), and the record must describe what
// it did: only the times are taken from it. Otherwise the record's layer,
// history and config patch are applied. A record of another format, or
// made on other layers, is refused, and the container is left as it was
// (as the replayed step left it).
func (c *Container) applyCached(rec *layers.CacheRecord, layer v1.Layer, m stepMark, replayed bool) error {
	var r stepRecord
	if err := json.Unmarshal(rec.Config, &r); err != nil || r.Version != cacheRecordVersion {
		return errRecordMismatch
	}
	if r.Below != m.below || (rec.Layer == nil) != (layer == nil) {
		return errRecordMismatch
	}
	if replayed {
		added := c.config.History[m.history:]
		if rec.Layer != nil || len(c.config.RootFS.DiffIDs) != m.layers || len(added) != len(r.History) {
			return errRecordMismatch
		}
		for i, h := range added {
			if h.CreatedBy != r.History[i].CreatedBy || h.EmptyLayer != r.History[i].EmptyLayer {
				return errRecordMismatch
			}
		}
		for i := range added {
			added[i].Created = r.History[i].Created
		}
		c.config.Created = r.Created
		return nil
	}
	if len(r.Config) > 0 {
		cfg, err := patchConfig(&c.config.Config, r.Config)
		if err != nil {
			return errRecordMismatch
		}
		c.config.Config = cfg
	}
	c.config.History = append(c.config.History, r.History...)
	c.config.Created = r.Created
	if rec.Layer != nil {
		c.config.RootFS.DiffIDs = append(c.config.RootFS.DiffIDs, rec.Layer.DiffID)
		c.layers = append(c.layers, layer)
		c.rootfs, c.dirs = nil, nil
	}
	return nil
}

// configPatch is the JSON merge patch (RFC 7386) taking the JSON object
// a to b.
func configPatch(a, b []byte) (json.RawMessage, error) {
	var x, y map[string]any
	if err := unmarshalNumbers(a, &x); err != nil {
		return nil, err
	}
	if err := unmarshalNumbers(b, &y); err != nil {
		return nil, err
	}
	return json.Marshal(mergeDiff(x, y))
}

// patchConfig applies the merge patch p to a copy of cfg.
func patchConfig(cfg *v1.Config, p json.RawMessage) (v1.Config, error) {
	var out v1.Config
	b, err := json.Marshal(cfg)
	if err != nil {
		return out, err
	}
	var doc, patch map[string]any
	if err := unmarshalNumbers(b, &doc); err != nil {
		return out, err
	}
	if err := unmarshalNumbers(p, &patch); err != nil {
		return out, err
	}
	if b, err = json.Marshal(mergeApply(doc, patch)); err != nil {
		return out, err
	}
	err = json.Unmarshal(b, &out)
	return out, err
}

// unmarshalNumbers decodes JSON keeping numbers exact (durations in
// nanoseconds do not fit a float64).
func unmarshalNumbers(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	return d.Decode(v)
}

// mergeDiff is the merge patch from a to b: b's members that differ,
// objects diffed member by member, and null for a's members b lacks.
func mergeDiff(a, b map[string]any) map[string]any {
	out := map[string]any{}
	for k, bv := range b {
		av, ok := a[k]
		if ok && jsonEqual(av, bv) {
			continue
		}
		ao, aObj := av.(map[string]any)
		bo, bObj := bv.(map[string]any)
		if ok && aObj && bObj {
			out[k] = mergeDiff(ao, bo)
			continue
		}
		out[k] = bv
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			out[k] = nil
		}
	}
	return out
}

// mergeApply applies the merge patch p to doc (RFC 7386).
func mergeApply(doc, p map[string]any) map[string]any {
	if doc == nil {
		doc = map[string]any{}
	}
	for k, pv := range p {
		if pv == nil {
			delete(doc, k)
			continue
		}
		if po, ok := pv.(map[string]any); ok {
			do, _ := doc[k].(map[string]any)
			doc[k] = mergeApply(do, po)
			continue
		}
		doc[k] = pv
	}
	return doc
}

func jsonEqual(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}

package builder

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/ibuild/ibuild/layers"
)

// everyInstruction uses each instruction that changes the image, some
// twice (WORKDIR makes a layer the first time, not the second).
const everyInstruction = `FROM scratch
ARG A=1
LABEL a=$A b="two words"
ENV E=1 F=2
ENV E=3
WORKDIR /w
WORKDIR /w
WORKDIR sub
COPY f /f
EXPOSE 80/udp 8000-8001
VOLUME /data
USER 1000:1000
MAINTAINER someone
SHELL ["/bin/sh", "-e", "-c"]
HEALTHCHECK --interval=5s --timeout=3s CMD check
STOPSIGNAL SIGQUIT
ONBUILD LABEL child=1
ENTRYPOINT ["/bin/tool"]
CMD run
LABEL last=1
`

// buildAt builds opts with the clock at now and returns the result and
// its steps.
func buildAt(t *testing.T, opts Options, now time.Time) (*Result, *stepLog) {
	t.Helper()
	log := &stepLog{}
	opts.Progress = log
	opts.Now = func() time.Time { return now }
	res, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return res, log
}

// TestCachedRebuildReproducesImage rebuilds a Dockerfile using every
// instruction an hour later, without SOURCE_DATE_EPOCH: every step is a
// hit and the image is the first build's, times included (each record
// restores its step's times).
func TestCachedRebuildReproducesImage(t *testing.T) {
	st := newStore(t)
	dir := writeContext(t, map[string]string{"f": "file\n"})
	opts := Options{Store: st, ContextDir: dir, DockerfileContent: []byte(everyInstruction)}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	first, _ := buildAt(t, opts, t0)
	second, log := buildAt(t, opts, t0.Add(time.Hour))
	if p := log.pattern("stage-0"); strings.Contains(p, "M") {
		t.Fatalf("rebuild hits %s; misses:\n%s", p, log.reasons())
	}
	if first.ID != second.ID {
		cf1, _ := first.Image.ConfigFile()
		cf2, _ := second.Image.ConfigFile()
		b1, _ := json.MarshalIndent(cf1, "", " ")
		b2, _ := json.MarshalIndent(cf2, "", " ")
		t.Fatalf("cached rebuild gave %s, first build %s\nfirst:\n%s\nrebuild:\n%s", second.ID, first.ID, b1, b2)
	}
}

// TestCacheRecordsOfOtherFormatsMiss replaces every record of a build
// with one the builder cannot use: the full config of format 1 (as an
// older ibuild wrote), a record of format 2 made on other layers, and
// bytes that are no record. The rebuild must treat them as misses, not
// errors, and make the image a build without cache makes.
func TestCacheRecordsOfOtherFormatsMiss(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		rewrite func(t *testing.T, rec stepRecord, full []byte) []byte
	}{
		{"format 1", func(t *testing.T, _ stepRecord, full []byte) []byte { return full }},
		{"other layers", func(t *testing.T, rec stepRecord, _ []byte) []byte {
			rec.Below = "sha256:" + strings.Repeat("0", 64)
			b, err := json.Marshal(rec)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}},
		{"no record", func(*testing.T, stepRecord, []byte) []byte { return []byte(`"not a record"`) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newStore(t)
			dir := writeContext(t, map[string]string{"f": "file\n"})
			// SOURCE_DATE_EPOCH: the directories WORKDIR makes then have
			// the same time in every build.
			opts := Options{Store: st, ContextDir: dir, DockerfileContent: []byte(everyInstruction), StepOptions: StepOptions{SourceDateEpoch: &epoch}}
			first, _ := buildAt(t, opts, t0)
			cf, err := first.Image.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			full, err := json.Marshal(cf)
			if err != nil {
				t.Fatal(err)
			}
			recDir := filepath.Join(st.Root(), "cache", "records")
			ents, err := os.ReadDir(recDir)
			if err != nil || len(ents) == 0 {
				t.Fatalf("no records (%v)", err)
			}
			for _, e := range ents {
				p := filepath.Join(recDir, e.Name())
				var rec layers.CacheRecord
				var sr stepRecord
				b, err := os.ReadFile(p)
				if err == nil {
					err = json.Unmarshal(b, &rec)
				}
				if err == nil {
					err = json.Unmarshal(rec.Config, &sr)
				}
				if err != nil {
					t.Fatal(err)
				}
				rec.Config = tc.rewrite(t, sr, full)
				if b, err = json.Marshal(rec); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			t1 := t0.Add(time.Hour)
			second, log := buildAt(t, opts, t1)
			if p := log.pattern("stage-0"); strings.Contains(p, "H") {
				t.Errorf("rebuild on unusable records hits %s", p)
			}
			opts.NoCache = true
			uncached, _ := buildAt(t, opts, t1)
			if second.ID != uncached.ID {
				t.Errorf("rebuild on unusable records gave %s, a build without cache %s", second.ID, uncached.ID)
			}
		})
	}
}

// TestCacheRecordSizePerStep builds many metadata steps and checks that
// every step's record stays small: a record holds what its step changed,
// not the history and config of every step before it (which made n
// steps write O(n^2) bytes).
func TestCacheRecordSizePerStep(t *testing.T) {
	const steps = 300
	var df strings.Builder
	df.WriteString("FROM scratch\n")
	for i := range steps {
		switch i % 3 {
		case 0:
			fmt.Fprintf(&df, "LABEL label%d=value%d\n", i, i)
		case 1:
			fmt.Fprintf(&df, "ENV VAR%d=value%d\n", i, i)
		default:
			fmt.Fprintf(&df, "EXPOSE %d\n", 1000+i)
		}
	}
	st := newStore(t)
	opts := Options{Store: st, ContextDir: t.TempDir(), DockerfileContent: []byte(df.String())}
	if _, err := Build(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(filepath.Join(st.Root(), "cache", "records"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != steps {
		t.Fatalf("%d records, want %d", len(ents), steps)
	}
	const maxRecord = 512 // bytes; a step's record is about 250
	total := int64(0)
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		total += fi.Size()
		if fi.Size() > maxRecord {
			b, _ := os.ReadFile(filepath.Join(st.Root(), "cache", "records", e.Name()))
			t.Fatalf("record %s holds %d bytes, want at most %d:\n%.600s", e.Name(), fi.Size(), maxRecord, b)
		}
	}
	t.Logf("%d records, %d bytes, %d bytes a step", len(ents), total, total/steps)
}

func TestMergePatch(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before v1.Config
		after  v1.Config
	}{
		{"workdir set", v1.Config{}, v1.Config{WorkingDir: "/w"}},
		{"workdir changed, labels kept", v1.Config{WorkingDir: "/a", Labels: map[string]string{"x": "1"}},
			v1.Config{WorkingDir: "/b", Labels: map[string]string{"x": "1"}}},
		{"label added and removed", v1.Config{Labels: map[string]string{"x": "1", "y": "2"}},
			v1.Config{Labels: map[string]string{"x": "1", "z": "3"}}},
		{"ports added", v1.Config{ExposedPorts: map[string]struct{}{"80/tcp": {}}},
			v1.Config{ExposedPorts: map[string]struct{}{"80/tcp": {}, "53/udp": {}}}},
		{"cmd cleared", v1.Config{Cmd: []string{"a", "b"}, Entrypoint: []string{"e"}}, v1.Config{Entrypoint: []string{"f"}}},
		{"healthcheck durations", v1.Config{}, v1.Config{Healthcheck: &v1.HealthConfig{Test: []string{"CMD", "x"}, Interval: 1<<62 + 1, Retries: 3}}},
		{"env replaced", v1.Config{Env: []string{"A=1", "B=2"}}, v1.Config{Env: []string{"A=1", "B=3"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := json.Marshal(&tc.before)
			b, _ := json.Marshal(&tc.after)
			p, err := configPatch(a, b)
			if err != nil {
				t.Fatal(err)
			}
			got, err := patchConfig(&tc.before, p)
			if err != nil {
				t.Fatal(err)
			}
			g, _ := json.Marshal(&got)
			if string(g) != string(b) {
				t.Fatalf("patch %s gives\n%s\nwant\n%s", p, g, b)
			}
		})
	}
}

package layers

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// spillLayers are a base and a layer on top of it whose whiteouts and
// opaque markers come after entries of their own directories, so that
// they must consult what the layer wrote; with many entries and
// directories of several modes and times, so that a small spill limit
// sends both lists to disk many times over.
func spillLayers(t testing.TB) [][]byte {
	t.Helper()
	var base, top []ent
	for d := range 6 {
		dir := fmt.Sprintf("d%d/", d)
		base = append(base, dirEnt(dir, 0o755))
		for f := range 40 {
			base = append(base, regEnt(fmt.Sprintf("%sf%02d", dir, f), "base", 0o644))
		}
		base = append(base, dirEnt(dir+"sub/", 0o700), regEnt(dir+"sub/old", "old", 0o600))
	}
	for d := range 6 {
		dir := fmt.Sprintf("d%d/", d)
		e := dirEnt(dir, 0o750)
		e.hdr.ModTime = time.Unix(1600000000+int64(d), 0)
		top = append(top, e)
		for f := range 20 {
			top = append(top, regEnt(fmt.Sprintf("%s!new%02d", dir, f), "top", 0o640))
		}
		sub := dirEnt(dir+"!dir/", 0o555)
		sub.hdr.ModTime = time.Unix(1500000000, 0)
		top = append(top, sub, regEnt(dir+"!dir/x", "x", 0o644), dirEnt(dir+"sub/", 0o711), regEnt(dir+"sub/mine", "m", 0o644))
		switch d % 3 {
		case 0: // opaque after the layer's own entries
			top = append(top, regEnt(dir+".wh..wh..opq", "", 0))
		case 1: // whiteouts of the layer's own file and of lower ones
			top = append(top, regEnt(dir+".wh.!new03", "", 0), regEnt(dir+".wh.f07", "", 0), regEnt(dir+".wh.sub", "", 0))
		}
	}
	return [][]byte{buildTar(t, base...), buildTar(t, top...)}
}

// describeTimes adds each directory's mtime to describeTree's view.
func describeTimes(t testing.TB, root string) map[string]string {
	t.Helper()
	m := describeTree(t, root)
	for p, v := range m {
		if strings.HasPrefix(v, "dir ") {
			var st unix.Stat_t
			mustDo(t, unix.Lstat(filepath.Join(root, p), &st))
			m[p] = fmt.Sprintf("%s mtime %d", v, st.Mtim.Sec)
		}
	}
	return m
}

// TestExtractSpilled checks that an extraction whose written paths and
// directory list go to disk (a spill limit of a few bytes) gives the tree
// one that keeps them in memory gives, in both modes that track them.
func TestExtractSpilled(t *testing.T) {
	ls := spillLayers(t)
	for _, mode := range []WhiteoutMode{ApplyWhiteouts, OverlayWhiteouts} {
		var want map[string]string
		for _, limit := range []int{0, 1, 700} {
			t.Run(fmt.Sprintf("mode %d limit %d", mode, limit), func(t *testing.T) {
				root := t.TempDir()
				for i, l := range ls {
					err := Extract(context.Background(), strings.NewReader(string(l)), root, ExtractOptions{Whiteouts: mode, Source: fmt.Sprint("layer ", i), spillBytes: limit})
					mustDo(t, err)
				}
				got := describeTimes(t, root)
				if want == nil {
					want = got
					// Spot checks of the spec's rules on the in-memory run.
					for p, v := range map[string]string{
						"d0/f00": "", "d0/sub/old": "", "d0/sub/mine": `file 0644 "m"`, "d0/!new00": `file 0640 "top"`,
						"d1/!new03": `file 0640 "top"`, "d1/f07": "", "d1/f08": `file 0644 "base"`,
						"d2/f00": `file 0644 "base"`, "d2/sub/old": `file 0600 "old"`,
					} {
						if g := got[p]; g != v && !(v == "" && mode == OverlayWhiteouts && strings.HasPrefix(g, "char 0:0")) {
							t.Errorf("%s: %q, want %q", p, g, v)
						}
					}
					return
				}
				if d := diffTrees(got, want); d != "" {
					t.Errorf("spilled extraction differs:\n%s", d)
				}
			})
		}
	}
}

// bombTar streams an uncompressed tar of n entries: empty files, 1000 to
// a directory, or (dirs) directories, 1000 to a parent.
func bombTar(n int, dirs bool) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		mod := time.Unix(1700000000, 0)
		var err error
		for i := 0; i < n && err == nil; i++ {
			if i%1000 == 0 {
				err = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("p%04d/", i/1000), Mode: 0o755, ModTime: mod})
			}
			h := &tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("p%04d/f%07d", i/1000, i), Mode: 0o644, ModTime: mod}
			if dirs {
				h = &tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("p%04d/d%07d/", i/1000, i), Mode: 0o755, ModTime: mod}
			}
			if err == nil {
				err = tw.WriteHeader(h)
			}
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	return pr
}

// liveHeap is the live heap after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestSpillStructuresFlat fills the two per-entry lists of an extraction
// (written paths, directory metadata) with 20,000 and with 200,000 entries,
// with a spill limit of 256 KiB that both counts exceed, and fails if the
// larger holds more than 1 MB more live heap than the smaller: beyond the
// limit they live on disk. A control with spilling off must grow by more.
func TestSpillStructuresFlat(t *testing.T) {
	const slack = 1e6
	fill := func(n, limit int) (paths, dirs uint64) {
		dir := t.TempDir()
		base := liveHeap()
		ps := newPathSet(dir, limit)
		defer ps.Close()
		for i := range n {
			mustDo(t, ps.Add(fmt.Sprintf("usr/share/doc/package%04d/file%07d", i/1000, i)))
		}
		if ok, err := ps.Has("usr/share/doc/package0003/file0003333"); err != nil || !ok {
			t.Fatalf("a spilled path is not found: %v %v", ok, err)
		}
		if ok, err := ps.Has("usr/share/doc/nope"); err != nil || ok {
			t.Fatalf("a path never added is found: %v %v", ok, err)
		}
		paths = liveHeap() - min(base, liveHeap())
		base = liveHeap()
		dl := &dirList{dir: dir, limit: limit}
		defer dl.close()
		for i := range n {
			mustDo(t, dl.add(dirMeta{path: fmt.Sprintf("usr/share/doc/package%04d/d%07d", i/1000, i), mode: 0o755, mtime: time.Unix(int64(i), 0)}))
		}
		dirs = liveHeap() - min(base, liveHeap())
		// Read back newest first, all of them.
		want := n - 1
		mustDo(t, dl.reverse(func(m dirMeta) error {
			if got := fmt.Sprintf("usr/share/doc/package%04d/d%07d", want/1000, want); m.path != got || m.mtime.Unix() != int64(want) {
				return fmt.Errorf("read back %s %v, want %s", m.path, m.mtime, got)
			}
			want--
			return nil
		}))
		if want != -1 {
			t.Fatalf("read back %d directories of %d", n-1-want, n)
		}
		return paths, dirs
	}
	for _, tc := range []struct {
		name  string
		limit int
	}{{"spilling", 256 << 10}, {"control: all in memory", 1 << 40}} {
		t.Run(tc.name, func(t *testing.T) {
			p1, d1 := fill(20000, tc.limit)
			p2, d2 := fill(200000, tc.limit)
			gp, gd := float64(p2)-float64(p1), float64(d2)-float64(d1)
			t.Logf("live heap growth from 20,000 to 200,000 entries: paths %.2f MB, directories %.2f MB", gp/1e6, gd/1e6)
			spilling := tc.limit < 1<<40
			if spilling && (gp > slack || gd > slack) {
				t.Errorf("the lists grew by %.2f MB and %.2f MB with 180,000 more entries, want under %.1f MB", gp/1e6, gd/1e6, slack/1e6)
			}
			if !spilling && (gp <= slack || gd <= slack) {
				t.Errorf("control: all in memory the lists grew only %.2f MB and %.2f MB; the measurement cannot tell", gp/1e6, gd/1e6)
			}
		})
	}
}

// heldAtEnd extracts a bomb of n entries in mode and returns the live
// heap once every entry is in, just before the directories' metadata is
// set: when what an extraction keeps per entry is at its largest.
func heldAtEnd(t testing.TB, n int, dirs bool, mode WhiteoutMode, limit int) uint64 {
	t.Helper()
	var held uint64
	opts := ExtractOptions{Whiteouts: mode, Source: "bomb", spillBytes: limit, beforeFinish: func() { held = liveHeap() }}
	mustDo(t, Extract(context.Background(), bombTar(n, dirs), t.TempDir(), opts))
	return held
}

// TestExtractMemoryFlat extracts tars of 1,000 and 10,000 directories
// (the case that keeps both lists) with a spill limit of 64 KiB and fails
// if the larger holds more than 0.5 MB more live heap once every entry is
// in; a control with spilling off must hold more.
// BenchmarkExtractBombPeakRSS measures the whole process at full size.
func TestExtractMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("creates 22,000 directories")
	}
	const slack = 0.5e6
	grow := func(limit int) float64 {
		return float64(heldAtEnd(t, 10000, true, ApplyWhiteouts, limit)) - float64(heldAtEnd(t, 1000, true, ApplyWhiteouts, limit))
	}
	spilled, control := grow(64<<10), grow(1<<40)
	t.Logf("live heap growth from 1,000 to 10,000 entries: %.2f MB spilling, %.2f MB all in memory", spilled/1e6, control/1e6)
	if spilled > slack {
		t.Errorf("the live heap grew by %.2f MB with 9,000 more entries, want under %.1f MB", spilled/1e6, slack/1e6)
	}
	if control <= slack {
		t.Errorf("control: with spilling off the live heap grew only %.2f MB; the measurement cannot tell", control/1e6)
	}
}

// bombChildEnv tells TestExtractBombHelper what to extract: "N|dirs|MODE|ROOT".
const bombChildEnv = "IBUILD_BENCH_BOMB_CHILD"

// TestExtractBombHelper is the child process of BenchmarkExtractBombPeakRSS:
// it extracts one generated tar and prints its peak RSS. Without
// bombChildEnv it does nothing.
func TestExtractBombHelper(t *testing.T) {
	spec := os.Getenv(bombChildEnv)
	if spec == "" {
		return
	}
	parts := strings.Split(spec, "|")
	if len(parts) != 4 {
		t.Fatalf("%s=%q: want N|dirs|MODE|ROOT", bombChildEnv, spec)
	}
	n, err := strconv.Atoi(parts[0])
	mustDo(t, err)
	mode, err := strconv.Atoi(parts[2])
	mustDo(t, err)
	// As the ibuild command runs (cmd/ibuild tuneGC): GC four times less
	// often than Go's default.
	if os.Getenv("GOGC") == "" {
		defer debug.SetGCPercent(debug.SetGCPercent(400))
	}
	err = Extract(context.Background(), bombTar(n, parts[1] == "dirs"), parts[3], ExtractOptions{Whiteouts: WhiteoutMode(mode), Source: "bomb"})
	mustDo(t, err)
	hwm, err := vmHWM()
	mustDo(t, err)
	fmt.Printf("EXTRACTED %d\n", hwm)
}

// BenchmarkExtractBombPeakRSS extracts generated tars of 100,000 and
// 1,000,000 entries (empty files 1000 to a directory, and directories) in
// a child process each (this test binary as TestExtractBombHelper, with
// ibuild's GOGC=400), and reports the child's peak RSS, peak_rss_MB, and
// the ratio of the 1M run's to the 100k run's, rss_ratio: flat memory
// means a ratio near 1. IBUILD_BENCH_BOMB_ENTRIES replaces the larger
// count (the smaller is a tenth of it).
func BenchmarkExtractBombPeakRSS(b *testing.B) {
	large := 1_000_000
	if v := os.Getenv("IBUILD_BENCH_BOMB_ENTRIES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 10 {
			b.Fatalf("IBUILD_BENCH_BOMB_ENTRIES=%q: want a count of at least 10", v)
		}
		large = n
	}
	for _, tc := range []struct {
		name string
		dirs bool
		mode WhiteoutMode
	}{
		{"files-snapshot", false, KeepWhiteouts},
		{"files-rootfs", false, ApplyWhiteouts},
		{"dirs-snapshot", true, KeepWhiteouts},
		{"dirs-rootfs", true, ApplyWhiteouts},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var rss [2]int64
			for b.Loop() {
				for i, n := range []int{large / 10, large} {
					root := b.TempDir()
					kind := "files"
					if tc.dirs {
						kind = "dirs"
					}
					cmd := exec.Command(os.Args[0], "-test.run=^TestExtractBombHelper$", "-test.count=1")
					cmd.Env = append(os.Environ(), bombChildEnv+"="+strings.Join([]string{strconv.Itoa(n), kind, strconv.Itoa(int(tc.mode)), root}, "|"))
					out, err := cmd.CombinedOutput()
					if err != nil {
						b.Fatalf("extract child: %v\n%s", err, out)
					}
					var hwm int64
					j := strings.Index(string(out), "EXTRACTED ")
					if j < 0 {
						b.Fatalf("extract child printed no result:\n%s", out)
					}
					if _, err := fmt.Sscanf(string(out[j:]), "EXTRACTED %d", &hwm); err != nil {
						b.Fatal(err)
					}
					if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
						hwm = max(hwm, ru.Maxrss<<10)
					}
					rss[i] = max(rss[i], hwm)
					os.RemoveAll(root)
				}
			}
			b.ReportMetric(float64(rss[0])/1e6, "peak_rss_small_MB")
			b.ReportMetric(float64(rss[1])/1e6, "peak_rss_MB")
			b.ReportMetric(float64(rss[1])/float64(rss[0]), "rss_ratio")
		})
	}
}

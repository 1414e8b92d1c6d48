package graph

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestNeeded(t *testing.T) {
	tests := []struct {
		name   string
		names  []string
		edges  [][2]int
		target int
		want   []int
		cycle  []string
	}{
		{name: "single", names: []string{"a"}, target: 0, want: []int{0}},
		{name: "chain", names: []string{"a", "b", "c"}, edges: [][2]int{{1, 0}, {2, 1}}, target: 2, want: []int{0, 1, 2}},
		{name: "unneeded stage skipped", names: []string{"a", "b", "c"}, edges: [][2]int{{2, 0}}, target: 2, want: []int{0, 2}},
		{name: "diamond", names: []string{"a", "b", "c", "d"}, edges: [][2]int{{1, 0}, {2, 0}, {3, 1}, {3, 2}}, target: 3, want: []int{0, 1, 2, 3}},
		{name: "cycle", names: []string{"a", "b"}, edges: [][2]int{{0, 1}, {1, 0}}, target: 1, cycle: []string{"b", "a", "b"}},
		{name: "self", names: []string{"a"}, edges: [][2]int{{0, 0}}, target: 0, cycle: []string{"a", "a"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := New(tc.names)
			for _, e := range tc.edges {
				g.AddEdge(e[0], Edge{To: e[1]})
			}
			got, err := g.Needed(tc.target)
			if tc.cycle != nil {
				var ce *CycleError
				if !errors.As(err, &ce) {
					t.Fatalf("want cycle error, got %v", err)
				}
				if !slices.Equal(ce.Path, tc.cycle) {
					t.Fatalf("cycle path %v, want %v", ce.Path, tc.cycle)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRunRespectsDepsAndJobs(t *testing.T) {
	// 0 <- 1, 0 <- 2, {1,2} <- 3; 1 and 2 may run together.
	g := New([]string{"a", "b", "c", "d"})
	g.AddEdge(1, Edge{To: 0})
	g.AddEdge(2, Edge{To: 0})
	g.AddEdge(3, Edge{To: 1})
	g.AddEdge(3, Edge{To: 2})
	order, err := g.Needed(3)
	if err != nil {
		t.Fatal(err)
	}
	for _, jobs := range []int{1, 2} {
		var mu sync.Mutex
		finished := map[int]bool{}
		var running, peak int32
		err := g.Run(context.Background(), order, jobs, func(ctx context.Context, i int) error {
			n := atomic.AddInt32(&running, 1)
			for {
				p := atomic.LoadInt32(&peak)
				if n <= p || atomic.CompareAndSwapInt32(&peak, p, n) {
					break
				}
			}
			mu.Lock()
			for _, e := range g.Deps(i) {
				if !finished[e.To] {
					t.Errorf("stage %d started before its dependency %d finished", i, e.To)
				}
			}
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
			atomic.AddInt32(&running, -1)
			mu.Lock()
			finished[i] = true
			mu.Unlock()
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if int(peak) > jobs {
			t.Fatalf("jobs=%d but %d ran at once", jobs, peak)
		}
		if jobs == 2 && peak != 2 {
			t.Fatalf("jobs=2: independent stages did not run concurrently (peak %d)", peak)
		}
		if len(finished) != 4 {
			t.Fatalf("ran %d stages, want 4", len(finished))
		}
	}
}

func TestRunStopsOnError(t *testing.T) {
	g := New([]string{"a", "b"})
	g.AddEdge(1, Edge{To: 0})
	boom := errors.New("boom")
	var ranB atomic.Bool
	err := g.Run(context.Background(), []int{0, 1}, 2, func(ctx context.Context, i int) error {
		if i == 0 {
			return boom
		}
		ranB.Store(true)
		return nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want boom", err)
	}
	if ranB.Load() {
		t.Fatal("dependent stage ran after its dependency failed")
	}
}

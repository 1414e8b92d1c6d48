// Package graph is the stage graph of a multi-stage build: which stages a
// target needs (through FROM <stage>, COPY --from and RUN --mount from=),
// in what order, and running the needed ones concurrently with a bound on
// how many run at once. It knows stages and edges, not instructions.
package graph

import (
	"context"
	"fmt"
	"strings"
	"sync"
)

// Edge is a dependency of one stage on another.
type Edge struct {
	// To is the index of the stage depended on.
	To int
	// Via says what made the edge, e.g. "FROM build" or "COPY --from=build",
	// and Line where it is, for error messages.
	Via  string
	Line int
}

// Graph is a directed graph of n stages.
type Graph struct {
	names []string
	edges [][]Edge
}

// New returns a graph of stages with the given display names.
func New(names []string) *Graph {
	return &Graph{names: names, edges: make([][]Edge, len(names))}
}

// Len is the number of stages.
func (g *Graph) Len() int { return len(g.names) }

// AddEdge records that stage from needs stage e.To.
func (g *Graph) AddEdge(from int, e Edge) {
	for _, x := range g.edges[from] {
		if x.To == e.To {
			return
		}
	}
	g.edges[from] = append(g.edges[from], e)
}

// Deps returns the stages that stage i needs directly.
func (g *Graph) Deps(i int) []Edge { return g.edges[i] }

// CycleError reports a circular stage reference.
type CycleError struct {
	// Path is the cycle as stage names, first == last.
	Path []string
	// Edge is the edge that closes the cycle.
	Edge Edge
	From int
}

func (e *CycleError) Error() string {
	return "circular stage reference: " + strings.Join(e.Path, " -> ")
}

// Needed returns the stages target needs, itself included, in an order where
// every stage comes after the stages it needs. A cycle is a *CycleError.
func (g *Graph) Needed(target int) ([]int, error) {
	if target < 0 || target >= len(g.names) {
		return nil, fmt.Errorf("no stage %d", target)
	}
	const (
		white = iota
		grey
		black
	)
	color := make([]int, len(g.names))
	var order []int
	var stack []int
	var visit func(i int) error
	visit = func(i int) error {
		color[i] = grey
		stack = append(stack, i)
		for _, e := range g.edges[i] {
			switch color[e.To] {
			case grey:
				var path []string
				start := 0
				for k, s := range stack {
					if s == e.To {
						start = k
					}
				}
				for _, s := range stack[start:] {
					path = append(path, g.names[s])
				}
				path = append(path, g.names[e.To])
				return &CycleError{Path: path, Edge: e, From: i}
			case white:
				if err := visit(e.To); err != nil {
					return err
				}
			}
		}
		stack = stack[:len(stack)-1]
		color[i] = black
		order = append(order, i)
		return nil
	}
	if err := visit(target); err != nil {
		return nil, err
	}
	return order, nil
}

// Run calls fn for every stage in order (as Needed returns), each only after
// the stages it needs have finished, at most jobs at a time. The first error
// cancels the context passed to the others and is returned.
func (g *Graph) Run(ctx context.Context, order []int, jobs int, fn func(ctx context.Context, stage int) error) error {
	if jobs < 1 {
		jobs = 1
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(map[int]chan struct{}, len(order))
	for _, i := range order {
		done[i] = make(chan struct{})
	}
	sem := make(chan struct{}, jobs)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
			cancel()
		}
		mu.Unlock()
	}
	for _, i := range order {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer close(done[i])
			for _, e := range g.edges[i] {
				ch, ok := done[e.To]
				if !ok {
					fail(fmt.Errorf("stage %s needs stage %s, which is not scheduled", g.names[i], g.names[e.To]))
					return
				}
				select {
				case <-ch:
				case <-ctx.Done():
					return
				}
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-sem }()
			if ctx.Err() != nil {
				return
			}
			if err := fn(ctx, i); err != nil {
				fail(err)
			}
		}(i)
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

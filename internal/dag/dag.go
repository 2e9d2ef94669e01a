// Package dag resolves and checks the dependency graph of a saga's steps:
// which steps each one waits for (saga.Step.After), in what order they may
// run, and which depend on which. Package saga validates definitions with
// it, httpstep names the JSON path of a fault with it, and the engine
// plans attempts and compensations with it.
package dag

import (
	"slices"
	"strconv"
	"strings"
)

// Problem is the first fault found in a graph: the step at fault, the
// index of the entry in its After list (-1: the list as a whole), and what
// is wrong, as a phrase.
type Problem struct {
	Step, Ref int
	Msg       string
}

// Graph is a checked dependency graph of n steps.
type Graph struct {
	// Deps[i] are the steps step i waits for, in its After order.
	Deps [][]int
	// Dependents[i] are the steps that wait for step i, in index order.
	Dependents [][]int
	// Order lists every step after all those it waits for; among steps
	// free to go at once, the one listed first comes first.
	Order []int
	// Linear is true when every step waits for exactly the one listed
	// before it: the saga is a straight line.
	Linear bool
}

// New resolves the After lists of steps named names. after[i] nil means
// the step listed before i (none for the first); an empty, non-nil list
// means none. It refuses unknown names, a step that waits for itself or
// names a step twice, and cycles.
func New(names []string, after [][]string) (*Graph, *Problem) {
	n := len(names)
	index := make(map[string]int, n)
	for i, name := range names {
		index[name] = i
	}
	g := &Graph{Deps: make([][]int, n), Dependents: make([][]int, n), Linear: true}
	for i := range n {
		if after[i] == nil {
			if i > 0 {
				g.Deps[i] = []int{i - 1}
			}
			continue
		}
		g.Deps[i] = make([]int, 0, len(after[i]))
		for j, name := range after[i] {
			k, ok := index[name]
			switch {
			case !ok:
				return nil, &Problem{i, j, strconv.Quote(name) + " names no step"}
			case k == i:
				return nil, &Problem{i, j, "a step cannot wait for itself"}
			case slices.Contains(g.Deps[i], k):
				return nil, &Problem{i, j, strconv.Quote(name) + " is named twice"}
			}
			g.Deps[i] = append(g.Deps[i], k)
		}
	}
	for i, deps := range g.Deps {
		if i > 0 && (len(deps) != 1 || deps[0] != i-1) || i == 0 && len(deps) != 0 {
			g.Linear = false
		}
		for _, k := range deps {
			g.Dependents[k] = append(g.Dependents[k], i)
		}
	}
	for k := range g.Dependents {
		slices.Sort(g.Dependents[k])
	}
	// Kahn's algorithm, taking the lowest index free to go.
	waiting := make([]int, n)
	for i, deps := range g.Deps {
		waiting[i] = len(deps)
	}
	done := make([]bool, n)
	for len(g.Order) < n {
		next := -1
		for i := range n {
			if !done[i] && waiting[i] == 0 {
				next = i
				break
			}
		}
		if next < 0 {
			return nil, g.cycle(names, done)
		}
		done[next] = true
		g.Order = append(g.Order, next)
		for _, d := range g.Dependents[next] {
			waiting[d]--
		}
	}
	return g, nil
}

// cycle describes a cycle among the steps not done: following a step's
// first undone dependency from any such step must come back to a step
// already seen.
func (g *Graph) cycle(names []string, done []bool) *Problem {
	start := slices.Index(done, false)
	seen := map[int]int{} // step -> position in path
	var path []int
	for i := start; ; {
		if at, ok := seen[i]; ok {
			path = append(path[at:], i)
			break
		}
		seen[i] = len(path)
		path = append(path, i)
		for _, k := range g.Deps[i] {
			if !done[k] {
				i = k
				break
			}
		}
	}
	// Report it at the cycle's first listed step, at the entry that leads
	// around it.
	first := slices.Index(path, slices.Min(path[:len(path)-1]))
	path = slices.Concat(path[first:len(path)-1], path[:first+1])
	parts := make([]string, len(path))
	for i, k := range path {
		parts[i] = strconv.Quote(names[k])
	}
	ref := slices.Index(g.Deps[path[0]], path[1])
	return &Problem{path[0], ref, "forms a cycle: " + strings.Join(parts, " waits for ") +
		" (a step in a cycle can never start)"}
}

// Related reports whether steps a and b are ordered: one waits, directly
// or not, for the other.
func (g *Graph) Related(a, b int) bool {
	return g.reaches(a, b) || g.reaches(b, a)
}

// reaches reports whether step from waits, directly or not, for step to.
func (g *Graph) reaches(from, to int) bool {
	seen := make([]bool, len(g.Deps))
	stack := []int{from}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, k := range g.Deps[i] {
			if k == to {
				return true
			}
			if !seen[k] {
				seen[k] = true
				stack = append(stack, k)
			}
		}
	}
	return false
}

// Before reports whether step a must succeed before step b starts.
func (g *Graph) Before(a, b int) bool { return g.reaches(b, a) }

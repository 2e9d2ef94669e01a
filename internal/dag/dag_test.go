package dag

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		names    []string
		after    [][]string
		deps     [][]int
		order    []int
		linear   bool
		problem  *Problem
		contains string
	}{
		{name: "a line", names: []string{"a", "b", "c"}, after: [][]string{nil, nil, nil},
			deps: [][]int{nil, {0}, {1}}, order: []int{0, 1, 2}, linear: true},
		{name: "fan out and in", names: []string{"a", "b", "c", "d"}, after: [][]string{nil, {"a"}, {"a"}, {"b", "c"}},
			deps: [][]int{nil, {0}, {0}, {1, 2}}, order: []int{0, 1, 2, 3}},
		{name: "two roots", names: []string{"a", "b", "c"}, after: [][]string{nil, {}, {"a", "b"}},
			deps: [][]int{nil, {}, {0, 1}}, order: []int{0, 1, 2}},
		{name: "waits for a later step", names: []string{"a", "b"}, after: [][]string{{"b"}, {}},
			deps: [][]int{{1}, {}}, order: []int{1, 0}},
		{name: "unknown name", names: []string{"a", "b"}, after: [][]string{nil, {"a", "x"}},
			problem: &Problem{Step: 1, Ref: 1}, contains: `"x" names no step`},
		{name: "itself", names: []string{"a", "b"}, after: [][]string{nil, {"b"}},
			problem: &Problem{Step: 1, Ref: 0}, contains: "itself"},
		{name: "twice", names: []string{"a", "b"}, after: [][]string{nil, {"a", "a"}},
			problem: &Problem{Step: 1, Ref: 1}, contains: `"a" is named twice`},
		{name: "cycle", names: []string{"a", "b", "c", "d"}, after: [][]string{nil, {"a", "d"}, {"b"}, {"c"}},
			problem: &Problem{Step: 1, Ref: 1}, contains: `"b" waits for "d" waits for "c" waits for "b"`},
		{name: "cycle of the first step", names: []string{"a", "b"}, after: [][]string{{"b"}, nil},
			problem: &Problem{Step: 0, Ref: 0}, contains: `"a" waits for "b" waits for "a"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, p := New(tt.names, tt.after)
			if tt.problem != nil {
				if p == nil || p.Step != tt.problem.Step || p.Ref != tt.problem.Ref || !strings.Contains(p.Msg, tt.contains) {
					t.Fatalf("problem %+v, want step %d ref %d containing %q", p, tt.problem.Step, tt.problem.Ref, tt.contains)
				}
				return
			}
			if p != nil {
				t.Fatalf("problem %+v", p)
			}
			for i := range tt.deps {
				if !slices.Equal(g.Deps[i], tt.deps[i]) {
					t.Errorf("deps[%d] = %v, want %v", i, g.Deps[i], tt.deps[i])
				}
			}
			if !slices.Equal(g.Order, tt.order) || g.Linear != tt.linear {
				t.Errorf("order %v linear %v, want %v %v", g.Order, g.Linear, tt.order, tt.linear)
			}
		})
	}
}

// TestOrderOfRandomGraphs: in the order, every step comes after all it
// waits for, and Before agrees with the edges.
func TestOrderOfRandomGraphs(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		n := 1 + rng.IntN(12)
		names := make([]string, n)
		after := make([][]string, n)
		for i := range n {
			names[i] = string(rune('a' + i))
		}
		for i := range n {
			after[i] = []string{}
			for k := range i {
				if rng.IntN(3) == 0 {
					after[i] = append(after[i], names[k])
				}
			}
		}
		g, p := New(names, after)
		if p != nil {
			t.Fatalf("acyclic graph %v refused: %+v", after, p)
		}
		pos := make([]int, n)
		for at, i := range g.Order {
			pos[i] = at
		}
		for i, deps := range g.Deps {
			for _, k := range deps {
				if pos[k] >= pos[i] || !g.Before(k, i) || g.Before(i, k) || !g.Related(i, k) {
					t.Fatalf("graph %v: %d waits for %d, order %v", after, i, k, g.Order)
				}
			}
		}
	}
}

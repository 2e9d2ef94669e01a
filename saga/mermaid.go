package saga

import (
	"strconv"
	"strings"

	"github.com/sagad/sagad/internal/dag"
)

// Mermaid draws the definition as a Mermaid flowchart
// (https://mermaid.js.org): each step a box (the pivot a hexagon, marked),
// with its circuit breaker's name; solid arrows for the order steps run
// in; a thick arrow to a step's fallback; and for each step that can be
// undone, a dashed arrow to its compensation, with dashed arrows between
// compensations in the order they run (the reverse). Steps sent as
// commands say so. GitHub and most Markdown viewers render it inside a
// ```mermaid block.
func (d *Definition) Mermaid() string {
	g, _ := d.graph() // a definition that does not validate draws what it can
	var b strings.Builder
	b.WriteString("flowchart LR\n")
	node := func(id, label, open, close string) {
		b.WriteString("  " + id + open + quoteMermaid(label) + close + "\n")
	}
	for i := range d.Steps {
		st := &d.Steps[i]
		label := st.Name
		if st.Commands.Action != nil {
			label += "<br/>(command)"
		}
		if st.Breaker.Name != "" {
			label += "<br/>breaker: " + st.Breaker.Name
		}
		if st.Pivot {
			node(stepID(i), label+"<br/>pivot", "{{", "}}")
		} else {
			node(stepID(i), label, "[", "]")
		}
		if st.HasFallback() {
			node("f"+strconv.Itoa(i), "fallback of "+st.Name, "[/", "/]")
			b.WriteString("  " + stepID(i) + " ==>|fails| f" + strconv.Itoa(i) + "\n")
		}
		if st.HasCompensation() {
			node("c"+strconv.Itoa(i), "undo "+st.Name, "([", "])")
			b.WriteString("  " + stepID(i) + " -.-> c" + strconv.Itoa(i) + "\n")
		}
	}
	if g == nil {
		return b.String()
	}
	for i, deps := range g.Deps {
		for _, k := range deps {
			b.WriteString("  " + stepID(k) + " --> " + stepID(i) + "\n")
		}
	}
	// A compensation runs once those of the steps after it have ended;
	// a step without one is passed through.
	for i := range d.Steps {
		if !d.Steps[i].HasCompensation() {
			continue
		}
		for _, k := range undoneBefore(d, g, i) {
			b.WriteString("  c" + strconv.Itoa(i) + " -.-> c" + strconv.Itoa(k) + "\n")
		}
	}
	return b.String()
}

// undoneBefore returns the steps with a compensation that step i waits
// for, directly or through steps without one: their compensations run
// after i's.
func undoneBefore(d *Definition, g *dag.Graph, i int) []int {
	var out []int
	seen := map[int]bool{}
	var walk func(int)
	walk = func(j int) {
		for _, k := range g.Deps[j] {
			if seen[k] {
				continue
			}
			seen[k] = true
			if d.Steps[k].HasCompensation() {
				out = append(out, k)
			} else {
				walk(k)
			}
		}
	}
	walk(i)
	return out
}

func stepID(i int) string { return "s" + strconv.Itoa(i) }

// quoteMermaid quotes a label; step and breaker names hold no quotes, but
// a label is escaped all the same.
func quoteMermaid(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, "#quot;") + `"`
}

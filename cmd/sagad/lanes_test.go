package main

import (
	"slices"
	"testing"

	"github.com/sagad/sagad/client"
)

func TestDrawLanes(t *testing.T) {
	t.Parallel()
	e := func(event, step string) client.LogEntry {
		return client.LogEntry{Event: event, Step: step, Phase: "action"}
	}
	tests := []struct {
		name string
		log  []client.LogEntry
		want []string
	}{
		{"a straight line has no lanes", []client.LogEntry{
			{Event: "saga_started"}, e("attempt_started", "a"), e("attempt_succeeded", "a"),
			e("attempt_started", "b"), e("attempt_failed", "b"), e("attempt_started", "b"), e("attempt_succeeded", "b"),
		}, nil},
		{"two branches, then a step after both", []client.LogEntry{
			{Event: "saga_started"},
			e("attempt_started", "a"), e("attempt_started", "b"), e("attempt_succeeded", "a"),
			e("attempt_started", "c"), e("attempt_succeeded", "b"), e("attempt_succeeded", "c"),
			{Event: "status_changed", Status: "completed"},
		}, []string{"  ", "┬ ", "│┬", "┴│", "┬│", "│┴", "┴ ", "  "}},
		{"an attempt in doubt after a restart closes its lane", []client.LogEntry{
			e("attempt_started", "a"), e("attempt_started", "b"), e("attempt_in_doubt", "a"), e("attempt_in_doubt", "b"),
		}, []string{"┬ ", "│┬", "┴│", " ┴"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := drawLanes(tt.log); !slices.Equal(got, tt.want) {
				t.Errorf("drawLanes = %q, want %q", got, tt.want)
			}
		})
	}
}

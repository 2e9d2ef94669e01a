package main

import (
	"context"
	"io"
	"log"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/transport/httpapi"
)

// The README's quick start: the example definition, these participants and
// the daemon's API give one completed and one compensated saga.
func TestQuickStart(t *testing.T) {
	log.SetOutput(io.Discard)
	parts := httptest.NewServer(handler())
	defer parts.Close()
	spec, err := os.ReadFile(filepath.Join("..", "definitions", "order.json"))
	if err != nil {
		t.Fatal(err)
	}
	spec = []byte(strings.ReplaceAll(string(spec), "http://127.0.0.1:9001", parts.URL))

	path := filepath.Join(t.TempDir(), "sagad.db")
	eng, err := engine.Open(path, engine.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	defs := httpapi.NewDefinitions(eng, nil)
	api, err := httpapi.New(httpapi.Config{Engine: eng, Definitions: defs})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api)
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = eng.Run(ctx) }()
	defer func() { cancel(); <-done }()

	c, err := client.New(srv.URL, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutDefinition(ctx, "order", spec); err != nil {
		t.Fatalf("put the example definition: %v", err)
	}
	for _, tc := range []struct {
		input map[string]string
		want  string
	}{
		{map[string]string{"order": "A-1042"}, "completed"},
		{map[string]string{"card": "declined"}, "compensated"},
	} {
		res, err := c.Start(ctx, "order", tc.input, client.StartOptions{Wait: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if res.Saga == nil || res.Saga.Status != tc.want {
			t.Fatalf("saga with input %v: %+v, want %s", tc.input, res.Saga, tc.want)
		}
		if tc.want == "completed" && len(res.Saga.Data) != 3 {
			t.Errorf("completed saga's data %v: want what each of the 3 participants answered", res.Saga.Data)
		}
		if tc.want == "compensated" && res.Saga.Steps[0].Status != "compensated" {
			t.Errorf("declined saga's steps %+v: want reserve compensated", res.Saga.Steps)
		}
	}
}

package httpapi_test

import (
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sagad/sagad/engine"
)

// Definitions are stored: a restarted daemon that loads them drives the
// sagas that were running with the version they started with, and starts
// new ones with the latest.
func TestDefinitionsSurviveRestart(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	g := p.gate() // holds the first call to /first until the first daemon gives up on it
	p.on("/first", g.hold(first, status(http.StatusOK)))
	spec := func(second string) string {
		return fmt.Sprintf(`{"steps":[{"name":"first","action":{"url":"%[1]s/first"}},
			{"name":"second","action":{"url":"%[1]s/%[2]s"}}]}`, p.URL(), second)
	}
	path := filepath.Join(t.TempDir(), "sagad.db")
	a := newAPIWith(t, options{path: path, engine: func(o *engine.Options) { o.ShutdownGrace = 50 * time.Millisecond }})
	v1 := a.put(t, "order", spec("old"), http.StatusCreated)
	id := a.start(t, "order", map[string]int{"n": 1})
	g.waitEntered(t, "the first step")
	v2 := a.put(t, "order", spec("new"), http.StatusCreated)
	a.stop() // cuts the attempt in flight off after the grace: recovery runs it again

	b := newAPIWith(t, options{path: path, load: true})
	if b.loaded != 2 {
		t.Errorf("Definitions.Load registered %d versions, want 2", b.loaded)
	}
	if d, err := b.c.Definition(ctx(t), "order"); err != nil || d.Version != v2.Version {
		t.Errorf("GET definition after the restart = %+v, %v; want the latest, version %s", d, err, v2.Version)
	}
	s := b.wait(t, id)
	requireStatus(t, s, "completed")
	if got := p.paths(id); !slices.Equal(got, []string{"/first", "/first", "/old"}) || s.Version != v1.Version {
		t.Errorf("the saga running at the restart (version %s) called %v, want version %s: the cut-off call again, then /old",
			s.Version, got, v1.Version)
	}
	if calls := p.callsTo("/first"); len(calls) != 2 || calls[0].Key != calls[1].Key || calls[1].Attempt != "1" {
		t.Errorf("first calls %+v: want the cut-off attempt run again as attempt 1 with the same key", calls)
	}
	fresh := b.run(t, "order", nil)
	if got := p.paths(fresh.ID); !slices.Equal(got, []string{"/first", "/new"}) || fresh.Version != v2.Version {
		t.Errorf("a saga started after the restart (version %s) called %v, want version %s calling /new", fresh.Version, got, v2.Version)
	}
}

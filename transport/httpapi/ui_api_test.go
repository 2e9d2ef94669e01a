package httpapi_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/sagad/sagad/client"
)

// The calls the web UI makes besides the CLI's: counts by status, a saga
// found by its idempotency key, and a definition's versions with the
// unfinished sagas on each.
func TestStatsKeyAndVersions(t *testing.T) {
	t.Parallel()
	a := newAPI(t, nil)
	p := newParticipant(t)
	p.on("/ok", status(200))
	p.on("/no", status(400))
	spec := func(path string) string {
		return fmt.Sprintf(`{"steps":[{"name":"one","action":{"url":"%s%s"}}]}`, p.URL(), path)
	}
	v1 := a.put(t, "shop", spec("/ok"), http.StatusCreated)
	a.run(t, "shop", nil)
	v2 := a.put(t, "shop", spec("/no"), http.StatusCreated)
	st, err := a.c.Start(ctx(t), "shop", map[string]int{"n": 1}, client.StartOptions{IdempotencyKey: "order-7", Wait: patience})
	if err != nil {
		t.Fatal(err)
	}

	var stats struct{ Counts map[string]int }
	a.sendJSON(t, http.MethodGet, "/v1/sagas/stats", "", http.StatusOK, &stats)
	if stats.Counts["completed"] != 1 || stats.Counts["compensated"] != 1 || len(stats.Counts) != 7 {
		t.Errorf("stats %v, want one completed, one compensated, every status present", stats.Counts)
	}
	var page client.Page
	a.sendJSON(t, http.MethodGet, "/v1/sagas?key=order-7", "", http.StatusOK, &page)
	if len(page.Sagas) != 1 || page.Sagas[0].ID != st.ID {
		t.Errorf("sagas by key: %+v, want %s", page.Sagas, st.ID)
	}
	a.sendJSON(t, http.MethodGet, "/v1/sagas?key=nope", "", http.StatusOK, &page)
	if len(page.Sagas) != 0 {
		t.Errorf("sagas by an unknown key: %+v, want none", page.Sagas)
	}

	// A saga that waits (its participant answers 202) counts as running
	// on the version it started on.
	p.on("/later", status(202))
	v3 := a.put(t, "shop", spec("/later"), http.StatusCreated)
	a.start(t, "shop", nil)
	// Start returns once the saga is stored, running.
	var vs struct {
		Versions []client.DefinitionVersion
	}
	a.sendJSON(t, http.MethodGet, "/v1/definitions/shop/versions", "", http.StatusOK, &vs)
	old := []string{v1.Version, v2.Version}
	if len(vs.Versions) != 3 || !slices.Contains(old, vs.Versions[0].Version) || !slices.Contains(old, vs.Versions[1].Version) ||
		vs.Versions[2].Version != v3.Version || !vs.Versions[2].Latest || vs.Versions[0].Latest || vs.Versions[1].Latest {
		t.Fatalf("versions %+v, want %s and %s, then %s (latest)", vs.Versions, v1.Version, v2.Version, v3.Version)
	}
	if vs.Versions[2].Unfinished != 1 || vs.Versions[0].Unfinished != 0 || vs.Versions[1].Unfinished != 0 {
		t.Errorf("versions %+v: want the waiting saga counted on the latest, none on the others", vs.Versions)
	}
	resp, body := a.send(t, http.MethodGet, "/v1/definitions/nope/versions", "", nil)
	requireProblem(t, resp, body, http.StatusNotFound, "no definition named nope")
}

// A callback's status is read as engine.StatusResult says: a 503 is
// retried, a 402 fails the step for good and the saga compensates.
func TestCompletedWithFailures(t *testing.T) {
	t.Parallel()
	a := newAPI(t, nil)
	p := newParticipant(t)
	p.on("/ok", status(200))
	statuses := []int{503, 402}
	p.on("/approve", func(n int, w http.ResponseWriter, r *http.Request) {
		id, attempt := r.Header.Get("X-Saga-Id"), r.Header.Get("X-Saga-Attempt")
		status := statuses[min(n, len(statuses))-1]
		go func() { // after the 202 is read, as a participant that works later would
			var n int
			fmt.Sscan(attempt, &n)
			_, _ = a.c.Complete(context.Background(), id, "approve", client.CompleteRequest{Phase: "action", Attempt: n, Status: status, Error: "no"})
		}()
		w.WriteHeader(http.StatusAccepted)
	})
	a.put(t, "gate", fmt.Sprintf(`{"steps":[{"name":"reserve","action":{"url":"%[1]s/ok"},"compensation":{"url":"%[1]s/ok"}},
		{"name":"approve","action":{"url":"%[1]s/approve","timeout":"1m"},"retry":{"max_attempts":5,"initial_interval":"10ms"}}]}`, p.URL()), http.StatusCreated)
	s := a.run(t, "gate", nil)
	requireStatus(t, s, "compensated")
	if st := step(t, s, "approve"); st.Attempts != 2 || !strings.Contains(st.Error, "402") {
		t.Errorf("approve: %d attempts, error %q; want the 503 retried and the 402 final", st.Attempts, st.Error)
	}
}

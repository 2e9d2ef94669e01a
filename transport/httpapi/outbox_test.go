package httpapi_test

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/sagad/sagad/client"
)

// Events a participant emits and lifecycle events wait in the outbox (no
// relay runs here); the outbox routes list, count and re-queue them.
func TestOutbox(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	p.on("/reserve", func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"reserved":true,"_events":[{"name":"stock.reserved","routing_key":"stock","payload":{"sku":"X"}}]}`)
	})
	a := newAPI(t, nil)
	a.put(t, "order", fmt.Sprintf(`{"steps":[{"name":"reserve","action":{"url":"%s/reserve"}}],
		"events":{"lifecycle":true,"exchange":"sagas"}}`, p.URL()), http.StatusCreated)
	s := a.run(t, "order", map[string]string{"order": "A-1"})
	requireStatus(t, s, "completed")
	if string(s.Data["reserve"]) != `{"reserved":true}` {
		t.Errorf("reserve's output %s, want it without _events", s.Data["reserve"])
	}

	var events []client.OutboxEvent
	cursor := ""
	for pages := 1; ; pages++ {
		page, err := a.c.OutboxList(ctx(t), "", cursor, 3)
		if err != nil {
			t.Fatalf("outbox list: %v", err)
		}
		events = append(events, page.Events...)
		if page.NextCursor == "" {
			break
		}
		if pages == 2 {
			t.Fatalf("a third page of 3 events: want 4 events in all")
		}
		cursor = page.NextCursor
	}
	var names []string
	for _, ev := range events {
		names = append(names, ev.Name)
		if ev.SagaID != s.ID || ev.Status != "new" || ev.Exchange != "sagas" {
			t.Errorf("event %+v: want saga %s, status new, exchange sagas", ev, s.ID)
		}
	}
	if want := []string{"saga.started", "stock.reserved", "step.succeeded", "saga.completed"}; !slices.Equal(names, want) {
		t.Fatalf("outbox events %v, want %v, oldest first", names, want)
	}
	if ev := events[1]; ev.RoutingKey != "stock" || string(ev.Payload) != `{"sku":"X"}` || ev.Step != "reserve" {
		t.Errorf("emitted event %+v: want routing key stock, payload {\"sku\":\"X\"}, step reserve", ev)
	}
	if ev := events[3]; ev.RoutingKey != "order.saga.completed" || !strings.Contains(string(ev.Payload), `"data":{"reserve":{"reserved":true}}`) {
		t.Errorf("saga.completed event %+v: want routing key order.saga.completed and the saga's data", ev)
	}

	st, err := a.c.OutboxStats(ctx(t))
	if err != nil {
		t.Fatalf("outbox stats: %v", err)
	}
	if st.Counts.New != 4 || st.Counts.Produced != 0 || st.Counts.NotProduced != 0 || st.OldestNew.IsZero() {
		t.Errorf("outbox stats %+v: want 4 new events and the age of the oldest", st)
	}
	var produced client.OutboxPage
	a.sendJSON(t, http.MethodGet, "/v1/outbox?status=produced", "", http.StatusOK, &produced)
	if produced.Events == nil || len(produced.Events) != 0 {
		t.Errorf("produced events %+v, want an empty array", produced.Events)
	}

	// A new event is waiting already: re-queueing it is a conflict.
	resp, body := a.send(t, http.MethodPost, "/v1/outbox/"+events[0].ID+"/requeue", "", nil)
	requireProblem(t, resp, body, http.StatusConflict, events[0].ID)
	resp, body = a.send(t, http.MethodPost, "/v1/outbox/nope/requeue", "", nil)
	requireProblem(t, resp, body, http.StatusBadRequest, `"nope"`)
}

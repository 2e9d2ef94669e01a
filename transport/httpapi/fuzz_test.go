package httpapi_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/sagad/sagad/client"
)

// FuzzStartSaga posts arbitrary bodies to POST /v1/sagas: the answer is a
// start (202), a duplicate (200) or a client error as a problem document,
// never a server error, and the server keeps answering.
func FuzzStartSaga(f *testing.F) {
	p := newParticipant(f)
	a := newAPI(f, nil)
	a.put(f, "order", `{"steps":[{"name":"only","action":{"url":"`+p.URL()+`/only"}}]}`, http.StatusCreated)

	for _, body := range []string{
		`{"definition":"order"}`,
		`{"definition":"order","input":{"order":"A-1","lines":[1,2,3]},"idempotency_key":"k1"}`,
		`{"definition":"order","idempotency_key":"k1"}`,
		`{"definition":"order","input":null}`,
		`{"definition":"order","input":1e999999}`,
		`{"definition":"order","input":123456789012345678901234567890123456789}`,
		`{"definition":"order","input":-0.0000000000000000000000001e-400}`,
		`{"definition":"order","input":{"a":[{"b":[[[[{"c":{}}]]]]}]}}`,
		`{"definition":"order","input":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`,
		`{"definition":"order","input":"\ud800"}`,
		"{\"definition\":\"order\",\"idempotency_key\":\"\xff\xfe\"}",
		`{"definition":"order","idempotency_key":""}`,
		`{"definition":"order","definition":"nope"}`,
		`{"definition":"nope"}`,
		`{"definition":""}`,
		`{"definition":null}`,
		`{"definition":["order"]}`,
		`{"definition":"order",`,
		`{"definition":"order"}{}`,
		`{"definition":"order","extra":1}`,
		`null`,
		`[]`,
		`"order"`,
		``,
		"\x00",
	} {
		f.Add(body)
	}
	f.Fuzz(func(t *testing.T, body string) {
		resp, data := a.send(t, http.MethodPost, "/v1/sagas", body, map[string]string{"Content-Type": "application/json"})
		switch code := resp.StatusCode; {
		case code == http.StatusAccepted:
			var st client.Started
			if err := json.Unmarshal(data, &st); err != nil || st.Status != "running" {
				t.Fatalf("202 body %s: want a started saga (%v)", data, err)
			}
			if _, err := ulid.ParseStrict(st.ID); err != nil || resp.Header.Get("Location") != "/v1/sagas/"+st.ID {
				t.Fatalf("202 with id %q and Location %q: want a ULID and its location", st.ID, resp.Header.Get("Location"))
			}
		case code == http.StatusOK:
			if resp.Header.Get(client.DuplicateHeader) != "true" {
				t.Fatalf("200 without %s: true for body %q (no wait was asked)", client.DuplicateHeader, body)
			}
		case code >= 400 && code <= 499:
			requireProblem(t, resp, data, code)
		default:
			t.Fatalf("body %q: answered %d %s, want 202, 200 or a 4xx problem", body, code, data)
		}
		if resp, data := a.send(t, http.MethodGet, "/healthz", "", nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("after body %q, /healthz answered %d %s", body, resp.StatusCode, data)
		}
	})
}

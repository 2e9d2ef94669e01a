package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage/bolt"
	"github.com/sagad/sagad/transport/httpapi"
)

// TestListCarriesNoData: saga input and step data have no size limit of
// their own, so a list page must not carry them (100 sagas of 1 MB each
// made a 100 MB page); GET /v1/sagas/{id} has them.
func TestListCarriesNoData(t *testing.T) {
	t.Parallel()
	const big = 200 << 10
	p := newParticipant(t)
	p.on("/big", func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"blob":%q}`, strings.Repeat("d", big))
	})
	a := newAPI(t, nil)
	a.put(t, "big", fmt.Sprintf(`{"steps":[{"name":"s","action":{"url":"%s/big"}}]}`, p.URL()), http.StatusCreated)
	input := map[string]string{"blob": strings.Repeat("i", big)}
	var ids []string
	for range 3 {
		s := a.run(t, "big", input)
		requireStatus(t, s, "completed")
		ids = append(ids, s.ID)
	}

	resp, body := a.send(t, http.MethodGet, "/v1/sagas", "", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/sagas answered %d: %.200s", resp.StatusCode, body)
	}
	if len(body) > 8<<10 {
		t.Errorf("GET /v1/sagas of 3 sagas with %d bytes of input and of data each is %d bytes, want under 8 KiB", big, len(body))
	}
	var raw struct {
		Sagas []map[string]json.RawMessage `json:"sagas"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatalf("GET /v1/sagas: %v", err)
	}
	if len(raw.Sagas) != len(ids) {
		t.Fatalf("GET /v1/sagas listed %d sagas, want %d", len(raw.Sagas), len(ids))
	}
	for _, item := range raw.Sagas {
		for _, field := range []string{"input", "data"} {
			if v, ok := item[field]; ok {
				t.Errorf("list item %s has %q (%d bytes), want none", item["id"], field, len(v))
			}
		}
		if _, ok := item["steps"]; !ok {
			t.Errorf("list item %s has no steps, want them (sagad sagas list shows the current step)", item["id"])
		}
	}
	page, err := a.c.List(ctx(t), client.ListOptions{})
	if err != nil || len(page.Sagas) != len(ids) {
		t.Fatalf("client List = %+v, %v; want %d sagas", page, err, len(ids))
	}

	// The saga itself has both.
	s, err := a.c.Get(ctx(t), ids[0])
	if err != nil {
		t.Fatalf("GET saga %s: %v", ids[0], err)
	}
	var in map[string]string
	if err := json.Unmarshal(s.Input, &in); err != nil || in["blob"] != input["blob"] {
		t.Errorf("GET saga %s: input of %d bytes (%v), want the %d-byte input it started with", s.ID, len(s.Input), err, big)
	}
	if d := s.Data["s"]; len(d) < big {
		t.Errorf("GET saga %s: data of step s is %d bytes, want the participant's %d-byte answer", s.ID, len(d), big)
	}
}

// TestIdempotencyKeys: a key is valid UTF-8 of at most 256 bytes (400
// otherwise, checked by the API whatever the engine does: encoding/json
// would turn different invalid keys into one); a key used again names its
// saga when the definition and input are the same (200 and
// Sagad-Duplicate) and is refused with a 409 that says why otherwise.
func TestIdempotencyKeys(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	a := newAPI(t, nil)
	a.put(t, "order", spec3(p.URL(), ""), http.StatusCreated)
	a.put(t, "other", spec3(p.URL(), ""), http.StatusCreated)

	// Each case uses its own keys; first (if set) is started before.
	tests := []struct {
		name   string
		first  string // body of a start made before body; it must answer 202
		body   string
		status int
		kind   string   // problem type after ProblemTypeBase, for a problem
		detail []string // substrings of the problem's detail
	}{
		{name: "invalid UTF-8", body: "{\"definition\":\"order\",\"idempotency_key\":\"k\xff1\"}",
			status: 400, kind: "invalid-idempotency-key", detail: []string{"idempotency_key", "UTF-8"}},
		{name: "another invalid byte", body: "{\"definition\":\"order\",\"idempotency_key\":\"k\xfe1\"}",
			status: 400, kind: "invalid-idempotency-key", detail: []string{"UTF-8"}},
		{name: "lone high surrogate escape", body: `{"definition":"order","idempotency_key":"k\ud800"}`,
			status: 400, kind: "invalid-idempotency-key", detail: []string{"surrogate"}},
		{name: "lone low surrogate escape", body: `{"definition":"order","idempotency_key":"\udc00k"}`,
			status: 400, kind: "invalid-idempotency-key"},
		{name: "reversed surrogate pair", body: `{"definition":"order","idempotency_key":"\ude00\ud83d"}`,
			status: 400, kind: "invalid-idempotency-key"},
		{name: "too long", body: `{"definition":"order","idempotency_key":"` + strings.Repeat("é", 129) + `"}`,
			status: 400, kind: "invalid-idempotency-key", detail: []string{"258 bytes", "256"}},
		{name: "longest", body: `{"definition":"order","idempotency_key":"` + strings.Repeat("l", 256) + `"}`, status: 202},
		{name: "surrogate pair escape", body: `{"definition":"order","idempotency_key":"pair-\ud83d\ude00"}`, status: 202},
		{name: "replacement character written", body: `{"definition":"order","idempotency_key":"fffd-` + "\uFFFD" + `-\ufffd"}`, status: 202},
		{name: "same input", first: `{"definition":"order","idempotency_key":"same","input":{"n":1,"s":"x"}}`,
			body: `{"definition":"order","idempotency_key":"same","input":{ "s" : "x", "n" : 1 }}`, status: 200},
		{name: "other input", first: `{"definition":"order","idempotency_key":"in","input":{"n":1}}`,
			body:   `{"definition":"order","idempotency_key":"in","input":{"n":2}}`,
			status: 409, kind: "idempotency-key-reused", detail: []string{`"in"`, "another input"}},
		{name: "input left out", first: `{"definition":"order","idempotency_key":"none","input":{"n":1}}`,
			body:   `{"definition":"order","idempotency_key":"none"}`,
			status: 409, kind: "idempotency-key-reused", detail: []string{`"none"`}},
		{name: "other definition", first: `{"definition":"order","idempotency_key":"def"}`,
			body:   `{"definition":"other","idempotency_key":"def"}`,
			status: 409, kind: "idempotency-key-reused", detail: []string{`"def"`, `"order"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var first client.Started
			if tt.first != "" {
				a.sendJSON(t, http.MethodPost, "/v1/sagas", tt.first, http.StatusAccepted, &first)
			}
			resp, body := a.send(t, http.MethodPost, "/v1/sagas", tt.body, nil)
			if tt.kind != "" {
				pr := requireProblem(t, resp, body, tt.status, tt.detail...)
				if pr.Type != httpapi.ProblemTypeBase+tt.kind {
					t.Errorf("problem type %q, want %s%s", pr.Type, httpapi.ProblemTypeBase, tt.kind)
				}
				return
			}
			if resp.StatusCode != tt.status {
				t.Fatalf("POST /v1/sagas %s answered %d, want %d: %s", tt.body, resp.StatusCode, tt.status, body)
			}
			var s client.Saga
			if err := json.Unmarshal(body, &s); err != nil {
				t.Fatalf("decode %s: %v", body, err)
			}
			if tt.first != "" {
				if s.ID != first.ID || resp.Header.Get(client.DuplicateHeader) != "true" {
					t.Errorf("repeated start answered saga %s with %s %q, want saga %s with true",
						s.ID, client.DuplicateHeader, resp.Header.Get(client.DuplicateHeader), first.ID)
				}
			}
		})
	}

	// Two different invalid keys started nothing, so they cannot have
	// named one saga.
	page, err := a.c.List(ctx(t), client.ListOptions{Limit: 1000})
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	for _, s := range page.Sagas {
		if strings.ContainsRune(s.IdempotencyKey, '\uFFFD') && !strings.HasPrefix(s.IdempotencyKey, "fffd-") {
			t.Errorf("saga %s has key %q: an invalid key was started with its bytes replaced", s.ID, s.IdempotencyKey)
		}
	}
}

// TestDefinitionLimits: a definition has at most saga.MaxSteps (100) steps
// (422) and at most Config.MaxDefinitionBytes of JSON (413, 256 KiB by
// default); a refused definition is neither stored nor registered.
func TestDefinitionLimits(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	steps := func(n, pad int) string {
		var b strings.Builder
		b.WriteString(`{"steps":[`)
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"name":"s%d","action":{"url":"%s/s","headers":{"X-Pad":%q}}}`, i, p.URL(), strings.Repeat("p", pad))
		}
		b.WriteString(`]}`)
		return b.String()
	}
	small := newAPI(t, func(c *httpapi.Config) { c.MaxDefinitionBytes = 4096 })
	defaults := newAPI(t, nil)

	tests := []struct {
		name   string
		a      *api
		spec   string
		status int
		kind   string
		detail []string
	}{
		{name: "100 steps", a: defaults, spec: steps(100, 0), status: 201},
		{name: "101 steps", a: defaults, spec: steps(101, 0), status: 422, kind: "invalid-definition",
			detail: []string{"101 steps", "limit of 100"}},
		{name: "at the size limit", a: small, spec: steps(1, 4096-len(steps(1, 0))), status: 201},
		{name: "over the size limit", a: small, spec: steps(1, 4097-len(steps(1, 0))), status: 413, kind: "definition-too-large",
			detail: []string{"4096 bytes"}},
		{name: "over the default size limit", a: defaults, spec: steps(1, 256<<10), status: 413, kind: "definition-too-large",
			detail: []string{"262144 bytes"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			name := fmt.Sprintf("limits-%d", i)
			if tt.kind == "" {
				d := tt.a.put(t, name, tt.spec, tt.status)
				if !tt.a.engine.HasDefinition(name, d.Version) {
					t.Errorf("%s version %s is not registered", name, d.Version)
				}
				return
			}
			resp, body := tt.a.send(t, http.MethodPut, "/v1/definitions/"+name, tt.spec, nil)
			pr := requireProblem(t, resp, body, tt.status, tt.detail...)
			if pr.Type != httpapi.ProblemTypeBase+tt.kind {
				t.Errorf("problem type %q, want %s%s", pr.Type, httpapi.ProblemTypeBase, tt.kind)
			}
			resp, body = tt.a.send(t, http.MethodGet, "/v1/definitions/"+name, "", nil)
			requireProblem(t, resp, body, http.StatusNotFound)
			if tt.a.engine.HasDefinition(name, "") {
				t.Errorf("refused definition %s is registered", name)
			}
		})
	}
}

// TestPutRefusedAfterStoring: the one refusal Put cannot foresee before it
// stores a definition is a breaker that Go code registered with the engine
// under the same name with other settings. The version is then stored but
// not registered, and the latest stored version stays the one before.
func TestPutRefusedAfterStoring(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	a := newAPI(t, nil)
	noop := func(context.Context, *saga.Call) (json.RawMessage, error) { return nil, nil }
	if err := a.engine.Register(&saga.Definition{Name: "go-code", Steps: []saga.Step{
		{Name: "s", Action: noop, Breaker: saga.BreakerPolicy{Name: "shared", Failures: 7}}}}); err != nil {
		t.Fatal(err)
	}
	v1 := a.put(t, "order", fmt.Sprintf(`{"steps":[{"name":"s","action":{"url":"%s/s"}}]}`, p.URL()), http.StatusCreated)
	v2spec := fmt.Sprintf(`{"steps":[{"name":"s","action":{"url":"%s/s"},"circuit_breaker":{"name":"shared","failures":3}}]}`, p.URL())
	resp, body := a.send(t, http.MethodPut, "/v1/definitions/order", v2spec, nil)
	requireProblem(t, resp, body, http.StatusUnprocessableEntity, `"shared"`, "stored but the engine refused it")
	if d, err := a.c.Definition(ctx(t), "order"); err != nil || d.Version != v1.Version {
		t.Errorf("GET definition after the refused PUT = version %q, %v; want version %s", d.Version, err, v1.Version)
	}
	if s := a.run(t, "order", nil); s.Version != v1.Version {
		t.Errorf("a saga started after the refused PUT runs version %s, want %s", s.Version, v1.Version)
	}
}

// TestLoadSkipsWhatNoLongerValidates: a stored version that cannot be
// registered any more (here one stored before the 100-step limit) does not
// stop the daemon: the other versions are registered and the error says
// which was skipped.
func TestLoadSkipsWhatNoLongerValidates(t *testing.T) {
	t.Parallel()
	p := newParticipant(t)
	path := filepath.Join(t.TempDir(), "sagad.db")
	eng, err := engine.Open(path, engine.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	spec := func(n int) []byte {
		var b strings.Builder
		b.WriteString(`{"steps":[`)
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"name":"s%d","action":{"url":"%s/s"}}`, i, p.URL())
		}
		b.WriteString(`]}`)
		return []byte(b.String())
	}
	err = eng.Store().(*bolt.DB).Update(func(tx *bolt.Tx) error {
		if _, err := tx.DefinitionPut("huge", "v1", spec(101)); err != nil {
			return err
		}
		_, err := tx.DefinitionPut("small", "v1", spec(2))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	n, err := httpapi.NewDefinitions(eng, nil).Load()
	if n != 1 || !errors.Is(err, httpapi.ErrDefinitionSkipped) || !strings.Contains(err.Error(), "huge") {
		t.Fatalf("Load = %d, %v; want 1 registered and huge named as skipped", n, err)
	}
	if !eng.HasDefinition("small", "") || eng.HasDefinition("huge", "") {
		t.Errorf("registered: small %v, huge %v; want small only", eng.HasDefinition("small", ""), eng.HasDefinition("huge", ""))
	}
}

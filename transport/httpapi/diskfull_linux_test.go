package httpapi_test

import (
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sagad/sagad/internal/diskfull"
	"github.com/sagad/sagad/transport/httpapi"
	"github.com/sagad/sagad/transport/httpstep"
)

// TestFailedPutRegistersNothing: a PUT of a definition that cannot be
// stored (here the disk is full) answers a 5xx problem and registers
// nothing: the engine does not know the version, new sagas start on the
// version stored before, and a restarted daemon knows the same versions.
func TestFailedPutRegistersNothing(t *testing.T) {
	t.Parallel()
	dir := diskfull.Mount(t, 4<<20)
	p := newParticipant(t)
	spec := func(pad int) string {
		return fmt.Sprintf(`{"steps":[{"name":"s","action":{"url":"%s/s","headers":{"X-Pad":%q}}}]}`, p.URL(), strings.Repeat("p", pad))
	}
	apiLog := &errorLog{} // the failed PUT is logged at level Error, on purpose
	path := filepath.Join(dir, "sagad.db")
	a := newAPIWith(t, options{path: path, server: func(c *httpapi.Config) { c.Logger = slog.New(apiLog) }})
	v1 := a.put(t, "order", spec(0), http.StatusCreated)

	// A version bbolt must write new pages for.
	v2spec := spec(128 << 10)
	sp, err := httpstep.Parse("order", []byte(v2spec))
	if err != nil {
		t.Fatal(err)
	}
	v2, err := sp.Definition("order", nil)
	if err != nil {
		t.Fatal(err)
	}
	free := diskfull.Fill(t, dir)
	resp, body := a.send(t, http.MethodPut, "/v1/definitions/order", v2spec, nil)
	requireProblem(t, resp, body, http.StatusInternalServerError)
	if msgs := apiLog.messages(); len(msgs) != 1 || !strings.Contains(msgs[0], "no space left on device") {
		t.Errorf("the API logged %q, want one error about the full disk", msgs)
	}
	if a.engine.HasDefinition("order", v2.Version) {
		t.Errorf("version %s, which could not be stored, is registered", v2.Version)
	}
	if d, err := a.c.Definition(ctx(t), "order"); err != nil || d.Version != v1.Version {
		t.Errorf("GET definition after the failed PUT = version %q, %v; want version %s", d.Version, err, v1.Version)
	}

	free()
	s := a.run(t, "order", nil)
	if s.Version != v1.Version {
		t.Errorf("a saga started after the failed PUT runs version %s, want %s (the stored one)", s.Version, v1.Version)
	}
	a.stop()

	b := newAPIWith(t, options{path: path, load: true})
	if b.loaded != 1 {
		t.Errorf("after a restart, Definitions.Load registered %d versions, want 1", b.loaded)
	}
	if d, err := b.c.Definition(ctx(t), "order"); err != nil || d.Version != v1.Version {
		t.Errorf("GET definition after the restart = version %q, %v; want version %s", d.Version, err, v1.Version)
	}
}

package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/cockroachdb/errors"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/transport/httpstep"
)

// Definitions keeps declarative definitions: it registers them with the
// engine and stores every version in the engine's database, so that a
// restarted daemon (or the offline CLI) drives the sagas that use them.
type Definitions struct {
	eng    *engine.Engine
	client *http.Client
	// mu serialises Load and Put: the engine's latest and the stored latest
	// agree, and breakers is the engine's view.
	mu sync.Mutex
	// breakers holds the settings of every circuit breaker named by a
	// definition registered through d, as the engine keeps them: Put
	// refuses a definition the engine would refuse before storing it.
	breakers map[string]saga.BreakerPolicy
}

// NewDefinitions returns a store for eng's declarative definitions whose
// HTTP steps call participants with httpClient (nil: httpstep's default).
func NewDefinitions(eng *engine.Engine, httpClient *http.Client) *Definitions {
	return &Definitions{eng: eng, client: httpClient, breakers: make(map[string]saga.BreakerPolicy)}
}

// ErrDefinitionSkipped marks the error Load returns when it could not
// register some stored versions (one that no longer validates, such as one
// stored before saga.MaxSteps, or one refused by the engine). The other
// versions are registered; the skipped versions' sagas are parked.
var ErrDefinitionSkipped = errors.New("httpapi: stored definition skipped")

// Load registers every stored version of every definition (each name's
// latest last, so new sagas use it) and returns how many it registered. A
// version that cannot be registered does not stop the others: Load goes on
// and returns an error marked ErrDefinitionSkipped that names each one.
func (d *Definitions) Load() (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	stored, err := d.eng.Store().DefinitionList(context.Background())
	if err != nil {
		return 0, errors.Wrap(err, "httpapi: load definitions")
	}
	n := 0
	var skipped []error
	for _, sd := range stored {
		def, err := d.build(sd.Name, sd.Spec)
		if err == nil {
			err = d.register(def)
		}
		if err != nil {
			skipped = append(skipped, errors.Wrapf(err, "stored definition %s version %s", sd.Name, sd.Version))
			continue
		}
		n++
	}
	if len(skipped) > 0 {
		return n, errors.Mark(errors.WithHint(errors.Wrapf(errors.Join(skipped...), "httpapi: %d of %d stored definition versions skipped",
			len(skipped), len(stored)), "their sagas are parked; put a corrected version of the definition to start new ones"),
			ErrDefinitionSkipped)
	}
	return n, nil
}

// build parses spec and builds the definition it describes, validated
// (saga.Definition.Validate) but not registered.
func (d *Definitions) build(name string, spec []byte) (*saga.Definition, error) {
	sp, err := httpstep.Parse(name, spec)
	if err != nil {
		return nil, err
	}
	return sp.Definition(name, d.client)
}

// checkBreakers refuses a definition that gives a circuit breaker other
// settings than a registered definition does, as engine.Register would.
func (d *Definitions) checkBreakers(def *saga.Definition) error {
	for _, st := range def.Steps {
		if st.Breaker.Name == "" {
			continue
		}
		p := st.Breaker.WithDefaults()
		if q, ok := d.breakers[p.Name]; ok && q != p {
			return errors.Mark(errors.Newf("httpapi: definition %q: step %q: breaker %q is registered with other settings (%+v, not %+v)",
				def.Name, st.Name, p.Name, q, p), saga.ErrInvalidDefinition)
		}
	}
	return nil
}

// register registers def with the engine and records its breakers.
func (d *Definitions) register(def *saga.Definition) error {
	if err := d.eng.Register(def); err != nil {
		return err
	}
	for _, st := range def.Steps {
		if st.Breaker.Name != "" {
			d.breakers[st.Breaker.Name] = st.Breaker.WithDefaults()
		}
	}
	return nil
}

// Put stores and registers a definition. A definition whose text differs
// from every stored version becomes a new version (Created); sagas already
// running keep the version they started with.
//
// The definition is validated, then stored, then registered: a version
// that could not be stored (a full disk) is not registered either, so no
// saga starts on a version that a restart would not know. The one refusal
// the checks before storing cannot foresee is a circuit breaker that Go
// code registered with the engine directly under the same name with other
// settings: the stored version is then not made the latest, and Put
// returns the engine's error.
func (d *Definitions) Put(name string, spec []byte) (*client.Definition, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	def, err := d.build(name, spec)
	if err == nil {
		err = d.checkBreakers(def)
	}
	if err != nil {
		return nil, err
	}
	text := compact(spec)
	// d.mu makes the read and the write one step for this daemon.
	ctx := context.Background()
	prev, _, err := d.eng.Store().DefinitionGet(ctx, name, "") // the latest version before this Put
	if err != nil {
		return nil, errors.Wrapf(err, "httpapi: read definition %s", name)
	}
	created, err := d.eng.Store().DefinitionPut(ctx, name, def.Version, text)
	if err != nil {
		return nil, errors.Wrapf(err, "httpapi: store definition %s", name)
	}
	if err := d.register(def); err != nil {
		return nil, d.unstore(def, prev, err)
	}
	return &client.Definition{Name: name, Version: def.Version, Spec: text, Created: created}, nil
}

// unstore makes prev the stored latest version of def's name again after
// the engine refused def (regErr), which Put has stored, and returns the
// error that says so. The refused text stays stored (storage cannot remove
// a version), and Load, which registers every stored version, will refuse
// it too: the error's hint says so.
func (d *Definitions) unstore(def *saga.Definition, prev *storage.StoredDefinition, regErr error) error {
	err := errors.WithHint(errors.Wrapf(regErr, "httpapi: definition %s version %s was stored but the engine refused it", def.Name, def.Version),
		"new sagas do not use it, but Load (the daemon's next start) registers every stored version and will refuse it "+
			"as long as the engine is given what it conflicts with")
	if prev == nil || prev.Version == def.Version {
		return err
	}
	if _, uerr := d.eng.Store().DefinitionPut(context.Background(), prev.Name, prev.Version, prev.Spec); uerr != nil {
		return errors.CombineErrors(err, errors.Wrapf(uerr, "httpapi: make version %s of %s the latest again", prev.Version, prev.Name))
	}
	return err
}

// compact strips insignificant whitespace from valid JSON.
func compact(spec []byte) json.RawMessage {
	var b bytes.Buffer
	if json.Compact(&b, spec) != nil {
		return spec
	}
	return b.Bytes()
}

// Get returns the latest stored version of a definition.
func (d *Definitions) Get(name string) (*client.Definition, bool, error) {
	sd, ok, err := d.eng.Store().DefinitionGet(context.Background(), name, "")
	if err != nil || !ok {
		return nil, false, errors.Wrap(err, "httpapi: get definition")
	}
	return &client.Definition{Name: sd.Name, Version: sd.Version, Spec: sd.Spec}, true, nil
}

// List returns the latest version of every stored definition, by name.
func (d *Definitions) List() ([]client.Definition, error) {
	out := []client.Definition{}
	stored, err := d.eng.Store().DefinitionList(context.Background())
	for _, sd := range stored {
		if sd.Latest {
			out = append(out, client.Definition{Name: sd.Name, Version: sd.Version, Spec: sd.Spec})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, errors.Wrap(err, "httpapi: list definitions")
}

// Versions returns every stored version of a definition, the latest last,
// with how many unfinished sagas run on each.
func (d *Definitions) Versions(ctx context.Context, name string) ([]client.DefinitionVersion, error) {
	stored, err := d.eng.Store().DefinitionList(ctx)
	if err != nil {
		return nil, errors.Wrap(err, "httpapi: list definitions")
	}
	counts, err := d.eng.VersionCounts(ctx, name)
	if err != nil {
		return nil, err
	}
	out := []client.DefinitionVersion{}
	for _, sd := range stored {
		if sd.Name == name {
			out = append(out, client.DefinitionVersion{Version: sd.Version, Latest: sd.Latest, Spec: sd.Spec, Unfinished: counts[sd.Version]})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return !out[i].Latest && out[j].Latest })
	return out, nil
}

// LoadDir puts every *.json file of dir as the definition named after the
// file (orders.json defines "orders") and returns how many it read.
func (d *Definitions) LoadDir(dir string) (int, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return 0, errors.Wrapf(err, "httpapi: definitions in %s", dir)
	}
	if _, err := os.Stat(dir); err != nil {
		return 0, errors.Wrapf(err, "httpapi: definitions directory")
	}
	for _, f := range files {
		spec, err := os.ReadFile(f)
		if err != nil {
			return 0, errors.Wrapf(err, "httpapi: definition file")
		}
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		if _, err := d.Put(name, spec); err != nil {
			return 0, errors.Wrapf(err, "httpapi: definition file %s", f)
		}
	}
	return len(files), nil
}

func (s *Server) putDefinition(w http.ResponseWriter, r *http.Request) {
	limit := s.cfg.MaxDefinitionBytes
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	spec, err := readBody(r)
	// Below the body limit, the definition's limit is the one that was hit.
	if ae := (*apiError)(nil); errors.As(err, &ae) && ae.kind == "body-too-large" && limit < s.cfg.MaxBodyBytes {
		err = &apiError{http.StatusRequestEntityTooLarge, "definition-too-large",
			errors.Newf("definition is larger than %d bytes, the limit on a definition's JSON text", limit)}
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	d, err := s.cfg.Definitions.Put(r.PathValue("name"), spec)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	status := http.StatusOK
	if d.Created {
		status = http.StatusCreated
		w.Header().Set("Location", "/v1/definitions/"+d.Name)
	}
	writeJSON(w, status, d)
}

func (s *Server) getDefinition(w http.ResponseWriter, r *http.Request) {
	d, ok, err := s.cfg.Definitions.Get(r.PathValue("name"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if !ok {
		writeProblem(w, r, http.StatusNotFound, "definition-not-found", "no definition named "+r.PathValue("name"))
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (s *Server) definitionVersions(w http.ResponseWriter, r *http.Request) {
	vs, err := s.cfg.Definitions.Versions(r.Context(), r.PathValue("name"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if len(vs) == 0 {
		writeProblem(w, r, http.StatusNotFound, "definition-not-found", "no definition named "+r.PathValue("name"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"name": r.PathValue("name"), "versions": vs})
}

func (s *Server) listDefinitions(w http.ResponseWriter, r *http.Request) {
	defs, err := s.cfg.Definitions.List()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"definitions": defs})
}

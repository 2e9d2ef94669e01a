package httpapi

import (
	"bytes"
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
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/transport/httpstep"
)

// Definitions keeps declarative definitions: it registers them with the
// engine and stores every version in the engine's database, so that a
// restarted daemon (or the offline CLI) drives the sagas that use them.
type Definitions struct {
	eng    *engine.Engine
	client *http.Client
	mu     sync.Mutex // serialises Put: the engine's latest and the stored latest agree
}

// NewDefinitions returns a store for eng's declarative definitions whose
// HTTP steps call participants with httpClient (nil: httpstep's default).
func NewDefinitions(eng *engine.Engine, httpClient *http.Client) *Definitions {
	return &Definitions{eng: eng, client: httpClient}
}

// Load registers every stored version of every definition (each name's
// latest last, so new sagas use it) and returns how many it registered.
func (d *Definitions) Load() (int, error) {
	var stored []*storage.StoredDefinition
	err := d.eng.DB().View(func(tx *storage.Tx) error {
		tx.DefinitionList(func(sd *storage.StoredDefinition) bool {
			stored = append(stored, sd)
			return true
		})
		return nil
	})
	if err != nil {
		return 0, errors.Wrap(err, "httpapi: load definitions")
	}
	for _, sd := range stored {
		if _, err := d.register(sd.Name, sd.Spec); err != nil {
			return 0, errors.Wrapf(err, "httpapi: stored definition %s version %s", sd.Name, sd.Version)
		}
	}
	return len(stored), nil
}

// register parses spec and registers it with the engine.
func (d *Definitions) register(name string, spec []byte) (string, error) {
	sp, err := httpstep.Parse(name, spec)
	if err != nil {
		return "", err
	}
	def, err := sp.Definition(name, d.client)
	if err != nil {
		return "", err
	}
	if err := d.eng.Register(def); err != nil {
		return "", err
	}
	return def.Version, nil
}

// Put registers and stores a definition. A definition whose text differs
// from every stored version becomes a new version (Created); sagas already
// running keep the version they started with.
//
// The definition is registered before it is stored: if storing fails, the
// version serves until a restart and Put returns the error, so that the
// caller puts it again.
func (d *Definitions) Put(name string, spec []byte) (*client.Definition, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	version, err := d.register(name, spec)
	if err != nil {
		return nil, err
	}
	var created bool
	err = d.eng.DB().Update(func(tx *storage.Tx) error {
		var err error
		created, err = tx.DefinitionPut(name, version, compact(spec))
		return err
	})
	if err != nil {
		return nil, errors.Wrapf(err, "httpapi: store definition %s", name)
	}
	return &client.Definition{Name: name, Version: version, Spec: compact(spec), Created: created}, nil
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
	var sd *storage.StoredDefinition
	var ok bool
	err := d.eng.DB().View(func(tx *storage.Tx) error {
		sd, ok = tx.DefinitionGet(name, "")
		return nil
	})
	if err != nil || !ok {
		return nil, false, errors.Wrap(err, "httpapi: get definition")
	}
	return &client.Definition{Name: sd.Name, Version: sd.Version, Spec: sd.Spec}, true, nil
}

// List returns the latest version of every stored definition, by name.
func (d *Definitions) List() ([]client.Definition, error) {
	out := []client.Definition{}
	err := d.eng.DB().View(func(tx *storage.Tx) error {
		tx.DefinitionList(func(sd *storage.StoredDefinition) bool {
			if sd.Latest {
				out = append(out, client.Definition{Name: sd.Name, Version: sd.Version, Spec: sd.Spec})
			}
			return true
		})
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, errors.Wrap(err, "httpapi: list definitions")
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
	spec, err := readBody(r)
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

func (s *Server) listDefinitions(w http.ResponseWriter, r *http.Request) {
	defs, err := s.cfg.Definitions.List()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"definitions": defs})
}

package httpapi

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"net/http"
)

// openAPI is the API's OpenAPI 3 document; TestOpenAPIMatchesRoutes holds
// it to the routes the server serves.
//
//go:embed openapi.json
var openAPI []byte

// defaultServer is the server URL the embedded document names.
var defaultServer = []byte(`"url": "http://127.0.0.1:8080"`)

// OpenAPI returns the API's OpenAPI 3 document.
func OpenAPI() []byte { return openAPI }

// openapi serves the document with its server set to the address the
// request came to, so that a client generated from it, or a tool that
// tries a route, talks to this daemon.
func (s *Server) openapi(w http.ResponseWriter, r *http.Request) {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	doc := openAPI
	if url, err := json.Marshal(scheme + "://" + r.Host); err == nil && r.Host != "" {
		doc = bytes.Replace(openAPI, defaultServer, append([]byte(`"url": `), url...), 1)
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(doc)
}

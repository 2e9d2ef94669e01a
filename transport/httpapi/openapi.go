package httpapi

import (
	_ "embed"
	"net/http"
)

// openAPI is the API's OpenAPI 3 document; TestOpenAPIMatchesRoutes holds
// it to the routes the server serves.
//
//go:embed openapi.json
var openAPI []byte

// OpenAPI returns the API's OpenAPI 3 document.
func OpenAPI() []byte { return openAPI }

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openAPI)
}

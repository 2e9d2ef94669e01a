package httpapi_test

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/sagad/sagad/transport/httpapi"
)

// openAPIMethods are the keys of an OpenAPI path item that are operations.
var openAPIMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

type openAPIParam struct {
	Name     string `json:"name"`
	In       string `json:"in"`
	Required bool   `json:"required"`
}

type openAPIOperation struct {
	Parameters []openAPIParam             `json:"parameters"`
	Responses  map[string]json.RawMessage `json:"responses"`
}

func TestOpenAPIMatchesRoutes(t *testing.T) {
	t.Parallel()
	a := newAPI(t, nil)
	resp, body := a.send(t, http.MethodGet, "/v1/openapi.json", "", nil)
	if resp.StatusCode != http.StatusOK || mediaType(resp) != "application/json" {
		t.Fatalf("GET /v1/openapi.json answered %d %q, want 200 application/json", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var doc struct {
		OpenAPI string `json:"openapi"`
		Info    struct {
			License struct{ Name string } `json:"license"`
		} `json:"info"`
		Servers []struct{ URL string }                `json:"servers"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("the OpenAPI document is not JSON: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Errorf(`"openapi" is %q, want 3.x`, doc.OpenAPI)
	}
	if doc.Info.License.Name == "" {
		t.Error("the OpenAPI document names no license")
	}
	// The served document is the embedded one but for its server, which
	// names the address the document was fetched from.
	if !strings.Contains(string(httpapi.OpenAPI()), `"url": "http://127.0.0.1:8080"`) {
		t.Error("the embedded document's server is not the default address")
	}
	if len(doc.Servers) != 1 || doc.Servers[0].URL != a.ts.URL {
		t.Errorf("servers %+v, want the address the document came from, %s", doc.Servers, a.ts.URL)
	}
	// Every operation has a unique operationId and a 4xx answer.
	ids := map[string]string{}
	for path, item := range doc.Paths {
		for method, raw := range item {
			if method == "parameters" {
				continue
			}
			var op struct {
				OperationID string                     `json:"operationId"`
				Responses   map[string]json.RawMessage `json:"responses"`
			}
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatalf("%s %s: %v", method, path, err)
			}
			if op.OperationID == "" || ids[op.OperationID] != "" {
				t.Errorf("%s %s: operationId %q missing or also on %s", method, path, op.OperationID, ids[op.OperationID])
			}
			ids[op.OperationID] = method + " " + path
			has4xx := false
			for code := range op.Responses {
				has4xx = has4xx || strings.HasPrefix(code, "4")
			}
			if !has4xx {
				t.Errorf("%s %s: no 4xx response documented", method, path)
			}
		}
	}

	var documented []string
	param := regexp.MustCompile(`\{([^}]+)\}`)
	for path, item := range doc.Paths {
		var pathParams []openAPIParam
		if raw, ok := item["parameters"]; ok {
			if err := json.Unmarshal(raw, &pathParams); err != nil {
				t.Errorf("%s: parameters: %v", path, err)
			}
		}
		for key, raw := range item {
			if !slices.Contains(openAPIMethods, key) {
				continue
			}
			op := strings.ToUpper(key) + " " + path
			documented = append(documented, op)
			var o openAPIOperation
			if err := json.Unmarshal(raw, &o); err != nil {
				t.Errorf("%s: %v", op, err)
				continue
			}
			if len(o.Responses) == 0 {
				t.Errorf("%s documents no response", op)
			}
			// Every {param} of the path is declared as a required path parameter.
			params := append(slices.Clone(pathParams), o.Parameters...)
			for _, m := range param.FindAllStringSubmatch(path, -1) {
				if !slices.ContainsFunc(params, func(p openAPIParam) bool { return p.Name == m[1] && p.In == "path" && p.Required }) {
					t.Errorf("%s does not declare its path parameter %q", op, m[1])
				}
			}
		}
	}
	routes := a.server.Routes()
	slices.Sort(documented)
	slices.Sort(routes)
	if !slices.Equal(documented, routes) {
		for _, r := range routes {
			if !slices.Contains(documented, r) {
				t.Errorf("route %q is not in the OpenAPI document", r)
			}
		}
		for _, d := range documented {
			if !slices.Contains(routes, d) {
				t.Errorf("the OpenAPI document has %q, which the server does not serve", d)
			}
		}
	}
}

// TestNonCanonicalPathsAreProblems writes every route of the OpenAPI
// document with an empty segment (/v1//sagas): the API names a resource by
// one path, documents no redirect, and answers every error as a problem, so
// each is a 404 problem, never net/http's HTML redirect to the clean path.
func TestNonCanonicalPathsAreProblems(t *testing.T) {
	t.Parallel()
	a := newAPI(t, nil)
	param := regexp.MustCompile(`\{[^}]+\}`)
	for _, route := range a.server.Routes() {
		method, path, _ := strings.Cut(route, " ")
		path = param.ReplaceAllString(path, "01J9Z3K8Q5W6X7Y8Z9A0B1C2D3")
		odd := strings.Replace(path, "/", "//", 1+strings.Count(path, "/")/2)
		t.Run(method+" "+odd, func(t *testing.T) {
			t.Parallel()
			req, err := http.NewRequestWithContext(ctx(t), method, a.ts.URL+odd, nil)
			if err != nil {
				t.Fatal(err)
			}
			c := *a.ts.Client()
			c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			requireProblem(t, resp, body, http.StatusNotFound, "not canonical", "write it as "+path)
			if loc := resp.Header.Get("Location"); loc != "" {
				t.Errorf("Location %q: want no redirect", loc)
			}
		})
	}
}

// Package webui is sagad's web UI: the sagas, a saga's step timeline, the
// definitions drawn as diagrams, the outbox, and the operator's actions,
// in a browser. It is static files embedded in the binary (no build step,
// nothing from the network) that call sagad's documented HTTP API from the
// browser, with the API's bearer token when the daemon has one: the UI
// asks for it once and keeps it for the browser tab only (sessionStorage;
// never in a URL).
//
// Handler serves it under /ui/; mount it next to the API on one listener,
// as sagad serve does:
//
//	mux := http.NewServeMux()
//	mux.Handle("/ui/", webui.Handler())
//	mux.Handle("/", api)
package webui

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"regexp"
	"strings"
	"time"
)

//go:embed assets
var assets embed.FS

// pages are the UI's paths; any other path under /ui/ is the UI's own
// not-found page, answered 404.
var pages = regexp.MustCompile(`^/ui/(|login|outbox|definitions|definitions/[A-Za-z0-9][A-Za-z0-9._-]{0,127}|sagas/[0-9A-Za-z]{26})$`)

// Handler returns the UI's handler for every path under /ui/. It answers
// /ui (without the slash) with a redirect to /ui/.
func Handler() http.Handler {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServerFS(sub)
	index, err := fs.ReadFile(sub, "index.html")
	if err != nil {
		panic(err)
	}
	// Embedded files have no modification time: an ETag of their content
	// lets a browser revalidate them (304) instead of fetching them again.
	etags := map[string]string{}
	err = fs.WalkDir(sub, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(sub, name)
		sum := sha256.Sum256(b)
		etags["/"+name] = `"` + hex.EncodeToString(sum[:8]) + `"`
		return err
	})
	if err != nil {
		panic(err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// Nothing but these files and the API: no inline script, no
		// other origin, no framing.
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "+
			"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		switch {
		case r.Method != http.MethodGet && r.Method != http.MethodHead:
			h.Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		case r.URL.Path == "/ui":
			http.Redirect(w, r, "/ui/", http.StatusMovedPermanently)
		case strings.HasPrefix(r.URL.Path, "/ui/assets/"):
			h.Set("Cache-Control", "no-cache") // revalidated: a new binary serves new files
			r2 := r.Clone(r.Context())
			r2.URL.Path = strings.TrimPrefix(r.URL.Path, "/ui/assets")
			if tag, ok := etags[r2.URL.Path]; ok {
				h.Set("ETag", tag) // FileServer answers a matching If-None-Match with 304
			}
			files.ServeHTTP(w, r2)
		default:
			h.Set("Content-Type", "text/html; charset=utf-8")
			h.Set("Cache-Control", "no-cache")
			if !pages.MatchString(r.URL.Path) {
				w.WriteHeader(http.StatusNotFound) // the page says so too
				_, _ = w.Write(index)
				return
			}
			h.Set("ETag", etags["/index.html"])
			http.ServeContent(w, r, "index.html", time.Time{}, bytes.NewReader(index))
		}
	})
}

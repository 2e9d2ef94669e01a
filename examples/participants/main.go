// Command participants serves toy participants for the sagad daemon's quick
// start: an inventory and a payment service on one port. Each endpoint
// follows the participant protocol (see transport/httpstep): it reads the
// JSON body, remembers the Idempotency-Key so a repeated call does nothing
// new, and answers with JSON. An order whose input has "card": "declined"
// makes /charge answer 402, so the saga is compensated.
//
//	go run ./examples/participants            # listens on 127.0.0.1:9001
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"sync"
	"time"
)

type call struct {
	SagaID string          `json:"saga_id"`
	Step   string          `json:"step"`
	Phase  string          `json:"phase"`
	Input  json.RawMessage `json:"input"`
}

func main() {
	addr := flag.String("listen", "127.0.0.1:9001", "listen address")
	flag.Parse()
	log.Fatal(run(*addr))
}

func run(addr string) error {
	log.Printf("participants listening on %s", addr)
	srv := &http.Server{Addr: addr, Handler: handler(), ReadHeaderTimeout: 5 * time.Second}
	return srv.ListenAndServe()
}

// handler serves the participants' endpoints.
func handler() http.Handler {
	var mu sync.Mutex
	done := map[string]bool{} // idempotency keys already handled
	handle := func(what string, fail func(call) bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var c call
			if err := json.NewDecoder(r.Body).Decode(&c); err != nil {
				http.Error(w, `{"error":"bad request body"}`, http.StatusBadRequest)
				return
			}
			key := r.Header.Get("Idempotency-Key")
			mu.Lock()
			repeat := done[key]
			done[key] = true
			mu.Unlock()
			if fail != nil && fail(c) {
				log.Printf("%-8s saga %s: declined", what, c.SagaID)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusPaymentRequired)
				fmt.Fprint(w, `{"error":"card declined"}`)
				return
			}
			log.Printf("%-8s saga %s (repeat: %v)", what, c.SagaID, repeat)
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{%q: %q, "at": %q}`, what, "ok", time.Now().UTC().Format(time.RFC3339))
		}
	}
	declined := func(c call) bool {
		var in struct{ Card string }
		_ = json.Unmarshal(c.Input, &in)
		return in.Card == "declined"
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /reserve", handle("reserve", nil))
	mux.HandleFunc("POST /release", handle("release", nil))
	mux.HandleFunc("POST /charge", handle("charge", declined))
	mux.HandleFunc("POST /refund", handle("refund", nil))
	mux.HandleFunc("POST /ship", handle("ship", nil))
	return mux
}

package httpstep_test

import (
	"fmt"

	"github.com/sagad/sagad/transport/httpstep"
)

// A one-step definition: reserve stock at the inventory service, retried
// up to 3 times; if that fails for good, reserve at a second warehouse; if a
// later step fails, release the reservation. A breaker named "inventory"
// guards the service. The definition is registered with an engine as any
// other (engine.Register).
func ExampleParse() {
	spec, err := httpstep.Parse("order", []byte(`{"steps": [
  {"name": "reserve",
   "action":       {"url": "http://127.0.0.1:9001/reserve", "method": "POST", "timeout": "2s"},
   "compensation": {"url": "http://127.0.0.1:9001/release", "retry": {"max_attempts": 10}},
   "retry": {"max_attempts": 3, "initial_interval": "50ms", "max_interval": "1s", "multiplier": 2},
   "fallback": {"url": "http://127.0.0.1:9002/reserve"},
   "circuit_breaker": {"name": "inventory", "failures": 5, "open_for": "10s"}}
 ],
 "timeout": "30s",
 "events": {"lifecycle": true, "exchange": "sagas"}}`))
	if err != nil {
		panic(err)
	}
	def, err := spec.Definition("order", nil) // nil: the default HTTP client
	if err != nil {
		panic(err)
	}
	st := def.Steps[0]
	fmt.Printf("definition %s, version %s, deadline %s, lifecycle events to %q\n",
		def.Name, def.Version, def.Timeout, def.Events.Exchange)
	fmt.Printf("step %s: %d attempts %s to %s apart, then the fallback\n",
		st.Name, st.Retry.MaxAttempts, st.Retry.InitialInterval, st.Retry.MaxInterval)
	fmt.Printf("compensation: %d attempts; attempts time out after %s; breaker %s\n",
		st.CompensationRetry.MaxAttempts, st.Timeout, st.Breaker.Name)
	// Output:
	// definition order, version 5432f448cb59bff0, deadline 30s, lifecycle events to "sagas"
	// step reserve: 3 attempts 50ms to 1s apart, then the fallback
	// compensation: 10 attempts; attempts time out after 30s; breaker inventory
}

// Errors name the JSON path of the field at fault.
func ExampleParse_error() {
	_, err := httpstep.Parse("order", []byte(`{"steps": [
  {"name": "reserve", "action": {"url": "http://127.0.0.1:9001/reserve"}},
  {"name": "charge",  "action": {"url": "/charge", "timeout": "2s"}}
]}`))
	fmt.Println(err)
	// Output:
	// httpstep: definition "order": steps[1].action.url: must be an absolute http or https URL (got "/charge")
}

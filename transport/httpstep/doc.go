// Package httpstep builds sagas from declarative JSON definitions whose
// steps call remote participants over HTTP, or send them commands over
// AMQP.
//
// Parse decodes and validates a Spec; Spec.Definition turns it into a
// saga.Definition to register with the engine. The package knows nothing
// about storage, the engine or the API server: it only produces step
// functions (saga.Func) that speak the protocol below.
//
// # Definition
//
//	{
//	  "steps": [
//	    {
//	      "name": "reserve",                                  // required, [A-Za-z0-9][A-Za-z0-9._-]{0,127}, unique
//	      "action": {                                          // required
//	        "url": "http://127.0.0.1:9001/reserve",            // required, absolute http:// or https://
//	        "method": "POST",                                  // POST (default), PUT, PATCH or DELETE
//	        "timeout": "2s",                                   // per attempt; default "30s"
//	        "retry": {...},                                    // the action's retry policy (or the step's "retry")
//	        "headers": {"Authorization": "Bearer ..."}         // extra request headers
//	      },
//	      "compensation": {"url": "...", "retry": {"max_attempts": 10}},  // optional, same fields
//	      "fallback": {"url": "http://127.0.0.1:9002/reserve"},           // optional, same fields but no retry: it runs once
//	      "retry": {                                           // the action's retry policy; not with action.retry
//	        "max_attempts": 3,                                 // attempts in all; 0: 3 (10 for a compensation); negative: unlimited
//	        "initial_interval": "50ms",                        // default "100ms"
//	        "max_interval": "1s",                              // default "30s"
//	        "multiplier": 2,                                   // default 2
//	        "max_elapsed": "1m"                                // default: no limit
//	      },
//	      "circuit_breaker": {                                 // optional; steps naming the same breaker share it
//	        "name": "inventory",                               // required
//	        "failures": 5,                                     // consecutive failures that open it; default 5
//	        "open_for": "10s",                                 // default "30s"
//	        "half_open_requests": 1                            // default 1
//	      },
//	      "pivot": false,                                      // the point of no return (saga.Step.Pivot)
//	      "after": ["reserve"]                                 // the steps it waits for; absent: the one before; []: none
//	    }
//	  ],
//	  "timeout": "30s",                                        // the saga's deadline; default none
//	  "events": {"lifecycle": true, "exchange": "sagas"}       // lifecycle events (saga.Events)
//	}
//
// (Comments are for this page only: JSON has none.) Durations are Go
// duration strings ("150ms", "2s", "1m30s"); numbers are rejected, and so
// are negative durations. Field names are case-sensitive. Unknown fields, a
// field given twice, data after the object and a text larger than
// MaxSpecSize (1 MiB) are rejected; a null is the same as an absent field.
// Every error names the JSON path of the field at fault, such as
// steps[1].action.url, and is marked saga.ErrInvalidDefinition. Parse also
// applies saga.Definition.Validate (pivot rules and the like), and checks
// that steps naming the same circuit breaker give it the same settings.
//
// Each step maps onto a saga.Step: retry (or action.retry) is Step.Retry,
// compensation.retry is Step.CompensationRetry, circuit_breaker is
// Step.Breaker. Step.Timeout, which the engine applies to every attempt, is
// the largest of the step's call timeouts; each call also applies its own,
// and a call cut off by its own timeout after its request was sent is
// outcome unknown (below), as one cut off by the engine's would be.
// The definition's version (saga.Definition.Version) is a hash of the
// spec's canonical JSON: changing anything in it, a URL included, makes a
// new version, while whitespace and key order do not.
//
// # Participant protocol
//
// Every attempt of an action, fallback or compensation is one HTTP request
// to the call's URL with the call's method and this JSON body:
//
//	{
//	  "saga_id":    "01J...",             // the saga's id (a ULID)
//	  "definition": "order",              // the definition's name
//	  "step":       "reserve",            // the step's name
//	  "phase":      "action",             // "action", "fallback" or "compensation"
//	  "attempt":    1,                    // attempt of this phase, from 1
//	  "input":      {...},                // the saga's input; null if none
//	  "data":       {"earlier": {...}}    // outputs of the steps that succeeded before, by step name; {} if none
//	}
//
// and these headers, after the call's extra headers (which may replace
// Accept and User-Agent, and nothing else below):
//
//	Content-Type:      application/json
//	Accept:            application/json
//	User-Agent:        sagad
//	Idempotency-Key:   <saga id>/<step>/<phase>   stable across retries and restarts; differs between phases
//	X-Saga-Id:         <saga id>
//	X-Saga-Definition: <definition name>
//	X-Saga-Step:       <step name>
//	X-Saga-Phase:      action | fallback | compensation
//	X-Saga-Attempt:    <attempt>
//
// The engine runs every call at least once: again after a retry or a crash,
// with the same Idempotency-Key. A participant must de-duplicate on it.
//
// The answer decides the attempt's outcome. A failed attempt is either
// retryable (retried while the phase's retry policy allows; a fallback is
// never retried) or permanent (saga.Permanent: not retried, and a failed
// action goes to its fallback or to compensation). Either kind may also be
// outcome unknown (saga.OutcomeUnknown): the participant may have acted. If
// the saga then turns around, the step's compensation runs even though the
// step never succeeded (unless a later attempt with the same
// Idempotency-Key answered with a failure), so a compensation must tolerate
// an action that never happened.
//
//   - 202 Accepted means the participant answers later: the attempt waits
//     (saga.ErrPending) for POST /v1/sagas/{id}/steps/{step}/complete, or
//     for the call's timeout. (Earlier versions took 202 as a success:
//     a participant that means "done" must answer 200 or 204.)
//   - Any other 2xx succeeds. An empty body (or only whitespace, or 204) gives no
//     output. Any other body must be JSON of at most 1 MiB. If it is an
//     object, its top-level "_events" member, if present and not null, is
//     an array of integration events, each {"name", "routing_key",
//     "exchange", "payload", "headers"} as in saga.Event (name and payload
//     required; use null for no payload), that are written to the outbox
//     atomically with the step's success. The body without "_events",
//     compacted (other members keep their order), is the step's output:
//     later steps receive it as data[<step>].
//   - A 2xx whose body cannot be used (not JSON, larger than 1 MiB, an
//     "_events" member that is not an array of valid events, an unknown
//     field in an event) fails the attempt permanently, outcome unknown:
//     the participant says it acted. No event is emitted.
//   - A 2xx whose body does not arrive in full (the call's timeout, the
//     connection closed or reset before its end) fails the attempt,
//     retryable, outcome unknown.
//   - 408, 425, 429 and 5xx fail the attempt, retryable, no sooner than a
//     Retry-After header (delay seconds, or an HTTP date; a past date asks
//     for no wait) says, up to the retry policy's max_interval. The outcome counts as known: the participant (or
//     a proxy in front of it, even with 502 or 504) says it failed.
//   - Any other status (4xx, and 3xx: the default client does not follow
//     redirects) fails the attempt permanently. The error names the method,
//     URL and status and quotes the first 200 bytes of the body.
//   - No answer after the request was sent (the call's timeout while
//     waiting for the answer, the connection closed or reset) fails the
//     attempt, retryable, outcome unknown. "Sent" means the request's
//     headers were written to a connection, as net/http's client trace
//     (net/http/httptrace) reports; with a client whose transport reports
//     nothing, every failure without an answer counts as sent.
//   - No answer because the request was never sent (connection refused, a
//     DNS failure, the call's timeout while connecting, the engine's
//     context ended before the call began) fails the attempt, retryable;
//     nothing was done.
//
// An attempt cut off by the engine itself (the step's timeout, the saga's
// deadline) is outcome unknown whatever its error says; one cut off by
// shutdown is left in flight, for recovery to run again with the same
// Idempotency-Key.
//
// # AMQP calls
//
// An action, compensation or fallback may be a command to a participant
// that answers by message instead of an HTTP call:
//
//	"action": {
//	  "amqp": {
//	    "exchange": "",                                        // "" (default): the broker's default exchange
//	    "routing_key": "inventory.reserve",                    // required, at most 255 bytes
//	    "timeout": "30s"                                       // how long an attempt waits for the reply; default "30s";
//	                                                           // not shorter than the step's other calls' timeouts
//	  },
//	  "retry": {...},                                          // as for an HTTP call
//	  "headers": {"tenant": "acme"}                            // extra AMQP headers
//	}
//
// url, method and the call's own timeout do not go with amqp, and a step
// with a call over AMQP has no circuit_breaker. The engine has one timeout
// per step, the longest of its calls': an HTTP call applies its own shorter
// one, but a command waits for the step's, so an AMQP call must give it. The phase becomes a
// saga.Command (saga.Step.Commands): the command, with the body an HTTP
// call gets, goes to the outbox in the commit that records the attempt's
// start, and transport/rabbitmq publishes it and reads the reply (see that
// package for the message's properties and the reply's). A reply's status
// header means what a 202's callback status means (engine.StatusResult: 2xx
// success, 4xx other than 408, 425 and 429 permanent, the rest retried); its body is the step's data,
// or {"error": "..."} for a failure.
//
// The step functions return errors, with the method and URL as context; they
// never log.
package httpstep

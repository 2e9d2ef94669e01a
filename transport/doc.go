// Package transport connects sagas to the world outside the process. Its
// subpackages do the work:
//
//   - transport/rabbitmq relays the transactional outbox to RabbitMQ with
//     publisher confirms.
//   - transport/httpstep turns declarative JSON definitions into sagas
//     whose steps call participants over HTTP.
//   - transport/httpapi is the daemon's HTTP API, with its stored
//     definitions.
//
// Transports build on the engine and storage packages; the engine does not
// import them.
package transport

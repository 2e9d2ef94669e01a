// Package transport connects sagas to the world outside the process. Its
// subpackages do the work:
//
//   - transport/rabbitmq relays the transactional outbox to RabbitMQ with
//     publisher confirms.
//
// Transports build on the engine and storage packages; the engine does not
// import them.
package transport

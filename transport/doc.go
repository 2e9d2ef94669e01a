// Package transport connects sagas to the world outside the process: the
// relay that publishes the transactional outbox to RabbitMQ, and the HTTP
// calls through which remote services take part in sagas.
//
// It builds on the engine and the storage packages; the engine does not
// import it. The relay and the HTTP participant steps are being built; until
// then this package provides nothing.
package transport

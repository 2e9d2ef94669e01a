package saga

import (
	"context"

	"github.com/cockroachdb/errors"
)

// ErrEnlisted: a step's function handed the engine more than one
// transaction (Call.Enlist), or one after it returned.
var ErrEnlisted = errors.New("saga: a transaction is already enlisted")

// Tx is a transaction a step opened on the engine's own store and hands to
// the engine (Call.Enlist), which writes the step's success in it and
// commits it, or rolls it back if the attempt does not succeed. A pgx.Tx is
// one; storage/postgres's DB.Step makes such steps.
type Tx interface {
	Commit(ctx context.Context) error
	Rollback(ctx context.Context) error
}

// Enlist hands the engine tx: the step's own writes in it become durable
// together with the record of the step's success, in one transaction, and
// are rolled back with it otherwise (a failed attempt, a crash before the
// commit), so that they take effect exactly once. Only a store that can
// write a saga's transition in such a transaction takes one (the
// PostgreSQL backend, for a transaction on its database); with another the
// attempt fails. At most one per attempt, before the function returns.
func (c *Call) Enlist(tx Tx) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tx != nil || c.sealed {
		return errors.Wrapf(ErrEnlisted, "saga %s: step %q", c.SagaID, c.Step)
	}
	c.tx = tx
	return nil
}

// Enlisted returns the transaction the step enlisted, if any. The engine
// calls it once the step function has returned.
func (c *Call) Enlisted() Tx {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sealed = true
	return c.tx
}

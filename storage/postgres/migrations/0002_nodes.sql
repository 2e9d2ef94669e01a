-- sagad schema, version 2: several processes (nodes) share the schema.
-- A saga is driven by the node named in its owner column while that node
-- lives: a node renews its row in nodes (a lease on PostgreSQL's clock)
-- every third of its length, and one whose lease lapsed is dead to the
-- others, which take its sagas over. A saga's epoch grows with each new
-- claim and fences the writes of a node whose claim was taken.

CREATE TABLE {schema}.nodes (
    node     text   PRIMARY KEY,
    lease_ns bigint NOT NULL
);

ALTER TABLE {schema}.sagas
    ADD COLUMN owner text,
    ADD COLUMN epoch bigint NOT NULL DEFAULT 0;
CREATE INDEX sagas_owner ON {schema}.sagas (owner) WHERE owner IS NOT NULL AND status IN (1, 2);
-- Unfinished sagas with no wake time: those in flight, and any that need a
-- driver and have none.
CREATE INDEX sagas_undriven ON {schema}.sagas (id) WHERE status IN (1, 2) AND wake_ns IS NULL AND NOT parked;

-- The outbox's write order. Processes assign event ids (ULIDs) on their own
-- clocks, so ids do not order one saga's events once several processes
-- write them; seq does: a saga's next transition is written only after the
-- previous one committed, so its events draw higher numbers.
ALTER TABLE {schema}.outbox ADD COLUMN seq bigserial;
DROP INDEX {schema}.outbox_new;
CREATE INDEX outbox_new ON {schema}.outbox (seq) WHERE status = 1;

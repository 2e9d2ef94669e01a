-- sagad schema, version 2: several processes share the schema. Claims, so that
-- one drives each saga: the process named in owner, while its lease
-- (lease_ns, PostgreSQL's clock) lasts; epoch grows with each new claim and
-- fences the writes of a process whose claim lapsed.

ALTER TABLE {schema}.sagas
    ADD COLUMN owner    text,
    ADD COLUMN epoch    bigint NOT NULL DEFAULT 0,
    ADD COLUMN lease_ns bigint;
CREATE INDEX sagas_owner ON {schema}.sagas (owner) WHERE owner IS NOT NULL;
CREATE INDEX sagas_orphans ON {schema}.sagas (lease_ns) WHERE status IN (1, 2) AND wake_ns IS NULL AND owner IS NOT NULL;

-- The outbox's write order. Processes assign event ids (ULIDs) on their own
-- clocks, so ids do not order one saga's events once several processes
-- write them; seq does: a saga's next transition is written only after the
-- previous one committed, so its events draw higher numbers.
ALTER TABLE {schema}.outbox ADD COLUMN seq bigserial;
DROP INDEX {schema}.outbox_new;
CREATE INDEX outbox_new ON {schema}.outbox (seq) WHERE status = 1;

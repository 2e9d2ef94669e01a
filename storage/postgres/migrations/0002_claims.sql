-- sagad schema, version 2: claims, so that several processes share the
-- schema. A saga is driven by the process named in owner while its lease
-- (lease_ns, PostgreSQL's clock) lasts; epoch grows with each new claim and
-- fences the writes of a process whose claim lapsed.

ALTER TABLE {schema}.sagas
    ADD COLUMN owner    text,
    ADD COLUMN epoch    bigint NOT NULL DEFAULT 0,
    ADD COLUMN lease_ns bigint;
CREATE INDEX sagas_owner ON {schema}.sagas (owner) WHERE owner IS NOT NULL;
CREATE INDEX sagas_orphans ON {schema}.sagas (lease_ns) WHERE status IN (1, 2) AND wake_ns IS NULL AND owner IS NOT NULL;

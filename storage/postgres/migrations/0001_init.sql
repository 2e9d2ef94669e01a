-- sagad schema, version 1. {schema} is the configured schema, quoted.
-- Times are unix nanoseconds (bigint), as the engine records them; ids are
-- ULIDs stored as uuid.

CREATE TABLE {schema}.sagas (
    id              uuid     PRIMARY KEY,
    definition      text     NOT NULL,
    fingerprint     text     NOT NULL,
    status          smallint NOT NULL,   -- 1 running, 2 compensating, 3 completed, 4 compensated, 5 failed, 6 resolved
    wake_ns         bigint,              -- next attempt due; NULL when due now or finished
    idempotency_key text     UNIQUE,
    parked          boolean  NOT NULL,
    updated_ns      bigint   NOT NULL,
    log_seq         integer  NOT NULL,
    record          bytea    NOT NULL    -- the whole saga record (storage.Saga) as JSON; convert_from(record, 'UTF8')::json reads it
) WITH (fillfactor = 80);                -- room for updates that touch no index (HOT)
CREATE INDEX sagas_status ON {schema}.sagas (status, id);
CREATE INDEX sagas_definition ON {schema}.sagas (definition, id);
CREATE INDEX sagas_due ON {schema}.sagas (wake_ns, id) WHERE wake_ns IS NOT NULL;

CREATE TABLE {schema}.saga_log (
    saga_id uuid    NOT NULL REFERENCES {schema}.sagas (id) ON DELETE CASCADE,
    seq     integer NOT NULL,
    entry   bytea   NOT NULL,            -- storage.LogEntry as JSON
    PRIMARY KEY (saga_id, seq)
);

CREATE TABLE {schema}.aborts (
    saga_id      uuid   PRIMARY KEY REFERENCES {schema}.sagas (id) ON DELETE CASCADE,
    requested_ns bigint NOT NULL
);

CREATE TABLE {schema}.outbox (
    id          uuid      PRIMARY KEY,   -- a ULID: a saga's events in the order it emitted them
    saga_id     uuid      NOT NULL,
    status      smallint  NOT NULL DEFAULT 1, -- 1 new, 2 produced, 3 not_produced
    status_ns   bigint,
    attempts    integer   NOT NULL DEFAULT 0,
    last_error  text      NOT NULL DEFAULT '',
    definition  text      NOT NULL,
    step        text      NOT NULL,
    name        text      NOT NULL,
    exchange    text      NOT NULL,
    routing_key text      NOT NULL,
    headers     json,
    payload     bytea     NOT NULL,
    created_ns  bigint    NOT NULL
);
CREATE INDEX outbox_new ON {schema}.outbox (id) WHERE status = 1;
CREATE INDEX outbox_status ON {schema}.outbox (status, id);
CREATE INDEX outbox_not_produced ON {schema}.outbox (saga_id) WHERE status = 3;

CREATE TABLE {schema}.breakers (
    name  text  PRIMARY KEY,
    state bytea NOT NULL
);

CREATE SEQUENCE {schema}.definitions_put;
CREATE TABLE {schema}.definitions (
    name    text   NOT NULL,
    version text   NOT NULL,
    spec    bytea  NOT NULL,
    put     bigint NOT NULL,             -- the version put last is the latest
    PRIMARY KEY (name, version)
);

CREATE TABLE {schema}.counters (
    name  text   PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO {schema}.counters VALUES ('outbox_requeues', 0);

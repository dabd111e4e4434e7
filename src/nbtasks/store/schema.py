"""The store's tables, in one place. Bump SCHEMA_VERSION with any change."""

from __future__ import annotations

SCHEMA_VERSION = 5  # 2: journal_state; 3: payloads; 4: runs.resources; 5: runs.origin

RUN_COLUMNS: tuple[str, ...] = (
    "id", "task_id", "version", "status", "queue",
    "payload", "payload_preview", "output", "output_preview", "error",
    "created_at", "updated_at", "queued_at", "started_at", "finished_at",
    "delay_until", "ttl_s", "expired_at", "idempotency_key", "idempotency_expires_at",
    "tags", "metadata", "trigger_metadata", "max_attempts", "max_duration_s",
    "attempt_count", "parent_id", "root_id", "depth", "batch_id", "replayed_from", "owner",
    "resources", "origin",
)  # fmt: skip

# The columns that change after a run is created; updates write only these.
RUN_UPDATE_COLUMNS: tuple[str, ...] = (
    "id", "version", "status", "output", "output_preview", "error", "updated_at",
    "queued_at", "started_at", "finished_at", "delay_until", "expired_at",
    "idempotency_expires_at", "metadata", "attempt_count",
)  # fmt: skip

# RUN_COLUMNS for a SELECT from runs, with each run's payload wherever it is kept.
RUN_PAYLOAD = "coalesce(payload, (SELECT data FROM payloads WHERE run_id = runs.id))"
RUN_SELECT = ", ".join(f"{RUN_PAYLOAD} AS payload" if c == "payload" else c for c in RUN_COLUMNS)

ATTEMPT_COLUMNS: tuple[str, ...] = (
    "id", "run_id", "number", "status", "started_at", "finished_at", "pid",
    "exit_code", "signal", "oom", "error", "stdout", "stderr", "displays",
)  # fmt: skip

DDL = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS task_versions (
    task_id VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    code_hash VARCHAR NOT NULL,
    source VARCHAR,
    fn BLOB,
    options JSON,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (task_id, version)
);
CREATE TABLE IF NOT EXISTS runs (
    id VARCHAR PRIMARY KEY,
    task_id VARCHAR NOT NULL,
    version VARCHAR,
    status VARCHAR NOT NULL,
    queue VARCHAR,
    payload BLOB,
    payload_preview VARCHAR,
    output BLOB,
    output_preview VARCHAR,
    error JSON,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    queued_at TIMESTAMPTZ,
    started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    delay_until TIMESTAMPTZ,
    ttl_s DOUBLE,
    expired_at TIMESTAMPTZ,
    idempotency_key VARCHAR,
    idempotency_expires_at TIMESTAMPTZ,
    tags VARCHAR[],
    metadata JSON,
    trigger_metadata JSON,
    max_attempts INTEGER,
    max_duration_s DOUBLE,
    attempt_count INTEGER NOT NULL,
    parent_id VARCHAR,
    root_id VARCHAR,
    depth INTEGER NOT NULL,
    batch_id VARCHAR,
    replayed_from VARCHAR,
    owner VARCHAR,
    resources JSON,
    origin VARCHAR
);
CREATE TABLE IF NOT EXISTS attempts (
    id VARCHAR PRIMARY KEY,
    run_id VARCHAR NOT NULL,
    number INTEGER NOT NULL,
    status VARCHAR NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    pid INTEGER,
    exit_code INTEGER,
    signal INTEGER,
    oom BOOLEAN NOT NULL,
    error JSON,
    stdout VARCHAR,
    stderr VARCHAR,
    displays JSON
);
CREATE TABLE IF NOT EXISTS run_events (
    run_id VARCHAR NOT NULL,
    "at" TIMESTAMPTZ NOT NULL,
    status VARCHAR NOT NULL,
    attempt_number INTEGER,
    detail VARCHAR
);
-- Payloads too big for the journal (engine/payloads.py), written before their run exists;
-- the run's own payload column is NULL then. RUN_SELECT reads either.
CREATE TABLE IF NOT EXISTS payloads (run_id VARCHAR PRIMARY KEY, data BLOB NOT NULL);
-- The last journal frame folded into the tables above (_journal.py): one row.
CREATE TABLE IF NOT EXISTS journal_state (folded_seq BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS attempts_run ON attempts (run_id);
CREATE INDEX IF NOT EXISTS events_run ON run_events (run_id);
-- Stores made before schema 4, and 5 (their runs' origin stays NULL: not recorded then).
ALTER TABLE runs ADD COLUMN IF NOT EXISTS resources JSON;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS origin VARCHAR;
"""

-- The tool's own master tables: the seed job queue and backfill progress.
-- Times used for leases and backoff are epoch milliseconds, the same on every engine.
CREATE TABLE acm2_seed_jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id         INTEGER NOT NULL,
    seed_version    TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending',
    force           INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL DEFAULT 5,
    locked_by       TEXT,
    locked_until    INTEGER,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL
);
CREATE INDEX ix_acm2_seed_jobs_due ON acm2_seed_jobs (status, next_attempt_at);
CREATE INDEX ix_acm2_seed_jobs_user ON acm2_seed_jobs (user_id);

CREATE TABLE acm2_backfill_runs (
    name        TEXT    NOT NULL PRIMARY KEY,
    status      TEXT    NOT NULL,
    cursor_id   INTEGER NOT NULL,
    options     TEXT    NOT NULL,
    counts      TEXT    NOT NULL,
    started_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);

CREATE TABLE acm2_backfill_items (
    name     TEXT    NOT NULL,
    user_id  INTEGER NOT NULL,
    outcome  TEXT    NOT NULL,
    reason   TEXT,
    PRIMARY KEY (name, user_id)
);

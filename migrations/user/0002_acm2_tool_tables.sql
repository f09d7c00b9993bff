-- The tool's own tables in a per-user DB. ACM2 never reads them; verify and diff do.

-- Source id (package) -> id in this user's DB, per table and seed version. A rerun reuses it,
-- so a retried or forced seed gives the same ids. kind is the table name, or 'doc' for
-- generated/combined doc ids (which are derived strings, not row keys).
CREATE TABLE acm2_id_map (
    seed_version VARCHAR(64)  NOT NULL,
    kind         VARCHAR(64)  NOT NULL,
    source_id    VARCHAR(255) NOT NULL,
    target_id    VARCHAR(255) NOT NULL,
    PRIMARY KEY (seed_version, kind, source_id)
);
CREATE UNIQUE INDEX ix_acm2_id_map_target ON acm2_id_map (seed_version, kind, target_id);

-- Every file the seed wrote under user_{id}/, after rewriting: path relative to the user root.
CREATE TABLE acm2_seed_files (
    seed_version VARCHAR(64)   NOT NULL,
    path         VARCHAR(1024) NOT NULL,
    source_path  VARCHAR(1024) NOT NULL,
    bytes        INTEGER       NOT NULL,
    sha256       VARCHAR(64)   NOT NULL,
    PRIMARY KEY (seed_version, path)
);

-- One row per seed attempt state, so `user show` can say what happened last.
CREATE TABLE acm2_seed_state (
    seed_version VARCHAR(64) NOT NULL PRIMARY KEY,
    status       VARCHAR(32) NOT NULL,
    started_at   TEXT        NOT NULL,
    finished_at  TEXT,
    last_error   TEXT
);

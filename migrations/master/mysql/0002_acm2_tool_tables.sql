-- The tool's own master tables: the seed job queue and backfill progress.
-- Times used for leases and backoff are epoch milliseconds, the same on every engine.
CREATE TABLE IF NOT EXISTS acm2_seed_jobs (
    id              BIGINT       PRIMARY KEY AUTO_INCREMENT,
    user_id         INT          NOT NULL,
    seed_version    VARCHAR(64)  NOT NULL,
    status          VARCHAR(16)  NOT NULL DEFAULT 'pending',
    `force`         TINYINT      NOT NULL DEFAULT 0,
    attempts        INT          NOT NULL DEFAULT 0,
    max_attempts    INT          NOT NULL DEFAULT 5,
    locked_by       VARCHAR(191) NULL,
    locked_until    BIGINT       NULL,
    next_attempt_at BIGINT       NOT NULL,
    last_error      TEXT         NULL,
    created_at      VARCHAR(32)  NOT NULL,
    updated_at      VARCHAR(32)  NOT NULL,
    INDEX ix_acm2_seed_jobs_due (status, next_attempt_at),
    INDEX ix_acm2_seed_jobs_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS acm2_backfill_runs (
    name        VARCHAR(191) NOT NULL PRIMARY KEY,
    status      VARCHAR(16)  NOT NULL,
    cursor_id   BIGINT       NOT NULL,
    options     TEXT         NOT NULL,
    counts      TEXT         NOT NULL,
    started_at  VARCHAR(32)  NOT NULL,
    updated_at  VARCHAR(32)  NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS acm2_backfill_items (
    name     VARCHAR(191) NOT NULL,
    user_id  INT          NOT NULL,
    outcome  VARCHAR(32)  NOT NULL,
    reason   TEXT         NULL,
    PRIMARY KEY (name, user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

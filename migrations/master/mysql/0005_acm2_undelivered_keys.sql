-- The API keys `acm2 user create` made whose plaintext it has not shown yet: written in the
-- create's transaction, deleted once the key reached stdout. A row left behind is a create that
-- was killed in between: rerunning that create revokes the key (never deletes it) and shows a
-- new one. One row per user at most; only keys the tool made are ever named here. Safe to rerun.
CREATE TABLE IF NOT EXISTS acm2_undelivered_keys (
    api_key_id  INT          NOT NULL PRIMARY KEY,
    user_id     INT          NOT NULL,
    issued_by   VARCHAR(191) NOT NULL,
    created_at  VARCHAR(32)  NOT NULL,
    UNIQUE KEY ux_acm2_undelivered_keys_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

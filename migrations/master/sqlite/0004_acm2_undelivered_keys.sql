-- The API keys `acm2 user create` made whose plaintext it has not shown yet: written in the
-- create's transaction, deleted once the key reached stdout. A row left behind is a create that
-- was killed in between: rerunning that create revokes the key (never deletes it) and shows a
-- new one. One row per user at most; only keys the tool made are ever named here.
CREATE TABLE acm2_undelivered_keys (
    api_key_id  INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL UNIQUE,
    issued_by   TEXT    NOT NULL,
    created_at  TEXT    NOT NULL
);

-- The data dir this master belongs with: one row, the id stamped in <data-dir>/.acm2/data-dir.json
-- on first use. A write command run with another data dir (a mistyped --data-dir, a staging
-- master against production files) is refused before it writes anything.
CREATE TABLE acm2_data_dir (
    slot          INTEGER NOT NULL PRIMARY KEY CHECK (slot = 1),
    data_dir_id   TEXT    NOT NULL,
    data_dir_path TEXT    NOT NULL,
    paired_at     TEXT    NOT NULL
);

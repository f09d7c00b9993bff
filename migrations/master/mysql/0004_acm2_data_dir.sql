-- The data dir this master belongs with: one row, the id stamped in <data-dir>/.acm2/data-dir.json
-- on first use. A write command run with another data dir (a mistyped --data-dir, a staging
-- master against production files) is refused before it writes anything.
CREATE TABLE IF NOT EXISTS acm2_data_dir (
    slot          TINYINT      NOT NULL PRIMARY KEY,
    data_dir_id   VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    data_dir_path TEXT         NOT NULL,
    paired_at     VARCHAR(32)  NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

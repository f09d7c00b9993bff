-- Seed versions and backfill names are compared byte for byte, as on the SQLite master: packages
-- 'v1' and 'V1' are two folders, two versions, two jobs. The tables' default collation
-- (utf8mb4_unicode_ci) made a 'V1' seed take over a queued 'v1' job. Safe to rerun.
ALTER TABLE acm2_seed_jobs MODIFY seed_version VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE acm2_backfill_runs MODIFY name VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE acm2_backfill_items MODIFY name VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;

-- Live progress: what is appended but not committed yet, and what a download run set out to do.
-- Same tables, columns and indexes as 0003_live_progress.postgres.sql.
--
-- Neither table is part of the dataset: nothing is ever read from them to build or check it
-- (reindex leaves them empty); the status service reads them, one row per partition and per
-- run, so every figure stays O(partitions) however many rows the index holds.

-- One row per APPEND partition, upserted about every second by the partition's owner
-- (the appender): its open segment's rows (and their failures by reason), its current rates,
-- its latest rows. An older epoch
-- never overwrites a newer one (a zombie cannot hide the live owner's figures).
CREATE TABLE partition_progress (
    topic TEXT NOT NULL,
    "partition" INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    owner TEXT,
    position INTEGER NOT NULL,
    open_segment_id TEXT,
    open_first_offset INTEGER,
    open_samples INTEGER NOT NULL,
    open_successes INTEGER NOT NULL,
    open_errors TEXT NOT NULL DEFAULT '{}',
    open_bytes INTEGER NOT NULL,
    samples_per_second REAL NOT NULL,
    images_per_second REAL NOT NULL,
    window_seconds REAL NOT NULL,
    recent TEXT NOT NULL DEFAULT '[]',
    updated_at REAL NOT NULL,
    PRIMARY KEY (topic, "partition")
);

-- One row per `img2dataset download` run: the list's total and where its APPEND records start,
-- so its progress (rows skipped + records appended since) is known to any reader.
CREATE TABLE download_runs (
    run_id TEXT PRIMARY KEY,
    url_list TEXT NOT NULL,
    append_topic TEXT NOT NULL,
    append_partition INTEGER NOT NULL,
    start_offset INTEGER NOT NULL,
    rows_total INTEGER,
    rows_read INTEGER NOT NULL,
    rows_skipped INTEGER NOT NULL,
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX download_runs_started ON download_runs (started_at);

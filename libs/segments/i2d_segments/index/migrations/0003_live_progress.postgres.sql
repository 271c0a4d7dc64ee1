-- Live progress: what is appended but not committed yet, and what a download run set out to do.
-- Same tables, columns and indexes as 0003_live_progress.sqlite.sql.
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
    epoch BIGINT NOT NULL,
    owner TEXT,
    position BIGINT NOT NULL,
    open_segment_id TEXT,
    open_first_offset BIGINT,
    open_samples INTEGER NOT NULL,
    open_successes INTEGER NOT NULL,
    open_errors TEXT NOT NULL DEFAULT '{}',
    open_bytes BIGINT NOT NULL,
    samples_per_second DOUBLE PRECISION NOT NULL,
    images_per_second DOUBLE PRECISION NOT NULL,
    window_seconds DOUBLE PRECISION NOT NULL,
    recent TEXT NOT NULL DEFAULT '[]',
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (topic, "partition")
);

-- One row per `img2dataset download` run: the list's total and where its APPEND records start,
-- so its progress (rows skipped + records appended since) is known to any reader.
CREATE TABLE download_runs (
    run_id TEXT PRIMARY KEY,
    url_list TEXT NOT NULL,
    append_topic TEXT NOT NULL,
    append_partition INTEGER NOT NULL,
    start_offset BIGINT NOT NULL,
    rows_total BIGINT,
    rows_read BIGINT NOT NULL,
    rows_skipped BIGINT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION
);
CREATE INDEX download_runs_started ON download_runs (started_at);

-- Totals kept with the rows, so no figure of status, the dashboard or the REST API counts the
-- sample rows at read time (that scan took 0.2-0.9 s per query at 5 M rows). Written by each
-- segment's commit in its transaction (see index/totals.py); this migration fills them from the
-- rows already there (a Python step after these statements, in the same transaction).
-- Same tables, columns and indexes as 0006_totals.postgres.sql.

-- The outcome a row had in the segment it left, kept by the upsert that moved it (beside
-- previous_segment_id, 0002), so that commit subtracts exactly that outcome from the old
-- segment's counts. NULL for a row recorded once: no cost for rows that never moved.
ALTER TABLE samples ADD COLUMN previous_status TEXT;
ALTER TABLE samples ADD COLUMN previous_error TEXT;

-- Rows each segment holds, by outcome. error_key: '' without an error, else a hash of it (a
-- b-tree key of bounded length whatever the message; NULL has its own key).
CREATE TABLE segment_counts (
    segment_id TEXT NOT NULL,
    status TEXT NOT NULL,
    error_key TEXT NOT NULL,
    error TEXT,
    samples INTEGER NOT NULL,
    PRIMARY KEY (segment_id, status, error_key)
);

-- The same, dataset-wide: one row per outcome, whatever the number of rows.
CREATE TABLE outcome_totals (
    status TEXT NOT NULL,
    error_key TEXT NOT NULL,
    error TEXT,
    samples INTEGER NOT NULL,
    PRIMARY KEY (status, error_key)
);

-- One row: segments, items (sum of item_count), sample rows (each once), bytes, and the first
-- and last created_at.
CREATE TABLE dataset_totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    segments INTEGER NOT NULL,
    items INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    first_created_at REAL,
    last_created_at REAL
);

-- The newest segments first (dashboard, /api/segments) without reading every segment row.
CREATE INDEX segments_created ON segments (created_at, segment_id);

-- Only the status counts read samples by status; they read outcome_totals now.
DROP INDEX samples_status;

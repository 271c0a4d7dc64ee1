-- The compact index: what only a reader of one segment needs (url, caption, attrs, item
-- dims, ext, data_sha256, full ids) is in the segment's manifest (`__segment__`) and metadata
-- parquet; the index keeps, per sample, 16-byte keys, a 64-bit url hash, a segment number and
-- an outcome number, and the item's location on the row that stored it. Same tables, columns
-- and indexes as 0007_compact.postgres.sql. A Python step (index/compact.py) fills sample_index
-- from the old `samples` and `items`, logging its progress, then drops them.

-- A segment's compact number (per-sample rows reference it) and where its manifest is.
-- Numbered by rowid here (SQLite has no identity column; a commit takes MAX + 1 under its
-- write lock).
ALTER TABLE segments ADD COLUMN seg INTEGER;
UPDATE segments SET seg = rowid;
CREATE UNIQUE INDEX segments_seg ON segments (seg);
ALTER TABLE segments ADD COLUMN manifest_offset INTEGER;
ALTER TABLE segments ADD COLUMN manifest_length INTEGER;

-- Outcomes by number: a handful of rows (status, error message), added by the commits.
CREATE TABLE outcomes (
    outcome INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    error_key TEXT NOT NULL,
    error TEXT,
    UNIQUE (status, error_key)
);

-- One row per sample (a rowid table: rows are appended in order, so its pages stay full).
-- The row that stored an item carries its location (item_seg, data_offset, data_length: all
-- set or all NULL), so an item costs no row of its own.
CREATE TABLE sample_index (
    url_hash INTEGER NOT NULL,
    data_offset INTEGER,
    sample_key BLOB NOT NULL,
    item_key BLOB,
    seg INTEGER NOT NULL,
    outcome INTEGER NOT NULL,
    item_seg INTEGER,
    data_length INTEGER
);
CREATE UNIQUE INDEX sample_index_key ON sample_index (sample_key);
CREATE INDEX sample_index_url ON sample_index (url_hash);
CREATE UNIQUE INDEX sample_index_item ON sample_index (item_key) WHERE data_length IS NOT NULL;

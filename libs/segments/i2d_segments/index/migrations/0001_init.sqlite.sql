-- The index, SQLite flavour. Same tables, columns and indexes as 0001_init.postgres.sql;
-- only the types differ (SQLite has no JSONB: attrs is JSON text).
-- "partition" is quoted everywhere: it is a keyword (window functions) in both engines.

CREATE TABLE partitions (
    topic TEXT NOT NULL,
    "partition" INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    owner TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (topic, "partition")
);

CREATE TABLE segments (
    segment_id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    "partition" INTEGER NOT NULL,
    first_offset INTEGER NOT NULL,
    last_offset INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    uri TEXT NOT NULL,
    item_count INTEGER NOT NULL,
    sample_count INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX segments_partition_first_offset ON segments ("partition", first_offset);

CREATE TABLE items (
    item_id TEXT PRIMARY KEY,
    segment_id TEXT NOT NULL,
    data_offset INTEGER NOT NULL,
    data_length INTEGER NOT NULL,
    ext TEXT NOT NULL,
    mime TEXT,
    width INTEGER,
    height INTEGER,
    original_width INTEGER,
    original_height INTEGER,
    data_sha256 TEXT
);
-- items_for_segment (materializer, verify) reads a segment's items in data_offset order.
CREATE INDEX items_segment_offset ON items (segment_id, data_offset);

CREATE TABLE samples (
    sample_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    caption TEXT,
    status TEXT NOT NULL,
    error TEXT,
    item_id TEXT,
    segment_id TEXT NOT NULL,
    attrs TEXT NOT NULL DEFAULT '{}',
    updated_at REAL NOT NULL
);
CREATE INDEX samples_url ON samples (url);
CREATE INDEX samples_segment ON samples (segment_id);
CREATE INDEX samples_status ON samples (status);

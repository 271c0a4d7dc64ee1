-- The index, PostgreSQL flavour. Same tables, columns and indexes as 0001_init.sqlite.sql;
-- only the types differ (64-bit offsets and sizes, JSONB attrs).
-- "partition" is quoted everywhere: it is a keyword (window functions) in both engines.

CREATE TABLE partitions (
    topic TEXT NOT NULL,
    "partition" INTEGER NOT NULL,
    epoch BIGINT NOT NULL,
    next_offset BIGINT NOT NULL,
    owner TEXT,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (topic, "partition")
);

CREATE TABLE segments (
    segment_id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    "partition" INTEGER NOT NULL,
    first_offset BIGINT NOT NULL,
    last_offset BIGINT NOT NULL,
    epoch BIGINT NOT NULL,
    uri TEXT NOT NULL,
    item_count INTEGER NOT NULL,
    sample_count INTEGER NOT NULL,
    bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX segments_partition_first_offset ON segments ("partition", first_offset);

CREATE TABLE items (
    item_id TEXT PRIMARY KEY,
    segment_id TEXT NOT NULL,
    data_offset BIGINT NOT NULL,
    data_length BIGINT NOT NULL,
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
    attrs JSONB NOT NULL DEFAULT '{}',
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX samples_url ON samples (url);
CREATE INDEX samples_segment ON samples (segment_id);
CREATE INDEX samples_status ON samples (status);

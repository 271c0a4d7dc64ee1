-- Rows with 64-bit slots (keys.py, commit.py): a sample's row sits at a slot of its identity's
-- bucket, an item's location on a row of the item's own segment, its offset in 512-byte tar
-- blocks, and the url hash, the sample's check and the item's check share one BIGINT. A row is
-- 7 columns, 40 bytes at most (a success that locates its item), 24 for a failure; its keys are
-- 8 bytes in every b-tree. Same tables, columns and indexes as 0008_slots.sqlite.sql. A Python
-- step (index/slotting.py) fills the new table from 0007's, logging its progress, then drops it.

ALTER TABLE sample_index RENAME TO sample_index_0007;
ALTER INDEX sample_index_key RENAME TO sample_index_0007_key;
ALTER INDEX sample_index_item RENAME TO sample_index_0007_item;
DROP INDEX sample_index_url;

CREATE TABLE sample_index (
    hashes BIGINT NOT NULL,
    sample_key BIGINT NOT NULL,
    item_key BIGINT,
    seg INTEGER NOT NULL,
    outcome INTEGER NOT NULL,
    data_block INTEGER,
    data_length INTEGER
);
CREATE UNIQUE INDEX sample_index_slot ON sample_index (sample_key);
-- A url is a range of `hashes` (its high 32 bits).
CREATE INDEX sample_index_hashes ON sample_index (hashes);
CREATE UNIQUE INDEX sample_index_item_slot ON sample_index (item_key)
    WHERE data_length IS NOT NULL;

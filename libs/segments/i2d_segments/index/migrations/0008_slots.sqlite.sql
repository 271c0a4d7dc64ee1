-- Rows with 64-bit slots (keys.py, commit.py): a sample's row sits at a slot of its identity's
-- bucket, an item's location on a row of the item's own segment, its offset in 512-byte tar
-- blocks, and the url hash, the sample's check and the item's check share one integer. Same
-- tables, columns and indexes as 0008_slots.postgres.sql. A Python step (index/slotting.py)
-- fills the new table from 0007's, logging its progress, then drops it.

ALTER TABLE sample_index RENAME TO sample_index_0007;
DROP INDEX sample_index_url;

CREATE TABLE sample_index (
    hashes INTEGER NOT NULL,
    sample_key INTEGER NOT NULL,
    item_key INTEGER,
    seg INTEGER NOT NULL,
    outcome INTEGER NOT NULL,
    data_block INTEGER,
    data_length INTEGER
);
CREATE UNIQUE INDEX sample_index_slot ON sample_index (sample_key);
CREATE INDEX sample_index_hashes ON sample_index (hashes);
CREATE UNIQUE INDEX sample_index_item_slot ON sample_index (item_key)
    WHERE data_length IS NOT NULL;

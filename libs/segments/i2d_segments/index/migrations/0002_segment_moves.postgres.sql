-- Rows that move to a newer segment (a redelivered row with a different outcome: latest wins).
-- Same tables, columns and indexes as 0002_segment_moves.sqlite.sql.
--
-- samples.previous_segment_id: the segment that held the row's previous outcome, set by the
-- upsert that moved it (NULL for a row recorded once). It is read back in the same commit to
-- fill segment_moves, and it costs nothing for the rows that never moved.
ALTER TABLE samples ADD COLUMN previous_segment_id TEXT;
CREATE INDEX samples_moved ON samples (segment_id) WHERE previous_segment_id IS NOT NULL;

-- One row per (committed segment, older segment that lost rows to it): written in the
-- segment's commit, so the materializer can rewrite the older segment's metadata (which must
-- no longer list those rows) however late it handles the event, and after any crash.
CREATE TABLE segment_moves (
    segment_id TEXT NOT NULL,
    from_segment_id TEXT NOT NULL,
    samples INTEGER NOT NULL,
    PRIMARY KEY (segment_id, from_segment_id)
);
CREATE INDEX segment_moves_from ON segment_moves (from_segment_id);

-- img2dataset's `key` column (shard x 10^k + place) unique within a dataset across lists:
-- each url list's shards get dataset-wide shard numbers, allocated when the list is read
-- (`download`, `enqueue`) and kept, so reading the same list again numbers its rows the same,
-- and another list (or rows a list gained) continues after the shards already given.
-- Same table in both engines.
CREATE TABLE list_shards (
    list_id TEXT NOT NULL,
    local_shard BIGINT NOT NULL,
    shard BIGINT NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (list_id, local_shard)
);

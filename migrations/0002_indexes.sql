-- ChainCore PostgreSQL mirror, schema version 2: indexes that keep the
-- mirror's cost per block independent of the database's size, and the ones
-- an analyst's first queries need. Each is justified by an EXPLAIN in
-- tests/chaincore/mirror.rs (`mirror_statements_use_indexes`).

-- Per block at the tip: marking what a block's inputs spend
-- (inputs BETWEEN heights, joined to outputs by primary key). On a
-- reorganisation: the addresses the removed blocks touched, and the rows
-- that `DELETE FROM blocks` cascades to.
CREATE INDEX inputs_by_height ON inputs (block_height);
CREATE INDEX outputs_by_height ON outputs (block_height);

-- Blocks by time ("what was mined on 1 May").
CREATE INDEX blocks_by_time ON blocks (time);

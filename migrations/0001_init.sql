-- ChainCore PostgreSQL mirror, schema version 1.
-- Hashes are BYTEA in raw (wire) byte order; amounts are BIGINT base units
-- (1 CC = 100 000 000); addresses are Base58Check text.

CREATE TABLE mirror_state (
    id          BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    network     TEXT        NOT NULL,
    height      BIGINT      NOT NULL,
    block_hash  BYTEA       NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE blocks (
    height      BIGINT  PRIMARY KEY,
    hash        BYTEA   NOT NULL UNIQUE,
    prev_hash   BYTEA   NOT NULL,
    time        BIGINT  NOT NULL,
    bits        BIGINT  NOT NULL,
    nonce       BIGINT  NOT NULL,
    tx_count    INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    chain_work  BYTEA   NOT NULL
);

CREATE TABLE transactions (
    txid          BYTEA   PRIMARY KEY,
    block_height  BIGINT  NOT NULL REFERENCES blocks (height) ON DELETE CASCADE,
    position      INTEGER NOT NULL,
    fee           BIGINT  NOT NULL,
    size          INTEGER NOT NULL
);

CREATE TABLE outputs (
    txid           BYTEA   NOT NULL,
    vout           INTEGER NOT NULL,
    block_height   BIGINT  NOT NULL REFERENCES blocks (height) ON DELETE CASCADE,
    address        TEXT    NOT NULL,
    amount         BIGINT  NOT NULL,
    coinbase       BOOLEAN NOT NULL,
    spent_by_txid  BYTEA,
    spent_height   BIGINT,
    PRIMARY KEY (txid, vout)
);

CREATE TABLE inputs (
    txid          BYTEA   NOT NULL,
    vin           INTEGER NOT NULL,
    block_height  BIGINT  NOT NULL REFERENCES blocks (height) ON DELETE CASCADE,
    prev_txid     BYTEA   NOT NULL,
    prev_vout     INTEGER NOT NULL,
    address       TEXT    NOT NULL,
    amount        BIGINT  NOT NULL,
    PRIMARY KEY (txid, vin)
);

-- Kept under its original name and columns so existing queries such as
-- SELECT balance FROM address_balances WHERE address = '...' keep working.
CREATE TABLE address_balances (
    address      TEXT   PRIMARY KEY,
    balance      BIGINT NOT NULL,
    utxo_count   BIGINT NOT NULL,
    tx_count     BIGINT NOT NULL,
    last_height  BIGINT NOT NULL
);

CREATE TABLE reorg_events (
    id             BIGSERIAL   PRIMARY KEY,
    happened_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    fork_height    BIGINT      NOT NULL,
    blocks_removed INTEGER     NOT NULL,
    blocks_added   INTEGER     NOT NULL,
    old_tip        BYTEA       NOT NULL,
    new_tip        BYTEA       NOT NULL
);

-- History of an address, and its UTXOs.
CREATE INDEX outputs_by_address ON outputs (address, block_height);
CREATE INDEX utxos_by_address ON outputs (address) WHERE spent_by_txid IS NULL;
CREATE INDEX inputs_by_address ON inputs (address, block_height);
CREATE INDEX inputs_by_prevout ON inputs (prev_txid, prev_vout);
CREATE INDEX outputs_by_spent_height ON outputs (spent_height) WHERE spent_height IS NOT NULL;
CREATE INDEX transactions_by_height ON transactions (block_height);

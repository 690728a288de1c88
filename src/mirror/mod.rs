//! The PostgreSQL mirror: follows the active chain by height from a
//! watermark (height + block hash) kept in PostgreSQL, and loads blocks,
//! transactions, inputs, outputs and address balances.
//!
//! Every load is one database transaction that also moves the watermark:
//! a range of blocks during catch-up (binary COPY), one block at the tip.
//! When the watermark's block is no longer on the active chain, the mirror
//! finds the fork point, deletes every row above it and un-spends what those
//! rows spent, in the same transaction that adds the new branch and records
//! a reorg event. `address_balances` moves by each address's change in the
//! loaded blocks (after a reorganisation, the touched addresses are
//! recomputed from the mirrored rows), so it always equals the node's own
//! balances at the watermark. If PostgreSQL is unreachable, slow or
//! restarts, the node carries on and the mirror retries with backoff.

pub mod migrate;
pub mod verify;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{pin_mut, FutureExt};
use tokio::sync::Notify;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Transaction};

use crate::consensus::address::Address;
use crate::consensus::hash::{BlockHash, Hash256};
use crate::consensus::params::Network;
use crate::encoding::Encode;
use crate::store::Store;

/// Blocks loaded per database transaction while catching up.
pub const CATCH_UP_BATCH: u32 = 100;
/// First wait after a failure; doubles up to `MAX_RETRY_DELAY`.
pub const MIN_RETRY_DELAY: Duration = Duration::from_millis(200);
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// How often an idle mirror looks at the tip when no event woke it.
pub const IDLE_POLL: Duration = Duration::from_millis(500);
/// Server-side limit of one statement: a batch of `CATCH_UP_BATCH` blocks
/// loads in about a second, so a statement running a minute is a stuck
/// server or a lock held by someone else, not work.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Client-side limit of one step (it may run several statements), for a
/// server that stopped answering without closing the connection.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long to wait for a TCP connection and PostgreSQL's startup.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Times a step starts over when the store moved under it (a reorg between
/// reading the watermark and the rows) before reporting an error: each
/// retry re-reads a chain that only moves as blocks arrive.
pub const MAX_STEP_ATTEMPTS: u32 = 8;
/// Heights compared per query while looking for the fork point.
pub const FORK_SEARCH_BATCH: i64 = 1_000;
/// The advisory lock (`pg_try_advisory_lock(int4, int4)`) that makes a
/// database belong to one node: "CCmr" and 1. Advisory locks are scoped to
/// the current database, so different databases of one server do not
/// conflict; the lock goes with the session that holds it.
pub const ADVISORY_LOCK: (i32, i32) = (0x4343_6d72, 1);

/// How rows are written: binary COPY (the mirror) or plain INSERTs (kept
/// for the benchmark that compares them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    Copy,
    Insert,
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("PostgreSQL: {}", describe_postgres_error(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
    #[error("the mirror database holds network {found}, the node runs {expected}")]
    WrongNetwork { expected: Network, found: String },
    #[error("store changed while reading height {0}; retrying")]
    Moved(u32),
    #[error("rows of heights {first}..={last} do not link to the mirror: expected parent {expected}, found {found}; starting over from the fork")]
    Unlinked {
        first: u32,
        last: u32,
        expected: String,
        found: String,
    },
    #[error("the mirror database is in use by another node ({holder}): a database mirrors one node at a time")]
    Busy { holder: String },
    #[error("a mirror step took longer than {0:?}; reconnecting")]
    Timeout(Duration),
    #[error("no rows to load")]
    Empty,
    #[error("the node's store is corrupt at height {height}: {what} (run `chaincore check`); the mirror stops there")]
    CorruptStore { height: u32, what: String },
    #[error("the mirror database's watermark (mirror_state) is not a block height and a 32-byte hash ({0}); repair or drop that database")]
    BadWatermark(String),
    #[error("the mirror task panicked ({0}); restarting it")]
    Panicked(String),
}

/// The server's own message (severity, text, code, detail, hint) for a
/// database error; the whole source chain otherwise (tokio-postgres alone
/// says only "db error").
pub fn describe_postgres_error(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut out = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            out.push_str(&format!("; detail: {detail}"));
        }
        if let Some(hint) = db.hint() {
            out.push_str(&format!("; hint: {hint}"));
        }
        return out;
    }
    // tokio-postgres writes its cause into its own message: a cause the
    // text already ends with is not said again.
    let mut out = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(&format!(": {text}"));
        }
        source = e.source();
    }
    out
}

/// What `/status` and `/metrics` show of the mirror.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MirrorStatus {
    pub connected: bool,
    /// Height of the watermark (`None` before the first load).
    pub height: Option<u32>,
    /// Blocks the mirror is behind the node's tip: the tip's height minus
    /// the watermark's (the tip's height plus one before the first load),
    /// whether or not PostgreSQL answers.
    pub lag: u32,
    /// The last failure, with the database's own message; `None` after a
    /// successful step.
    pub last_error: Option<String>,
    /// Set while the mirror holds blocks above the node's tip on the same
    /// branch (a wiped or rolled-back data dir re-syncing): it waits for the
    /// node rather than deleting rows the node will bring back.
    pub waiting_for_node: Option<String>,
}

impl MirrorStatus {
    /// This status with `lag` computed against the node's tip at `tip`.
    pub fn at_tip(mut self, tip: u32) -> MirrorStatus {
        self.lag = self.height.map_or(tip + 1, |h| tip.saturating_sub(h));
        self
    }
}

/// A `blocks` row: height, hash, prev_hash, time, bits, nonce, tx_count,
/// size, chain_work.
type BlockRow = (i64, Vec<u8>, Vec<u8>, i64, i64, i64, i32, i32, Vec<u8>);
/// A `transactions` row: txid, block_height, position, fee, size.
type TxRow = (Vec<u8>, i64, i32, i64, i32);
/// An `outputs` row: txid, vout, block_height, address, amount, coinbase.
type OutputRow = (Vec<u8>, i32, i64, String, i64, bool);
/// An `inputs` row: txid, vin, block_height, prev_txid, prev_vout, address,
/// amount.
type InputRow = (Vec<u8>, i32, i64, Vec<u8>, i32, String, i64);

/// Rows of a range of blocks, read from the store.
#[derive(Default)]
pub struct BlockRows {
    pub first: u32,
    pub last: u32,
    pub last_hash: BlockHash,
    blocks: Vec<BlockRow>,
    transactions: Vec<TxRow>,
    outputs: Vec<OutputRow>,
    inputs: Vec<InputRow>,
    pub touched: BTreeSet<String>,
    /// Per address: balance change, UTXO count change, transactions that
    /// touch it, highest height.
    deltas: std::collections::BTreeMap<String, BalanceDelta>,
}

#[derive(Debug, Default, Clone)]
struct BalanceDelta {
    balance: i64,
    utxo_count: i64,
    txids: std::collections::HashSet<Vec<u8>>,
    last_height: i64,
}

impl BlockRows {
    pub fn row_count(&self) -> usize {
        self.blocks.len() + self.transactions.len() + self.outputs.len() + self.inputs.len()
    }
}

/// Reads heights `first..=last` of the active chain from the store, checking
/// that each block's parent is the block read before it (a reorganisation
/// while reading is `MirrorError::Moved`).
pub fn read_rows(
    store: &Store,
    network: Network,
    first: u32,
    last: u32,
) -> Result<BlockRows, MirrorError> {
    let mut rows = BlockRows {
        first,
        last,
        ..BlockRows::default()
    };
    for height in first..=last {
        let hash = store
            .hash_at_height(height)?
            .ok_or(MirrorError::Moved(height))?;
        let block = store.block(&hash)?.ok_or(MirrorError::Moved(height))?;
        let undo = store.undo(&hash)?.ok_or(MirrorError::Moved(height))?;
        let entry = store
            .block_index_entry(&hash)?
            .ok_or(MirrorError::Moved(height))?;
        if height > first && block.header.prev_hash != rows.last_hash {
            return Err(MirrorError::Moved(height));
        }
        // What the store gives back is checked before rows are built from
        // it (`Store::block` checks the body's hash): a wrong outpoint or
        // amount would go into PostgreSQL as fact.
        crate::chain::delta::BlockDelta::check_undo(&block, &undo)
            .map_err(|what| MirrorError::CorruptStore { height, what })?;
        let h = i64::from(height);
        rows.blocks.push((
            h,
            hash.0.to_vec(),
            block.header.prev_hash.0.to_vec(),
            i64::from(block.header.time),
            i64::from(block.header.bits),
            i64::from(block.header.nonce),
            block.transactions.len() as i32,
            block.encoded_len() as i32,
            entry.chain_work.to_big_endian().to_vec(),
        ));
        let mut spent = undo.iter();
        for (position, tx) in block.transactions.iter().enumerate() {
            let txid = tx.txid();
            let mut input_sum = 0u64;
            if position > 0 {
                for vin in 0..tx.inputs.len() {
                    // One row per input, for its outpoint (checked above).
                    let (outpoint, utxo) = spent.next().ok_or(MirrorError::Moved(height))?;
                    let address = Address::new(network, utxo.output.owner).to_string();
                    input_sum += utxo.output.amount.units();
                    rows.touched.insert(address.clone());
                    let d = rows.deltas.entry(address.clone()).or_default();
                    d.balance -= utxo.output.amount.units() as i64;
                    d.utxo_count -= 1;
                    d.txids.insert(txid.0.to_vec());
                    d.last_height = d.last_height.max(h);
                    rows.inputs.push((
                        txid.0.to_vec(),
                        vin as i32,
                        h,
                        outpoint.txid.0.to_vec(),
                        outpoint.vout as i32,
                        address,
                        utxo.output.amount.units() as i64,
                    ));
                }
            }
            let output_sum: u64 = tx.outputs.iter().map(|o| o.amount.units()).sum();
            for (vout, output) in tx.outputs.iter().enumerate() {
                let address = Address::new(network, output.owner).to_string();
                rows.touched.insert(address.clone());
                let d = rows.deltas.entry(address.clone()).or_default();
                d.balance += output.amount.units() as i64;
                d.utxo_count += 1;
                d.txids.insert(txid.0.to_vec());
                d.last_height = d.last_height.max(h);
                rows.outputs.push((
                    txid.0.to_vec(),
                    vout as i32,
                    h,
                    address,
                    output.amount.units() as i64,
                    position == 0,
                ));
            }
            let fee = if position == 0 {
                0
            } else {
                input_sum.saturating_sub(output_sum)
            };
            rows.transactions.push((
                txid.0.to_vec(),
                h,
                position as i32,
                fee as i64,
                tx.encoded_len() as i32,
            ));
        }
        rows.last_hash = hash;
    }
    Ok(rows)
}

async fn copy_rows(
    tx: &Transaction<'_>,
    table: &str,
    types: &[Type],
    rows: impl Iterator<Item = Vec<&(dyn ToSql + Sync)>>,
    mode: LoadMode,
) -> Result<(), tokio_postgres::Error> {
    match mode {
        LoadMode::Copy => {
            let sink = tx
                .copy_in(&format!("COPY {table} FROM STDIN BINARY"))
                .await?;
            let writer = BinaryCopyInWriter::new(sink, types);
            pin_mut!(writer);
            for row in rows {
                writer.as_mut().write(&row).await?;
            }
            writer.finish().await?;
        }
        LoadMode::Insert => {
            let params: Vec<String> = (1..=types.len()).map(|i| format!("${i}")).collect();
            let statement = tx
                .prepare(&format!(
                    "INSERT INTO {table} VALUES ({})",
                    params.join(", ")
                ))
                .await?;
            for row in rows {
                tx.execute(&statement, &row).await?;
            }
        }
    }
    Ok(())
}

/// The watermark: height and hash of the last mirrored block. Rows other
/// programs may have edited are checked: a height out of range or a hash
/// of another length is an error, never truncated into another block.
pub async fn watermark(client: &Client) -> Result<Option<(u32, BlockHash)>, MirrorError> {
    let Some(row) = client
        .query_opt("SELECT height, block_hash FROM mirror_state", &[])
        .await?
    else {
        return Ok(None);
    };
    let height: i64 = row
        .try_get(0)
        .map_err(|e| MirrorError::BadWatermark(e.to_string()))?;
    let hash: Vec<u8> = row
        .try_get(1)
        .map_err(|e| MirrorError::BadWatermark(e.to_string()))?;
    let height =
        u32::try_from(height).map_err(|_| MirrorError::BadWatermark(format!("height {height}")))?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|h: Vec<u8>| MirrorError::BadWatermark(format!("a hash of {} bytes", h.len())))?;
    Ok(Some((height, Hash256(hash))))
}

fn hash_from(bytes: &[u8]) -> BlockHash {
    let mut out = [0u8; 32];
    if bytes.len() == 32 {
        out.copy_from_slice(bytes);
    }
    Hash256(out)
}

/// Loads `rows` in one transaction, first removing everything above `fork`
/// (height, and the watermark's hash that the caller saw) if given, and
/// moves the watermark. Refuses rows whose first block's parent is not the
/// mirrored block below them (the watermark, or the fork point's block) or
/// whose watermark moved since the caller read it: loading them would put
/// a branch on top of another.
pub async fn apply(
    client: &mut Client,
    network: Network,
    rows: &BlockRows,
    fork: Option<(i64, BlockHash)>,
    mode: LoadMode,
) -> Result<(), MirrorError> {
    let Some(first_block) = rows.blocks.first() else {
        return Err(MirrorError::Empty);
    };
    let tx = client.transaction().await?;
    let current = tx
        .query_opt(
            "SELECT height, block_hash FROM mirror_state FOR UPDATE",
            &[],
        )
        .await?
        .map(|row| (row.get::<_, i64>(0), hash_from(&row.get::<_, Vec<u8>>(1))));
    let below = i64::from(rows.first) - 1;
    let parent = match (fork, current) {
        (None, current) if current.is_none_or(|(h, _)| h == below) => current.map(|(_, hash)| hash),
        (Some((fork_height, old_tip)), Some((_, hash)))
            if hash == old_tip && fork_height == below =>
        {
            if fork_height < 0 {
                None
            } else {
                tx.query_opt("SELECT hash FROM blocks WHERE height = $1", &[&fork_height])
                    .await?
                    .map(|r| hash_from(&r.get::<_, Vec<u8>>(0)))
            }
        }
        (_, current) => {
            return Err(MirrorError::Unlinked {
                first: rows.first,
                last: rows.last,
                expected: format!("the watermark the caller saw ({fork:?})"),
                found: format!("watermark {current:?}"),
            })
        }
    };
    let first_parent = hash_from(&first_block.2);
    let linked = match parent {
        None => rows.first == 0,
        Some(parent) => parent == first_parent,
    };
    if !linked {
        return Err(MirrorError::Unlinked {
            first: rows.first,
            last: rows.last,
            expected: parent.map_or("nothing (height 0)".into(), |p| p.to_string()),
            found: first_parent.to_string(),
        });
    }
    let mut touched: BTreeSet<String> = rows.touched.clone();
    if let Some((fork_height, old_tip)) = fork {
        let affected = tx
            .query(
                "SELECT address FROM outputs WHERE block_height > $1
                 UNION SELECT address FROM inputs WHERE block_height > $1",
                &[&fork_height],
            )
            .await?;
        touched.extend(affected.into_iter().map(|r| r.get::<_, String>(0)));
        tx.execute(
            "UPDATE outputs SET spent_by_txid = NULL, spent_height = NULL WHERE spent_height > $1",
            &[&fork_height],
        )
        .await?;
        let removed = tx
            .execute("DELETE FROM blocks WHERE height > $1", &[&fork_height])
            .await?;
        tx.execute(
            "INSERT INTO reorg_events (fork_height, blocks_removed, blocks_added, old_tip, new_tip)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &fork_height,
                &(removed as i32),
                &(rows.blocks.len() as i32),
                &old_tip.0.to_vec(),
                &rows.last_hash.0.to_vec(),
            ],
        )
        .await?;
        tracing::info!(fork_height, removed, "mirror followed a reorganisation");
    }
    copy_rows(
        &tx,
        "blocks (height, hash, prev_hash, time, bits, nonce, tx_count, size, chain_work)",
        &[
            Type::INT8,
            Type::BYTEA,
            Type::BYTEA,
            Type::INT8,
            Type::INT8,
            Type::INT8,
            Type::INT4,
            Type::INT4,
            Type::BYTEA,
        ],
        rows.blocks.iter().map(|r| {
            vec![
                &r.0 as &(dyn ToSql + Sync),
                &r.1,
                &r.2,
                &r.3,
                &r.4,
                &r.5,
                &r.6,
                &r.7,
                &r.8,
            ]
        }),
        mode,
    )
    .await?;
    copy_rows(
        &tx,
        "transactions (txid, block_height, position, fee, size)",
        &[Type::BYTEA, Type::INT8, Type::INT4, Type::INT8, Type::INT4],
        rows.transactions
            .iter()
            .map(|r| vec![&r.0 as &(dyn ToSql + Sync), &r.1, &r.2, &r.3, &r.4]),
        mode,
    )
    .await?;
    copy_rows(
        &tx,
        "outputs (txid, vout, block_height, address, amount, coinbase)",
        &[
            Type::BYTEA,
            Type::INT4,
            Type::INT8,
            Type::TEXT,
            Type::INT8,
            Type::BOOL,
        ],
        rows.outputs
            .iter()
            .map(|r| vec![&r.0 as &(dyn ToSql + Sync), &r.1, &r.2, &r.3, &r.4, &r.5]),
        mode,
    )
    .await?;
    copy_rows(
        &tx,
        "inputs (txid, vin, block_height, prev_txid, prev_vout, address, amount)",
        &[
            Type::BYTEA,
            Type::INT4,
            Type::INT8,
            Type::BYTEA,
            Type::INT4,
            Type::TEXT,
            Type::INT8,
        ],
        rows.inputs.iter().map(|r| {
            vec![
                &r.0 as &(dyn ToSql + Sync),
                &r.1,
                &r.2,
                &r.3,
                &r.4,
                &r.5,
                &r.6,
            ]
        }),
        mode,
    )
    .await?;
    let (first, last) = (i64::from(rows.first), i64::from(rows.last));
    tx.execute(
        "UPDATE outputs o SET spent_by_txid = i.txid, spent_height = i.block_height
         FROM inputs i
         WHERE i.block_height BETWEEN $1 AND $2 AND o.txid = i.prev_txid AND o.vout = i.prev_vout",
        &[&first, &last],
    )
    .await?;
    if fork.is_some() {
        // After a reorganisation, recompute every touched address from the
        // mirrored rows: rare, and exact whatever was removed.
        let touched: Vec<String> = touched.into_iter().collect();
        tx.execute(
            "DELETE FROM address_balances WHERE address = ANY($1)",
            &[&touched],
        )
        .await?;
        tx.execute(
            "INSERT INTO address_balances (address, balance, utxo_count, tx_count, last_height)
             SELECT a.address, COALESCE(u.balance, 0), COALESCE(u.utxo_count, 0), a.tx_count, a.last_height
             FROM (SELECT address, COUNT(DISTINCT txid) AS tx_count, MAX(block_height) AS last_height
                   FROM (SELECT address, txid, block_height FROM outputs WHERE address = ANY($1)
                         UNION ALL
                         SELECT address, txid, block_height FROM inputs WHERE address = ANY($1)) rows
                   GROUP BY address) a
             LEFT JOIN (SELECT address, SUM(amount)::BIGINT AS balance, COUNT(*) AS utxo_count
                        FROM outputs WHERE address = ANY($1) AND spent_by_txid IS NULL
                        GROUP BY address) u USING (address)",
            &[&touched],
        )
        .await?;
    } else {
        // Extending the chain: add each address's change, computed from
        // these blocks alone (no rescan of an address's history).
        let addresses: Vec<&str> = rows.deltas.keys().map(String::as_str).collect();
        let balances: Vec<i64> = rows.deltas.values().map(|d| d.balance).collect();
        let utxos: Vec<i64> = rows.deltas.values().map(|d| d.utxo_count).collect();
        let txs: Vec<i64> = rows.deltas.values().map(|d| d.txids.len() as i64).collect();
        let heights: Vec<i64> = rows.deltas.values().map(|d| d.last_height).collect();
        tx.execute(
            "INSERT INTO address_balances (address, balance, utxo_count, tx_count, last_height)
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[])
             ON CONFLICT (address) DO UPDATE SET
                 balance = address_balances.balance + EXCLUDED.balance,
                 utxo_count = address_balances.utxo_count + EXCLUDED.utxo_count,
                 tx_count = address_balances.tx_count + EXCLUDED.tx_count,
                 last_height = GREATEST(address_balances.last_height, EXCLUDED.last_height)",
            &[&addresses, &balances, &utxos, &txs, &heights],
        )
        .await?;
    }
    tx.execute(
        "INSERT INTO mirror_state (id, network, height, block_hash) VALUES (TRUE, $1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET height = EXCLUDED.height, block_hash = EXCLUDED.block_hash, updated_at = now()",
        &[&network.name(), &last, &rows.last_hash.0.to_vec()],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The highest height at or below `from` at which the mirror and the store
/// hold the same block; -1 if they share nothing. Compares
/// `FORK_SEARCH_BATCH` heights per query.
async fn find_fork(client: &Client, store: &Store, from: u32) -> Result<i64, MirrorError> {
    let mut high = i64::from(from);
    while high >= 0 {
        let low = (high - FORK_SEARCH_BATCH + 1).max(0);
        let theirs: std::collections::HashMap<i64, BlockHash> = client
            .query(
                "SELECT height, hash FROM blocks WHERE height BETWEEN $1 AND $2",
                &[&low, &high],
            )
            .await?
            .into_iter()
            .map(|r| (r.get(0), hash_from(&r.get::<_, Vec<u8>>(1))))
            .collect();
        for height in (low..=high).rev() {
            let ours = store.hash_at_height(height as u32)?;
            if ours.is_some() && ours.as_ref() == theirs.get(&height) {
                return Ok(height);
            }
        }
        high = low - 1;
    }
    Ok(-1)
}

/// TCP keepalive on both ends of the mirror's connection: idle time before
/// the first probe, time between probes, probes unanswered before the
/// connection is dropped. The mirror holds its advisory lock for its
/// session: a node whose machine died or lost its network would otherwise
/// keep the database locked until the server's own keepalive gave up (two
/// hours by default), and its restarted self be refused as `Busy`.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;

/// Opens a connection with the mirror's timeouts (connect, statement, idle
/// in transaction, keepalive) and a name that shows in `pg_stat_activity`.
async fn open(url: &str, application: &str) -> Result<Client, MirrorError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(CONNECT_TIMEOUT);
    config
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_PROBES);
    if config.get_application_name().is_none() {
        config.application_name(application);
    }
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    client
        .batch_execute(&format!(
            "SET statement_timeout = {}; SET idle_in_transaction_session_timeout = {}; \
             SET tcp_keepalives_idle = {}; SET tcp_keepalives_interval = {}; \
             SET tcp_keepalives_count = {}",
            STATEMENT_TIMEOUT.as_millis(),
            STEP_TIMEOUT.as_millis(),
            KEEPALIVE_IDLE.as_secs(),
            KEEPALIVE_INTERVAL.as_secs(),
            KEEPALIVE_PROBES
        ))
        .await?;
    Ok(client)
}

/// Connects, takes the database for this node (an advisory lock held for
/// the session: a second node gets `MirrorError::Busy`), applies
/// migrations and checks the network recorded in the database.
pub async fn connect(url: &str, network: Network) -> Result<Client, MirrorError> {
    let application = format!("chaincore mirror (pid {})", std::process::id());
    let mut client = open(url, &application).await?;
    let locked: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&ADVISORY_LOCK.0, &ADVISORY_LOCK.1],
        )
        .await?
        .get(0);
    if !locked {
        let holder = client
            .query_opt(
                "SELECT a.application_name, a.client_addr::text, a.backend_start::text
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
                       SELECT oid FROM pg_database WHERE datname = current_database())
                   AND l.classid = $1::int4::oid AND l.objid = $2::int4::oid AND l.objsubid = 2",
                &[&ADVISORY_LOCK.0, &ADVISORY_LOCK.1],
            )
            .await?
            .map_or("holder unknown".to_string(), |r| {
                format!(
                    "'{}' from {} since {}",
                    r.get::<_, Option<String>>(0).unwrap_or_default(),
                    r.get::<_, Option<String>>(1)
                        .unwrap_or_else(|| "a local socket".into()),
                    r.get::<_, Option<String>>(2).unwrap_or_default()
                )
            });
        return Err(MirrorError::Busy { holder });
    }
    migrate::migrate(&mut client).await?;
    check_network(&client, network).await?;
    Ok(client)
}

/// Connects for reading only (`mirror verify`, usable on a replica): no
/// lock, no migration; the schema must be exactly this binary's.
pub async fn connect_read_only(url: &str, network: Network) -> Result<Client, MirrorError> {
    let client = open(url, "chaincore mirror verify").await?;
    client
        .batch_execute("SET default_transaction_read_only = on")
        .await?;
    migrate::check(&client).await?;
    check_network(&client, network).await?;
    Ok(client)
}

async fn check_network(client: &Client, network: Network) -> Result<(), MirrorError> {
    if let Some(row) = client
        .query_opt("SELECT network FROM mirror_state", &[])
        .await?
    {
        let found: String = row.get(0);
        if found != network.name() {
            return Err(MirrorError::WrongNetwork {
                expected: network,
                found,
            });
        }
    }
    Ok(())
}

/// One step: loads the next range (or follows a reorg). Returns the number
/// of blocks loaded: 0 at the tip, and 0 while the node's chain is a strict
/// prefix of the mirror's (it waits for the node to bring those blocks back;
/// if they come on another branch, the next steps follow that reorg). When
/// the store moves under it, the step starts over from the fork, at most
/// `MAX_STEP_ATTEMPTS` times.
pub async fn step(
    client: &mut Client,
    store: &Store,
    network: Network,
    batch: u32,
    mode: LoadMode,
) -> Result<u32, MirrorError> {
    let mut attempt = 1;
    loop {
        match try_step(client, store, network, batch, mode).await {
            Err(e @ (MirrorError::Moved(_) | MirrorError::Unlinked { .. }))
                if attempt < MAX_STEP_ATTEMPTS =>
            {
                tracing::debug!(error = %e, attempt, "mirror step starts over");
                attempt += 1;
            }
            result => return result,
        }
    }
}

async fn try_step(
    client: &mut Client,
    store: &Store,
    network: Network,
    batch: u32,
    mode: LoadMode,
) -> Result<u32, MirrorError> {
    // One step reads one frozen state: the tip, the fork search and the
    // rows agree even while the chain connects or disconnects blocks.
    let store = &store.snapshot();
    let tip = store.tip()?.map_or(0, |t| t.height);
    let (first, fork) = match watermark(client).await? {
        None => (0, None),
        Some((height, hash)) => {
            if height <= tip && store.hash_at_height(height)? == Some(hash) {
                (height + 1, None)
            } else {
                let fork = find_fork(client, store, height.min(tip)).await?;
                if height > tip && fork == i64::from(tip) {
                    // The node is behind the mirror on the same branch.
                    return Ok(0);
                }
                ((fork + 1) as u32, Some((fork, hash)))
            }
        }
    };
    if first > tip {
        return Ok(0);
    }
    let last = tip.min(first.saturating_add(batch.max(1) - 1));
    let store_for_read = store.clone();
    let rows =
        tokio::task::spawn_blocking(move || read_rows(&store_for_read, network, first, last))
            .await
            .expect("reading rows does not panic")?;
    apply(client, network, &rows, fork, mode).await?;
    Ok(last - first + 1)
}

/// Follows the chain until the task is dropped, reconnecting with backoff.
/// `status` always carries the lag against the store's tip, also while
/// PostgreSQL is unreachable.
pub async fn run(
    url: String,
    network: Network,
    store: Store,
    wake: Arc<Notify>,
    status: Arc<Mutex<MirrorStatus>>,
) {
    let mut delay = MIN_RETRY_DELAY;
    let tip_height = |store: &Store| store.tip().ok().flatten().map_or(0, |t| t.height);
    let refresh_lag = |status: &Mutex<MirrorStatus>, tip: u32| {
        let mut s = status.lock().expect("status lock");
        *s = s.clone().at_tip(tip);
    };
    loop {
        let result = async {
            let outcome: Result<(), MirrorError> = async {
            let mut client = connect(&url, network).await?;
            status.lock().expect("status lock").connected = true;
            tracing::info!("mirror connected to PostgreSQL");
            loop {
                let started = Instant::now();
                let loaded = tokio::time::timeout(
                    STEP_TIMEOUT,
                    step(&mut client, &store, network, CATCH_UP_BATCH, LoadMode::Copy),
                )
                .await
                .map_err(|_| MirrorError::Timeout(STEP_TIMEOUT))??;
                delay = MIN_RETRY_DELAY;
                let height = watermark(&client).await?.map(|(h, _)| h);
                let tip = store.tip()?.map_or(0, |t| t.height);
                let lag = {
                    let mut s = status.lock().expect("status lock");
                    s.height = height;
                    s.last_error = None;
                    s.waiting_for_node = height.filter(|h| *h > tip).map(|h| {
                        format!("the mirror holds heights up to {h}, the node's chain of the same branch ends at {tip}: waiting for the node")
                    });
                    *s = s.clone().at_tip(tip);
                    s.lag
                };
                if loaded > 1 {
                    tracing::info!(
                        loaded,
                        height,
                        lag,
                        ms = started.elapsed().as_millis() as u64,
                        "mirror caught up a range"
                    );
                }
                if loaded == 0 {
                    let _ = tokio::time::timeout(IDLE_POLL, wake.notified()).await;
                }
            }
            }
            .await;
            outcome
        };
        // A bug must not leave the mirror dead while /status looks fine:
        // a panic is reported like any failure, and the mirror retries.
        let result = std::panic::AssertUnwindSafe(result)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(MirrorError::Panicked(message))
            });
        if let Err(error) = result {
            refresh_lag(&status, tip_height(&store));
            // The status first, then the log: whoever reads the log line
            // finds the error in `/status` already.
            let lag = {
                let mut s = status.lock().expect("status lock");
                s.connected = false;
                s.last_error = Some(error.to_string());
                s.lag
            };
            tracing::warn!(%error, lag, retry_in_ms = delay.as_millis() as u64, "mirror failed; the node carries on");
            // Wait out the backoff, keeping the lag true as blocks arrive.
            let until = Instant::now() + delay;
            while Instant::now() < until {
                let _ =
                    tokio::time::timeout(IDLE_POLL.min(until - Instant::now()), wake.notified())
                        .await;
                refresh_lag(&status, tip_height(&store));
            }
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }
}

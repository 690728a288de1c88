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

use futures_util::pin_mut;
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

/// How rows are written: binary COPY (the mirror) or plain INSERTs (kept
/// for the benchmark that compares them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    Copy,
    Insert,
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the mirror database holds network {found}, the node runs {expected}")]
    WrongNetwork { expected: Network, found: String },
    #[error("store changed while reading height {0}; retrying")]
    Moved(u32),
}

/// What `/status` and `/metrics` show of the mirror.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MirrorStatus {
    pub connected: bool,
    /// Height of the watermark (`None` before the first load).
    pub height: Option<u32>,
    /// Blocks the mirror is behind the node's tip.
    pub lag: u32,
    pub last_error: Option<String>,
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

/// Reads heights `first..=last` of the active chain from the store.
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
                for (vin, input) in tx.inputs.iter().enumerate() {
                    let (outpoint, utxo) = spent.next().ok_or(MirrorError::Moved(height))?;
                    debug_assert_eq!(*outpoint, input.prevout());
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

/// The watermark: height and hash of the last mirrored block.
pub async fn watermark(client: &Client) -> Result<Option<(u32, BlockHash)>, tokio_postgres::Error> {
    Ok(client
        .query_opt("SELECT height, block_hash FROM mirror_state", &[])
        .await?
        .map(|row| {
            let height: i64 = row.get(0);
            let hash: Vec<u8> = row.get(1);
            (height as u32, hash_from(&hash))
        }))
}

fn hash_from(bytes: &[u8]) -> BlockHash {
    let mut out = [0u8; 32];
    if bytes.len() == 32 {
        out.copy_from_slice(bytes);
    }
    Hash256(out)
}

/// Loads `rows` in one transaction, first removing everything above `fork`
/// if given, and moves the watermark.
pub async fn apply(
    client: &mut Client,
    network: Network,
    rows: &BlockRows,
    fork: Option<(i64, BlockHash)>,
    mode: LoadMode,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
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
                &((rows.last - rows.first + 1) as i32),
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
    tx.commit().await
}

/// The highest height at which the mirror and the store agree, walking down
/// from `from`; -1 if they share nothing.
async fn find_fork(client: &Client, store: &Store, from: u32) -> Result<i64, MirrorError> {
    let mut height = i64::from(from);
    while height >= 0 {
        let ours = store.hash_at_height(height as u32)?;
        let theirs = client
            .query_opt("SELECT hash FROM blocks WHERE height = $1", &[&height])
            .await?
            .map(|r| hash_from(&r.get::<_, Vec<u8>>(0)));
        if ours.is_some() && ours == theirs {
            return Ok(height);
        }
        height -= 1;
    }
    Ok(-1)
}

/// Connects, applies migrations and checks the network recorded in the
/// database.
pub async fn connect(url: &str, network: Network) -> Result<Client, MirrorError> {
    let (mut client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    migrate::migrate(&mut client).await?;
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
    Ok(client)
}

/// One step: loads the next range (or handles a reorg). Returns the number
/// of blocks loaded (0 when at the tip).
pub async fn step(
    client: &mut Client,
    store: &Store,
    network: Network,
    batch: u32,
    mode: LoadMode,
) -> Result<u32, MirrorError> {
    let tip = store.tip()?.map_or(0, |t| t.height);
    let (first, fork) = match watermark(client).await? {
        None => (0, None),
        Some((height, hash)) => {
            if store.hash_at_height(height)? == Some(hash) {
                (height + 1, None)
            } else {
                let fork = find_fork(client, store, height.min(tip)).await?;
                ((fork + 1) as u32, Some((fork, hash)))
            }
        }
    };
    if first > tip && fork.is_none() {
        return Ok(0);
    }
    let last = tip.min(first + batch - 1);
    let store_for_read = store.clone();
    let rows =
        tokio::task::spawn_blocking(move || read_rows(&store_for_read, network, first, last))
            .await
            .expect("reading rows does not panic")?;
    apply(client, network, &rows, fork, mode).await?;
    Ok(last - first + 1)
}

/// Follows the chain until the task is dropped, reconnecting with backoff.
pub async fn run(
    url: String,
    network: Network,
    store: Store,
    wake: Arc<Notify>,
    status: Arc<Mutex<MirrorStatus>>,
) {
    let mut delay = MIN_RETRY_DELAY;
    loop {
        let result: Result<(), MirrorError> = async {
            let mut client = connect(&url, network).await?;
            status.lock().expect("status lock").connected = true;
            tracing::info!("mirror connected to PostgreSQL");
            loop {
                let started = Instant::now();
                let loaded =
                    step(&mut client, &store, network, CATCH_UP_BATCH, LoadMode::Copy).await?;
                delay = MIN_RETRY_DELAY;
                let height = watermark(&client).await?.map(|(h, _)| h);
                let tip = store.tip()?.map_or(0, |t| t.height);
                let lag = height.map_or(tip + 1, |h| tip.saturating_sub(h));
                {
                    let mut s = status.lock().expect("status lock");
                    s.height = height;
                    s.lag = lag;
                    s.last_error = None;
                }
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
        if let Err(error) = result {
            let lag = status.lock().expect("status lock").lag;
            tracing::warn!(%error, lag, retry_in_ms = delay.as_millis() as u64, "mirror failed; the node carries on");
            {
                let mut s = status.lock().expect("status lock");
                s.connected = false;
                s.last_error = Some(error.to_string());
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }
}

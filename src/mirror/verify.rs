//! `chaincore mirror verify`: compares every address balance and the UTXO
//! set in PostgreSQL with the node's store at the mirrored height.
//!
//! Read-only (one `REPEATABLE READ READ ONLY` transaction, so it runs on a
//! replica and sees one snapshot) and streaming: the store is walked in
//! batches of `VERIFY_BATCH` on a blocking thread, each batch looked up in
//! PostgreSQL by key; rows that only PostgreSQL holds are found by counting
//! and then listed through a server-side cursor. Memory stays a few batches
//! whatever the size of the chain.

use std::collections::HashMap;

use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::{watermark, MirrorError};
use crate::consensus::address::Address;
use crate::consensus::hash::Hash256;
use crate::consensus::params::Network;
use crate::consensus::transaction::OutPoint;
use crate::store::schema::AddressStats;
use crate::store::{Store, StoreError};

/// Most differences listed one by one; the rest are only counted.
const MAX_LISTED: usize = 25;
/// Rows per store batch, per PostgreSQL lookup and per cursor fetch: large
/// enough that round trips do not dominate, small enough that a batch is a
/// few megabytes.
pub const VERIFY_BATCH: usize = 10_000;
/// Batches the store walker may run ahead of the comparison.
const BATCHES_AHEAD: usize = 2;

#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub mirror_height: Option<u32>,
    pub store_height: u32,
    pub addresses_compared: usize,
    pub utxos_compared: usize,
    pub differences: Vec<String>,
    pub difference_count: usize,
}

impl VerifyReport {
    fn differ(&mut self, message: String) {
        self.difference_count += 1;
        if self.differences.len() < MAX_LISTED {
            self.differences.push(message);
        }
    }

    pub fn is_consistent(&self) -> bool {
        self.difference_count == 0
    }
}

/// Compares PostgreSQL (through `client`, never written to) with `store`.
pub async fn verify(
    client: &Client,
    store: &Store,
    network: Network,
) -> Result<VerifyReport, MirrorError> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let result = verify_snapshot(client, store, network).await;
    let ended = client.batch_execute("ROLLBACK").await;
    let report = result?;
    ended?;
    Ok(report)
}

/// A walk over one of the store's tables, calling back per row.
type StoreWalk<T> = fn(&Store, &mut dyn FnMut(T)) -> Result<(), StoreError>;

/// Walks the store with `walk` on a blocking thread, sending batches.
fn stream<T: Send + 'static>(
    store: &Store,
    walk: StoreWalk<T>,
) -> (
    mpsc::Receiver<Vec<T>>,
    tokio::task::JoinHandle<Result<(), StoreError>>,
) {
    let (sender, receiver) = mpsc::channel(BATCHES_AHEAD);
    let store = store.clone();
    let walker = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(VERIFY_BATCH);
        let mut open = true;
        walk(&store, &mut |item| {
            if open {
                batch.push(item);
                if batch.len() == VERIFY_BATCH {
                    open = sender.blocking_send(std::mem::take(&mut batch)).is_ok();
                }
            }
        })?;
        if open && !batch.is_empty() {
            let _ = sender.blocking_send(batch);
        }
        Ok(())
    });
    (receiver, walker)
}

async fn finish(
    walker: tokio::task::JoinHandle<Result<(), StoreError>>,
) -> Result<(), MirrorError> {
    walker.await.expect("walking the store does not panic")?;
    Ok(())
}

/// Calls `f` for every row of `query`, fetched through a cursor
/// `VERIFY_BATCH` rows at a time.
async fn for_each_row(
    client: &Client,
    query: &str,
    mut f: impl FnMut(tokio_postgres::Row) -> Result<(), MirrorError>,
) -> Result<(), MirrorError> {
    client
        .batch_execute(&format!("DECLARE verify_rows NO SCROLL CURSOR FOR {query}"))
        .await?;
    loop {
        let rows = client
            .query(&format!("FETCH {VERIFY_BATCH} FROM verify_rows"), &[])
            .await?;
        if rows.is_empty() {
            break;
        }
        rows.into_iter().try_for_each(&mut f)?;
    }
    client.batch_execute("CLOSE verify_rows").await?;
    Ok(())
}

fn stats_row(stats: &AddressStats) -> (i64, i64, i64) {
    (
        stats.balance() as i64,
        stats.utxo_count() as i64,
        stats.tx_count as i64,
    )
}

async fn verify_snapshot(
    client: &Client,
    store: &Store,
    network: Network,
) -> Result<VerifyReport, MirrorError> {
    let tip = store.tip()?.ok_or(MirrorError::Moved(0))?;
    let mut report = VerifyReport {
        store_height: tip.height,
        ..VerifyReport::default()
    };
    let Some((height, hash)) = watermark(client).await? else {
        report.differ("the mirror holds no block yet".into());
        return Ok(report);
    };
    report.mirror_height = Some(height);
    if hash != tip.hash {
        report.differ(format!(
            "the mirror is at height {height} ({hash}), the store at {} ({}): compare once the mirror has caught up",
            tip.height, tip.hash
        ));
        return Ok(report);
    }
    compare_addresses(client, store, network, &mut report).await?;
    compare_utxos(client, store, network, &mut report).await?;
    Ok(report)
}

async fn compare_addresses(
    client: &Client,
    store: &Store,
    network: Network,
    report: &mut VerifyReport,
) -> Result<(), MirrorError> {
    let (mut batches, walker) = stream(store, |store, f| {
        store.for_each_address_stats(|owner, stats| f((owner, stats)))
    });
    let (mut ours, mut found) = (0usize, 0usize);
    while let Some(batch) = batches.recv().await {
        ours += batch.len();
        let addresses: Vec<String> = batch
            .iter()
            .map(|(owner, _)| Address::new(network, *owner).to_string())
            .collect();
        let theirs: HashMap<String, (i64, i64, i64)> = client
            .query(
                "SELECT address, balance, utxo_count, tx_count FROM address_balances
                 WHERE address = ANY($1)",
                &[&addresses],
            )
            .await?
            .into_iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
            .collect();
        found += theirs.len();
        for (address, (_, stats)) in addresses.iter().zip(&batch) {
            let expected = stats_row(stats);
            match theirs.get(address) {
                Some(row) if *row == expected => {}
                Some((balance, utxos, txs)) => report.differ(format!(
                    "{address}: PostgreSQL balance {balance}, {utxos} UTXOs, {txs} txs; node {}, {}, {}",
                    expected.0, expected.1, expected.2
                )),
                None => report.differ(format!("{address}: missing from address_balances")),
            }
        }
    }
    finish(walker).await?;
    let total: i64 = client
        .query_one("SELECT count(*) FROM address_balances", &[])
        .await?
        .get(0);
    let total = total as usize;
    report.addresses_compared = ours.max(total);
    if total > found {
        for_each_row(client, "SELECT address FROM address_balances", |row| {
            let address: String = row.get(0);
            let known = match Address::parse(&address, network) {
                Ok(a) => store.address_stats(&a.hash)? != AddressStats::default(),
                Err(_) => false,
            };
            if !known {
                report.differ(format!(
                    "{address}: in address_balances, unknown to the node"
                ));
            }
            Ok(())
        })
        .await?;
    }
    Ok(())
}

async fn compare_utxos(
    client: &Client,
    store: &Store,
    network: Network,
    report: &mut VerifyReport,
) -> Result<(), MirrorError> {
    let (mut batches, walker) = stream(store, |store, f| {
        store.for_each_utxo(|outpoint, utxo| f((outpoint, utxo)))
    });
    let (mut ours, mut found) = (0usize, 0usize);
    while let Some(batch) = batches.recv().await {
        ours += batch.len();
        let txids: Vec<Vec<u8>> = batch.iter().map(|(o, _)| o.txid.0.to_vec()).collect();
        let vouts: Vec<i32> = batch.iter().map(|(o, _)| o.vout as i32).collect();
        let theirs: HashMap<(Vec<u8>, i32), (String, i64)> = client
            .query(
                "SELECT o.txid, o.vout, o.address, o.amount
                 FROM outputs o JOIN UNNEST($1::bytea[], $2::int4[]) AS k (txid, vout)
                   ON o.txid = k.txid AND o.vout = k.vout
                 WHERE o.spent_by_txid IS NULL",
                &[&txids, &vouts],
            )
            .await?
            .into_iter()
            .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
            .collect();
        found += theirs.len();
        for ((outpoint, utxo), key) in batch.iter().zip(txids.into_iter().zip(vouts)) {
            let expected = (
                Address::new(network, utxo.output.owner).to_string(),
                utxo.output.amount.units() as i64,
            );
            if theirs.get(&key) != Some(&expected) {
                report.differ(format!(
                    "UTXO {}:{} differs or is missing in PostgreSQL",
                    hex::encode(outpoint.txid.0),
                    outpoint.vout
                ));
            }
        }
    }
    finish(walker).await?;
    let total: i64 = client
        .query_one(
            "SELECT count(*) FROM outputs WHERE spent_by_txid IS NULL",
            &[],
        )
        .await?
        .get(0);
    let total = total as usize;
    report.utxos_compared = ours.max(total);
    if total > found {
        for_each_row(
            client,
            "SELECT txid, vout FROM outputs WHERE spent_by_txid IS NULL",
            |row| {
                let txid: Vec<u8> = row.get(0);
                let vout: i32 = row.get(1);
                let outpoint = OutPoint {
                    txid: Hash256(txid.as_slice().try_into().unwrap_or([0; 32])),
                    vout: vout as u32,
                };
                if store.utxo(&outpoint)?.is_none() {
                    report.differ(format!(
                        "UTXO {}:{} is unspent in PostgreSQL only",
                        hex::encode(&txid),
                        vout
                    ));
                }
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

//! `chaincore mirror verify`: compares every address balance and the UTXO
//! set in PostgreSQL with the node's store at the mirrored height.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::{watermark, MirrorError};
use crate::consensus::address::Address;
use crate::consensus::params::Network;
use crate::store::Store;

/// Most differences listed one by one; the rest are only counted.
const MAX_LISTED: usize = 25;

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

pub async fn verify(
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

    let mut ours: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    store.for_each_address_stats(|owner, stats| {
        ours.insert(
            Address::new(network, owner).to_string(),
            (
                stats.balance() as i64,
                stats.utxo_count() as i64,
                stats.tx_count as i64,
            ),
        );
    })?;
    let mut theirs: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for row in client
        .query(
            "SELECT address, balance, utxo_count, tx_count FROM address_balances",
            &[],
        )
        .await?
    {
        theirs.insert(row.get(0), (row.get(1), row.get(2), row.get(3)));
    }
    report.addresses_compared = ours.len().max(theirs.len());
    for (address, expected) in &ours {
        match theirs.get(address) {
            Some(found) if found == expected => {}
            Some((balance, utxos, txs)) => report.differ(format!(
                "{address}: PostgreSQL balance {balance}, {utxos} UTXOs, {txs} txs; node {}, {}, {}",
                expected.0, expected.1, expected.2
            )),
            None => report.differ(format!("{address}: missing from address_balances")),
        }
    }
    for address in theirs.keys().filter(|a| !ours.contains_key(*a)) {
        report.differ(format!(
            "{address}: in address_balances, unknown to the node"
        ));
    }

    let mut our_utxos: BTreeMap<(Vec<u8>, i32), (String, i64)> = BTreeMap::new();
    store.for_each_utxo(|outpoint, utxo| {
        our_utxos.insert(
            (outpoint.txid.0.to_vec(), outpoint.vout as i32),
            (
                Address::new(network, utxo.output.owner).to_string(),
                utxo.output.amount.units() as i64,
            ),
        );
    })?;
    let mut their_utxos: BTreeMap<(Vec<u8>, i32), (String, i64)> = BTreeMap::new();
    for row in client
        .query(
            "SELECT txid, vout, address, amount FROM outputs WHERE spent_by_txid IS NULL",
            &[],
        )
        .await?
    {
        their_utxos.insert((row.get(0), row.get(1)), (row.get(2), row.get(3)));
    }
    report.utxos_compared = our_utxos.len().max(their_utxos.len());
    for (key, value) in &our_utxos {
        if their_utxos.get(key) != Some(value) {
            report.differ(format!(
                "UTXO {}:{} differs or is missing in PostgreSQL",
                hex::encode(&key.0),
                key.1
            ));
        }
    }
    for key in their_utxos.keys().filter(|k| !our_utxos.contains_key(*k)) {
        report.differ(format!(
            "UTXO {}:{} is unspent in PostgreSQL only",
            hex::encode(&key.0),
            key.1
        ));
    }
    Ok(report)
}

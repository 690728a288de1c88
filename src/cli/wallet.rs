//! `chaincore wallet`: a one-key wallet that talks to any node's REST API.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::json;

use crate::client::NodeClient;
use crate::consensus::address::Address;
use crate::consensus::amount::Amount;
use crate::consensus::hash::Hash256;
use crate::consensus::params::Network;
use crate::consensus::transaction::OutPoint;
use crate::encoding::Encode;
use crate::wallet::spend::{
    build_transaction, plan_spend, Coin, FeeLimit, FeePolicy, DEFAULT_MAX_FEE,
    DEFAULT_MAX_FEE_PERCENT, MIN_FEE_RATE_PER_BYTE,
};
use crate::wallet::Wallet;

/// UTXOs asked for per page when the wallet lists its coins.
const UTXO_PAGE: usize = 1000;
/// Most coins the wallet reads before it stops paging: a node that pages
/// without end is refused rather than followed.
const MAX_WALLET_UTXOS: usize = 1_000_000;
/// Unconfirmed transactions the node lists per page of
/// `/address/{a}/txs/mempool`: a shorter page is the last.
const MEMPOOL_PAGE: usize = 50;
/// Most unconfirmed transactions of its own the wallet reads: the mempool's
/// default 300 MiB holds fewer of the smallest transactions (about 1 KB
/// each in memory).
const MAX_PENDING_TXS: usize = 1_000_000;
/// Times the wallet re-reads its UTXOs when the tip moves while it pages
/// through them, before giving up.
const UTXO_READ_ATTEMPTS: usize = 5;
/// Environment variable holding the wallet passphrase (for scripts).
pub const PASSPHRASE_ENV: &str = "CHAINCORE_WALLET_PASSPHRASE";
/// Confirmation target (blocks) of the default fee rate.
const DEFAULT_FEE_TARGET: &str = "2";

#[derive(Debug, Args)]
pub struct WalletArgs {
    /// The wallet file.
    #[arg(long, global = true, env = "CHAINCORE_WALLET")]
    wallet: Option<PathBuf>,
    /// The node's REST URL (default: the wallet network's port on
    /// 127.0.0.1).
    #[arg(long, global = true, env = "CHAINCORE_NODE")]
    node: Option<String>,
    /// A file whose first line is the passphrase (otherwise
    /// CHAINCORE_WALLET_PASSPHRASE, otherwise a prompt on the terminal).
    #[arg(long, global = true)]
    passphrase_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: WalletCommand,
}

#[derive(Debug, Subcommand)]
enum WalletCommand {
    /// Make a new key and write it to the wallet file (mode 0600; an
    /// existing file is never overwritten).
    New {
        /// The network the key's address is for: main, test or regtest.
        #[arg(long, default_value = "main", value_parser = super::parse_network)]
        network: Network,
        /// Seal the key with a passphrase (Argon2id + ChaCha20-Poly1305).
        #[arg(long)]
        encrypt: bool,
    },
    /// Print the wallet's address (alone on the last line).
    Address,
    /// Confirmed, pending and spendable balance.
    Balance,
    /// The wallet's unspent outputs.
    Utxos,
    /// Confirmed transactions, newest first, with the wallet's net change.
    History {
        /// How many transactions to show.
        #[arg(long, default_value_t = 25)]
        limit: usize,
    },
    /// Follow the wallet's activity as it happens (the node's event
    /// stream): one line per payment, confirmation, dropped transaction or
    /// reorganisation; reconnects and resumes after a drop. Runs until
    /// interrupted.
    Watch,
    /// Pay an address; prints the txid on the last line.
    Send {
        /// Recipient address.
        #[arg(long)]
        to: String,
        /// Amount in CC (up to 8 decimals, e.g. 1.5).
        #[arg(long)]
        amount: Amount,
        /// An exact fee, in CC (e.g. 0.0001).
        #[arg(long = "fee-cc", value_name = "CC", conflicts_with = "fee_rate")]
        fee_cc: Option<Amount>,
        /// Fee rate in whole base units per byte (1 CC = 100 000 000
        /// units; default: the node's estimate for the next 2 blocks).
        #[arg(long, value_name = "UNITS_PER_BYTE", value_parser = parse_fee_rate)]
        fee_rate: Option<u64>,
        /// The most fee this payment may pay, in CC.
        #[arg(long, value_name = "CC", default_value_t = DEFAULT_MAX_FEE)]
        max_fee: Amount,
        /// The most fee this payment may pay, in percent of the amount.
        #[arg(long, value_name = "PERCENT", default_value_t = DEFAULT_MAX_FEE_PERCENT)]
        max_fee_percent: u64,
        /// Send without asking for confirmation on a terminal.
        #[arg(long)]
        yes: bool,
    },
}

/// The parts of `GET /address/{a}` the wallet reads.
#[derive(Debug, Deserialize)]
struct AddressInfo {
    chain_stats: Stats,
    mempool_stats: Stats,
    balance: u64,
}

/// esplora's address stats. The sums are u128, as the node keeps them: an
/// address can receive the same coins many times over.
#[derive(Debug, Deserialize)]
struct Stats {
    funded_txo_sum: u128,
    spent_txo_sum: u128,
    tx_count: u64,
}

/// An entry of esplora's `/address/{a}/utxo`.
#[derive(Debug, Deserialize)]
struct UtxoEntry {
    txid: Hash256,
    vout: u32,
    value: u64,
    status: UtxoStatus,
    /// ChainCore's own: a block reward, and whether it can be spent in the
    /// next block.
    coinbase: bool,
    mature: bool,
}

#[derive(Debug, Deserialize)]
struct UtxoStatus {
    confirmed: bool,
    block_height: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct TxInfo {
    txid: Hash256,
    status: Option<UtxoStatus>,
    /// When an unconfirmed transaction entered the pool (its page cursor).
    first_seen: Option<u32>,
    vin: Vec<TxInput>,
    vout: Vec<TxOutput>,
    fee: u64,
}

#[derive(Debug, Deserialize)]
struct TxInput {
    txid: Option<Hash256>,
    vout: Option<u32>,
    prevout: Option<TxOutput>,
}

#[derive(Debug, Deserialize)]
struct TxOutput {
    #[serde(rename = "scriptpubkey_address")]
    address: String,
    value: u64,
}

pub fn run(args: WalletArgs) -> Result<()> {
    let path = args
        .wallet
        .clone()
        .context("pass --wallet FILE (or set CHAINCORE_WALLET)")?;
    if let WalletCommand::New { network, encrypt } = args.command {
        let passphrase = if encrypt {
            Some(new_passphrase(args.passphrase_file.as_deref())?)
        } else {
            None
        };
        let wallet = Wallet::create(&path, network, passphrase.as_deref())?;
        if args.json {
            println!(
                "{}",
                json!({ "network": network.name(), "address": wallet.address().to_string(),
                        "encrypted": encrypt, "file": path.display().to_string() })
            );
        } else {
            eprintln!(
                "wrote {} ({} wallet{}, mode 0600)",
                path.display(),
                network.name(),
                if encrypt { ", encrypted" } else { "" }
            );
            println!("{}", wallet.address());
        }
        return Ok(());
    }
    let wallet = Wallet::open(&path)?;
    if let WalletCommand::Address = args.command {
        if args.json {
            println!(
                "{}",
                json!({ "network": wallet.network().name(), "address": wallet.address().to_string() })
            );
        } else {
            println!("{}", wallet.address());
        }
        return Ok(());
    }
    let url = args.node.clone().unwrap_or_else(|| {
        format!(
            "http://127.0.0.1:{}",
            wallet.network().params().default_api_port
        )
    });
    let client = NodeClient::new(&url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        check_network(&client, wallet.network()).await?;
        match args.command {
            WalletCommand::New { .. } | WalletCommand::Address => unreachable!("handled above"),
            WalletCommand::Balance => balance(&client, &wallet, args.json).await,
            WalletCommand::Utxos => utxos(&client, &wallet, args.json).await,
            WalletCommand::History { limit } => history(&client, &wallet, limit, args.json).await,
            WalletCommand::Watch => watch(&client, &wallet, args.json).await,
            WalletCommand::Send {
                to,
                amount,
                fee_cc,
                fee_rate,
                max_fee,
                max_fee_percent,
                yes,
            } => {
                // The address's error names it.
                let to = Address::parse(&to, wallet.network()).context("recipient")?;
                let policy = match (fee_cc, fee_rate) {
                    (Some(fee), _) => FeePolicy::Fixed(fee),
                    (None, Some(rate)) => FeePolicy::Rate(rate),
                    (None, None) => FeePolicy::Rate(estimated_fee_rate(&client).await?),
                };
                let coins = coins(&client, &wallet.address()).await?;
                let plan = plan_spend(&coins, amount, policy)?;
                FeeLimit {
                    max_fee,
                    max_percent: max_fee_percent,
                }
                .check(&plan)?;
                if !yes && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                    confirm(&plan, &to)?;
                }
                // The passphrase last: a spend the coins cannot pay, or one
                // refused at the prompt, never asks for it.
                let passphrase = if wallet.is_encrypted() {
                    Some(passphrase(args.passphrase_file.as_deref())?)
                } else {
                    None
                };
                let key = wallet.unlock(passphrase.as_deref())?;
                let tx = build_transaction(&plan, &key, to.hash);
                let txid = tx.txid();
                let answered: String = client
                    .post_text("/tx", hex::encode(tx.to_bytes()))
                    .await
                    .context("the node refused the transaction")?;
                if answered.trim() != txid.to_string() {
                    bail!(
                        "the node at {} answered txid {:?} for the wallet's transaction {txid}: \
                         it does not speak for this transaction; check with another node",
                        client.base_url(),
                        answered.chars().take(100).collect::<String>()
                    );
                }
                if args.json {
                    println!(
                        "{}",
                        json!({
                            "txid": txid, "amount": plan.amount.units(), "fee": plan.fee.units(),
                            "change": plan.change.map(|c| c.units()), "inputs": plan.inputs.len(),
                            "size": plan.size,
                        })
                    );
                } else {
                    eprintln!(
                        "sent {} CC to {to} with a fee of {} CC ({} inputs, {} bytes{})",
                        plan.amount,
                        plan.fee,
                        plan.inputs.len(),
                        plan.size,
                        plan.change
                            .map(|c| format!(", {c} CC change"))
                            .unwrap_or_default()
                    );
                    println!("{txid}");
                }
                Ok(())
            }
        }
    })
}

/// Shows the payment and its fee and asks before sending.
fn confirm(plan: &crate::wallet::spend::SpendPlan, to: &Address) -> Result<()> {
    eprint!(
        "send {} CC to {to} with a fee of {} CC ({} units/byte, {} bytes)? [y/N] ",
        plan.amount,
        plan.fee,
        plan.fee.units() / plan.size.max(1) as u64,
        plan.size
    );
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("not sent");
    }
    Ok(())
}

/// `--fee-rate`: whole base units per byte. A decimal looks like an amount
/// of CC (that is `--fee-cc`) and is refused rather than guessed.
fn parse_fee_rate(s: &str) -> Result<u64, String> {
    if s.contains('.') {
        return Err(format!(
            "{s:?}: a fee rate is whole base units per byte (1 CC = 100 000 000 units); for a fee in CC use --fee-cc"
        ));
    }
    s.parse()
        .map_err(|e| format!("{s:?} is not a whole number of units per byte: {e}"))
}

/// Refuses to use a node of another network than the wallet's.
async fn check_network(client: &NodeClient, network: Network) -> Result<()> {
    #[derive(Deserialize)]
    struct Status {
        network: String,
    }
    let status: Status = client.get("/status").await?;
    if status.network != network.name() {
        bail!(
            "the node at {} runs {}, the wallet is for {}",
            client.base_url(),
            status.network,
            network.name()
        );
    }
    Ok(())
}

/// The node's fee estimate for [`DEFAULT_FEE_TARGET`], rounded up to whole
/// units per byte.
async fn estimated_fee_rate(client: &NodeClient) -> Result<u64> {
    let estimates: std::collections::HashMap<String, f64> = client.get("/fee-estimates").await?;
    let rate = estimates
        .get(DEFAULT_FEE_TARGET)
        .copied()
        .unwrap_or(MIN_FEE_RATE_PER_BYTE as f64);
    Ok((rate.ceil() as u64).max(MIN_FEE_RATE_PER_BYTE))
}

/// The next page named by a response's `Link` header (RFC 8288), if any.
/// Only a path on the same node is followed: a target that could name
/// another host (`//host`, `@host`, a scheme) is refused.
fn next_page(headers: &hyper::HeaderMap) -> Result<Option<String>> {
    let Some(link) = headers.get(hyper::header::LINK) else {
        return Ok(None);
    };
    let link = link
        .to_str()
        .context("the node's Link header is not text")?;
    let target = link.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    });
    match target {
        Some(t) if t.starts_with('/') && !t.starts_with("//") && !t.contains(['@', '\\']) => {
            Ok(Some(t))
        }
        Some(t) => bail!("the node's next page {t:?} is not a path on the node"),
        None => Ok(None),
    }
}

/// Every confirmed unspent output of `address` that no pool transaction
/// spends, page by page, all pages read at one tip: when a block arrives
/// between two pages (a coin could be listed twice or not at all), the
/// wallet reads them again.
async fn utxo_entries(client: &NodeClient, address: &Address) -> Result<Vec<UtxoEntry>> {
    'attempt: for _ in 0..UTXO_READ_ATTEMPTS {
        let mut all = Vec::new();
        let mut path = format!("/address/{address}/utxo?limit={UTXO_PAGE}");
        let mut anchor: Option<String> = None;
        loop {
            let (page, headers): (Vec<UtxoEntry>, _) = client.get_with_headers(&path).await?;
            let tip = headers
                .get(crate::api::TIP_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match (&anchor, tip) {
                (None, tip) => anchor = tip,
                (Some(before), Some(now)) if *before != now => continue 'attempt,
                _ => {}
            }
            all.extend(page.into_iter().filter(|u| u.status.confirmed));
            if all.len() > MAX_WALLET_UTXOS {
                bail!(
                    "the node at {} lists more than {MAX_WALLET_UTXOS} coins for {address}",
                    client.base_url()
                );
            }
            match next_page(&headers)? {
                Some(next) => path = next,
                None => return Ok(all),
            }
        }
    }
    bail!(
        "the tip of {} moved while reading {address}'s coins, {UTXO_READ_ATTEMPTS} times: try again",
        client.base_url()
    )
}

/// The address's unconfirmed transactions, newest first, every page of
/// them (the node lists `MEMPOOL_PAGE` at a time).
async fn pending_txs(client: &NodeClient, address: &Address) -> Result<Vec<TxInfo>> {
    let mut all: Vec<TxInfo> = Vec::new();
    let mut cursor: Option<(u32, Hash256)> = None;
    loop {
        let path = match cursor {
            None => format!("/address/{address}/txs/mempool"),
            Some((time, txid)) => format!("/address/{address}/txs/mempool?cursor={time}:{txid}"),
        };
        let page: Vec<TxInfo> = client.get(&path).await?;
        let full = page.len() >= MEMPOOL_PAGE;
        let next = page.last().and_then(|t| Some((t.first_seen?, t.txid)));
        all.extend(page);
        match next {
            Some(next) if full => {
                if cursor.is_some_and(|before| next >= before) || all.len() > MAX_PENDING_TXS {
                    bail!(
                        "the node at {} pages {address}'s unconfirmed transactions without end",
                        client.base_url()
                    );
                }
                cursor = Some(next);
            }
            _ => return Ok(all),
        }
    }
}

/// What the wallet can spend from: its confirmed UTXOs, plus the change of
/// its own unconfirmed transactions (those whose inputs are all ours), as
/// Bitcoin Core trusts its own change. Payments from others count once
/// they confirm.
async fn coins(client: &NodeClient, address: &Address) -> Result<Vec<Coin>> {
    let mut coins: Vec<Coin> = utxo_entries(client, address)
        .await?
        .into_iter()
        .map(|u| Coin {
            outpoint: OutPoint::new(u.txid, u.vout),
            value: Amount::from_units(u.value),
            // The node lists no output a pool transaction spends.
            spent_in_mempool: false,
            immature: !u.mature,
            confirmed: true,
        })
        .collect();
    coins.extend(own_change(
        &pending_txs(client, address).await?,
        &address.to_string(),
    ));
    Ok(coins)
}

/// Outputs to `mine` of pool transactions funded only by `mine`.
fn own_change(pending: &[TxInfo], mine: &str) -> Vec<Coin> {
    let spent: std::collections::HashSet<OutPoint> = pending
        .iter()
        .flat_map(|tx| &tx.vin)
        .filter_map(|i| Some(OutPoint::new(i.txid?, i.vout?)))
        .collect();
    pending
        .iter()
        .filter(|tx| {
            !tx.vin.is_empty()
                && tx
                    .vin
                    .iter()
                    .all(|i| i.prevout.as_ref().is_some_and(|p| p.address == mine))
        })
        .flat_map(|tx| {
            tx.vout
                .iter()
                .enumerate()
                .filter(|(_, o)| o.address == mine)
                .map(|(vout, o)| {
                    let outpoint = OutPoint::new(tx.txid, vout as u32);
                    Coin {
                        outpoint,
                        value: Amount::from_units(o.value),
                        spent_in_mempool: spent.contains(&outpoint),
                        immature: false,
                        confirmed: false,
                    }
                })
        })
        .collect()
}

async fn balance(client: &NodeClient, wallet: &Wallet, as_json: bool) -> Result<()> {
    let address = wallet.address();
    let info: AddressInfo = client.get(&format!("/address/{address}")).await?;
    let coins = coins(client, &address).await?;
    let sum = |f: fn(&Coin) -> bool| -> u64 {
        coins.iter().filter(|c| f(c)).map(|c| c.value.units()).sum()
    };
    let spendable = sum(|c| !c.immature && !c.spent_in_mempool);
    let immature = sum(|c| c.immature);
    let pending =
        info.mempool_stats.funded_txo_sum as i128 - info.mempool_stats.spent_txo_sum as i128;
    if as_json {
        println!(
            "{}",
            json!({
                "address": address.to_string(),
                "confirmed": info.balance,
                "pending": pending as i64,
                "spendable": spendable,
                "immature": immature,
                "tx_count": info.chain_stats.tx_count,
                "pending_tx_count": info.mempool_stats.tx_count,
            })
        );
        return Ok(());
    }
    debug_assert_eq!(
        u128::from(info.balance),
        info.chain_stats.funded_txo_sum - info.chain_stats.spent_txo_sum
    );
    println!("address    {address}");
    println!("confirmed  {} CC", Amount::from_units(info.balance));
    println!("pending    {} CC", signed_cc(pending));
    println!("spendable  {} CC", Amount::from_units(spendable));
    println!("immature   {} CC", Amount::from_units(immature));
    Ok(())
}

fn signed_cc(units: i128) -> String {
    let sign = if units < 0 { "-" } else { "+" };
    format!(
        "{sign}{}",
        Amount::from_units(units.unsigned_abs().min(u64::MAX as u128) as u64)
    )
}

async fn utxos(client: &NodeClient, wallet: &Wallet, as_json: bool) -> Result<()> {
    let entries = utxo_entries(client, &wallet.address()).await?;
    if as_json {
        let list: Vec<_> = entries
            .iter()
            .map(|u| {
                json!({ "txid": u.txid, "vout": u.vout, "value": u.value,
                        "height": u.status.block_height, "coinbase": u.coinbase,
                        "mature": u.mature })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    for u in &entries {
        let mut notes = Vec::new();
        if u.coinbase {
            notes.push(if u.mature {
                "reward"
            } else {
                "immature reward"
            });
        }
        println!(
            "{}:{}  {} CC  height {}{}",
            u.txid,
            u.vout,
            Amount::from_units(u.value),
            u.status.block_height.unwrap_or_default(),
            if notes.is_empty() {
                String::new()
            } else {
                format!("  ({})", notes.join(", "))
            }
        );
    }
    eprintln!("{} unspent outputs", entries.len());
    Ok(())
}

/// The wallet's net change in `tx`: what it pays `mine` minus what it
/// spends of `mine`'s.
fn net_change(tx: &TxInfo, mine: &str) -> i128 {
    let received: u64 = tx
        .vout
        .iter()
        .filter(|o| o.address == mine)
        .map(|o| o.value)
        .sum();
    let spent: u64 = tx
        .vin
        .iter()
        .filter_map(|i| i.prevout.as_ref())
        .filter(|o| o.address == mine)
        .map(|o| o.value)
        .sum();
    received as i128 - spent as i128
}

/// Pending transactions first, then confirmed ones, each newest first, up
/// to `limit` in all.
async fn history(client: &NodeClient, wallet: &Wallet, limit: usize, as_json: bool) -> Result<()> {
    let address = wallet.address();
    let mine = address.to_string();
    // (txid, height or None for the mempool, net, fee)
    let mut rows: Vec<(Hash256, Option<u32>, i128, u64)> = pending_txs(client, &address)
        .await?
        .iter()
        .take(limit)
        .map(|tx| (tx.txid, None, net_change(tx, &mine), tx.fee))
        .collect();
    let mut path = format!(
        "/address/{address}/txs/chain?limit={}",
        limit.clamp(1, crate::api::MAX_CHAIN_TXS_PAGE)
    );
    while rows.len() < limit {
        let (page, headers): (Vec<TxInfo>, _) = client.get_with_headers(&path).await?;
        for tx in &page {
            let height = tx.status.as_ref().and_then(|s| s.block_height);
            rows.push((tx.txid, height, net_change(tx, &mine), tx.fee));
        }
        match next_page(&headers)? {
            Some(next) if !page.is_empty() => path = next,
            _ => break,
        }
    }
    rows.truncate(limit);
    if as_json {
        let list: Vec<_> = rows
            .iter()
            .map(|(txid, height, net, fee)| {
                json!({ "txid": txid, "height": height, "net": *net as i64, "fee": fee })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    for (txid, height, net, fee) in &rows {
        println!(
            "{txid}  {:>14}  {} CC{}",
            height.map_or("mempool".to_string(), |h| format!("height {h}")),
            signed_cc(*net),
            if *net < 0 {
                format!("  (fee {} CC)", Amount::from_units(*fee))
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// Pause before reconnecting to the event stream, doubled per failure up
/// to `WATCH_BACKOFF_MAX`.
const WATCH_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(500);
const WATCH_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// `wallet watch`: the node's event stream for the wallet's address, one
/// line per event, reconnecting with the last event id after a drop.
async fn watch(client: &NodeClient, wallet: &Wallet, as_json: bool) -> Result<()> {
    let address = wallet.address().to_string();
    let path = format!("/events?addresses={address}&mempool=false");
    let mut last_id: Option<String> = None;
    let mut backoff = WATCH_BACKOFF_MIN;
    eprintln!("watching {address} on {} (Ctrl-C stops)", client.base_url());
    loop {
        let ended = match client.events(&path, last_id.as_deref()).await {
            Ok(mut stream) => loop {
                match stream.next().await {
                    Ok(Some(event)) => {
                        backoff = WATCH_BACKOFF_MIN;
                        if event.id.is_some() {
                            last_id = event.id.clone();
                        }
                        if let Some(line) = watch_line(&event, as_json) {
                            println!("{line}");
                        }
                        if event.name == "close" {
                            break format!("the node closed the stream: {}", event.data);
                        }
                    }
                    Ok(None) => break "the node ended the stream".to_string(),
                    Err(e) => break e.to_string(),
                }
            },
            Err(e) => {
                if matches!(e.code(), Some("unknown-event-id" | "replay-too-long")) {
                    // The node cannot resume there (another chain, or too
                    // far back): start again from its tip.
                    eprintln!("cannot resume after {last_id:?}: {e}; following from the tip");
                    last_id = None;
                    continue;
                }
                e.to_string()
            }
        };
        eprintln!("event stream dropped ({ended}); reconnecting in {backoff:?}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
    }
}

/// The line `wallet watch` prints for an event, if any.
fn watch_line(event: &crate::client::ServerEvent, as_json: bool) -> Option<String> {
    let data: serde_json::Value = serde_json::from_str(&event.data).ok()?;
    if as_json {
        return Some(json!({ "event": event.name, "id": event.id, "data": data }).to_string());
    }
    let units = |v: &serde_json::Value| v.as_i64().map(|u| signed_cc(i128::from(u)));
    match event.name.as_str() {
        "address" => {
            let change = units(&data["change"]).unwrap_or_default();
            match data["status"].as_str()? {
                "confirmed" => {
                    let txids: Vec<&str> = data["txids"]
                        .as_array()?
                        .iter()
                        .filter_map(|t| t.as_str())
                        .collect();
                    let balance = data["balance"]
                        .as_u64()
                        .map(|b| format!(", balance {} CC", Amount::from_units(b)))
                        .unwrap_or_default();
                    Some(format!(
                        "confirmed {change} CC at height {} ({} confirmation{}){balance}  {}",
                        data["height"],
                        data["confirmations"],
                        if data["confirmations"] == 1 { "" } else { "s" },
                        txids.join(" ")
                    ))
                }
                "pending" => Some(format!("pending   {change} CC  {}", data["txid"].as_str()?)),
                status => Some(format!(
                    "{status} {change} CC ({})  {}",
                    data["reason"].as_str().unwrap_or("?"),
                    data["txid"].as_str()?
                )),
            }
        }
        "reorg" => Some(format!(
            "reorg: blocks above height {} replaced (old tip {} at {}, new tip {} at {})",
            data["fork_height"],
            data["old_tip_hash"].as_str()?,
            data["old_tip_height"],
            data["new_tip_hash"].as_str()?,
            data["new_tip_height"],
        )),
        "ready" => Some(format!("following from {}", data["position"].as_str()?)),
        "close" => Some(format!("closed: {}", data["reason"].as_str()?)),
        _ => None,
    }
}

/// The passphrase of an existing wallet: from `--passphrase-file`, the
/// environment, or a prompt.
fn passphrase(file: Option<&Path>) -> Result<String> {
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the passphrase file {}", file.display()))?;
        return Ok(text.lines().next().unwrap_or_default().to_string());
    }
    if let Ok(value) = std::env::var(PASSPHRASE_ENV) {
        return Ok(value);
    }
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!("the wallet is encrypted: pass --passphrase-file FILE or set {PASSPHRASE_ENV}");
    }
    Ok(rpassword::prompt_password("wallet passphrase: ")?)
}

/// A passphrase for a new wallet: asked twice on a terminal.
fn new_passphrase(file: Option<&Path>) -> Result<String> {
    use std::io::IsTerminal;
    if file.is_some() || std::env::var(PASSPHRASE_ENV).is_ok() || !std::io::stdin().is_terminal() {
        return passphrase(file);
    }
    let first = rpassword::prompt_password("new wallet passphrase: ")?;
    let second = rpassword::prompt_password("again: ")?;
    if first != second {
        bail!("the passphrases differ");
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_sums_past_u64_are_read() {
        let stats: Stats = serde_json::from_str(
            r#"{"funded_txo_sum": 36893488147419103232, "spent_txo_sum": 36893488147419103000, "tx_count": 3}"#,
        )
        .unwrap();
        assert_eq!(stats.funded_txo_sum - stats.spent_txo_sum, 232);
    }
}

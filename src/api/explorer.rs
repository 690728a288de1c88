//! Blocks, transactions and addresses for explorers and wallets, in
//! esplora's shapes, with cursor pagination for long lists.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{Path, Query};
use super::{ApiError, ApiState};
use crate::chain::ChainView;
use crate::consensus::address::Address;
use crate::consensus::amount::Amount;
use crate::consensus::hash::{BlockHash, Hash256};
use crate::consensus::merkle::merkle_branch;
use crate::consensus::transaction::OutPoint;
use crate::encoding::Encode;

/// Blocks listed by `/blocks` by default, and at most.
pub const DEFAULT_BLOCKS_PAGE: u32 = 10;
pub const MAX_BLOCKS_PAGE: u32 = 100;
/// Transactions per page of `/block/{hash}/txs`.
pub const BLOCK_TXS_PAGE: usize = 25;
/// Entries per page of an address's UTXOs or history, by default and at most.
pub const DEFAULT_ADDRESS_PAGE: usize = 100;
pub const MAX_ADDRESS_PAGE: usize = 1000;
/// Addresses one `POST /addresses/balances` may ask about.
pub const MAX_BATCH_ADDRESSES: usize = 1000;

fn parse_hash(s: &str, what: &'static str) -> Result<Hash256, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request(what, format!("{s:?} is not a 64-digit hex hash")))
}

fn block_json(chain: &ChainView, hash: &BlockHash) -> Result<Value, ApiError> {
    let entry = chain
        .index_entry(hash)?
        .filter(|e| e.has(crate::store::schema::status::HAVE_DATA) && !e.is_failed())
        .ok_or_else(|| ApiError::not_found(format!("block {hash} not found")))?;
    let active = chain.hash_at(entry.height)? == Some(*hash);
    Ok(json!({
        "id": hash,
        "height": entry.height,
        "version": entry.header.version,
        "timestamp": entry.header.time,
        "tx_count": entry.tx_count,
        "size": entry.size,
        "merkle_root": entry.header.merkle_root,
        "previousblockhash": entry.header.prev_hash,
        "bits": entry.header.bits,
        "nonce": entry.header.nonce,
        "chain_work": format!("{:064x}", entry.chain_work),
        "in_best_chain": active,
        "confirmations": if active { chain.confirmations(entry.height) } else { 0 },
    }))
}

/// What is named by its hash (a header, a block's transactions) never
/// changes: clients and proxies may keep it. Everything else (a block's
/// `confirmations` and `in_best_chain`, anything by height) changes with
/// the chain and is revalidated.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

fn with_cache_control(control: &'static str, body: impl IntoResponse) -> Response {
    ([(header::CACHE_CONTROL, control)], body).into_response()
}

pub async fn tip_block(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    state
        .with_state(|chain, _| Ok(Json(block_json(chain, &chain.tip().hash)?)))
        .await
}

#[derive(Debug, Deserialize)]
pub struct BlocksQuery {
    pub start_height: Option<u32>,
    pub limit: Option<u32>,
}

/// `GET /blocks?start_height=&limit=`: blocks of the active chain from
/// `start_height` (default: the tip) downwards.
pub async fn blocks(
    State(state): State<ApiState>,
    Query(q): Query<BlocksQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_BLOCKS_PAGE);
    if limit == 0 || limit > MAX_BLOCKS_PAGE {
        return Err(ApiError::bad_request(
            "invalid-limit",
            format!("limit must be 1 to {MAX_BLOCKS_PAGE}"),
        ));
    }
    state
        .with_state(move |chain, _| {
            let start = q.start_height.unwrap_or(chain.height()).min(chain.height());
            let mut out = Vec::new();
            for height in (start.saturating_sub(limit - 1)..=start).rev() {
                let hash = chain.hash_at(height)?.ok_or_else(|| {
                    ApiError::internal(format!("active chain has no block at {height}"))
                })?;
                out.push(block_json(chain, &hash)?);
            }
            Ok(Json(Value::Array(out)))
        })
        .await
}

pub async fn block(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash, "invalid-hash")?;
    state
        .with_state(move |chain, _| {
            Ok(with_cache_control(
                REVALIDATE,
                Json(block_json(chain, &hash)?),
            ))
        })
        .await
}

pub async fn block_header(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash, "invalid-hash")?;
    state
        .with_state(move |chain, _| {
            let entry = chain
                .index_entry(&hash)?
                .ok_or_else(|| ApiError::not_found(format!("block {hash} not found")))?;
            Ok(with_cache_control(
                IMMUTABLE,
                hex::encode(entry.header.to_array()),
            ))
        })
        .await
}

pub async fn block_at_height(
    State(state): State<ApiState>,
    Path(height): Path<String>,
) -> Result<String, ApiError> {
    let height: u32 = height.parse().map_err(|_| {
        ApiError::bad_request("invalid-height", format!("{height:?} is not a height"))
    })?;
    state
        .with_state(move |chain, _| {
            chain
                .hash_at(height)?
                .map(|h| h.to_string())
                .ok_or_else(|| ApiError::not_found(format!("no block at height {height}")))
        })
        .await
}

#[derive(Debug, Deserialize)]
pub struct CursorQuery {
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

/// `GET /block/{hash}/txs?cursor=N`: 25 transactions from index N, with
/// `next_cursor` while more remain.
pub async fn block_txs(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
    Query(q): Query<CursorQuery>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash, "invalid-hash")?;
    let start: usize = match q.cursor.as_deref() {
        None | Some("") => 0,
        Some(c) => c.parse().map_err(|_| {
            ApiError::bad_request("invalid-cursor", format!("{c:?} is not a cursor"))
        })?,
    };
    state
        .with_state(move |chain, _| {
            let block = chain
                .store()
                .block(&hash)?
                .ok_or_else(|| ApiError::not_found(format!("block {hash} not found")))?;
            let txs: Vec<Value> = block
                .transactions
                .iter()
                .skip(start)
                .take(BLOCK_TXS_PAGE)
                .map(|tx| json!({ "txid": tx.txid(), "size": tx.encoded_len(), "hex": hex::encode(tx.to_bytes()) }))
                .collect();
            let next = start + txs.len();
            // A block's transactions are fixed by its hash.
            Ok(with_cache_control(
                IMMUTABLE,
                Json(json!({
                    "txs": txs,
                    "next_cursor": (next < block.transactions.len()).then(|| next.to_string()),
                })),
            ))
        })
        .await
}

fn tx_status(
    chain: &ChainView,
    txid: &Hash256,
) -> Result<Option<(Value, crate::store::schema::TxLocation)>, ApiError> {
    let Some(loc) = chain.store().tx_location(txid)? else {
        return Ok(None);
    };
    let time = chain.index_entry(&loc.block)?.map_or(0, |e| e.header.time);
    Ok(Some((
        json!({ "confirmed": true, "block_height": loc.height, "block_hash": loc.block, "block_time": time }),
        loc,
    )))
}

pub async fn tx_status_handler(
    State(state): State<ApiState>,
    Path(txid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let txid = parse_hash(&txid, "invalid-txid")?;
    state
        .with_state(move |chain, pool| match tx_status(chain, &txid)? {
            Some((status, _)) => Ok(Json(status)),
            None if pool.contains(&txid) => Ok(Json(json!({ "confirmed": false }))),
            None => Err(ApiError::not_found(format!("transaction {txid} not found"))),
        })
        .await
}

pub async fn tx_hex(
    State(state): State<ApiState>,
    Path(txid): Path<String>,
) -> Result<String, ApiError> {
    let txid = parse_hash(&txid, "invalid-txid")?;
    state
        .with_state(move |chain, pool| {
            if let Some(entry) = pool.get(&txid) {
                return Ok(hex::encode(entry.tx.to_bytes()));
            }
            let (_, loc) = tx_status(chain, &txid)?
                .ok_or_else(|| ApiError::not_found(format!("transaction {txid} not found")))?;
            let block = chain
                .store()
                .block(&loc.block)?
                .ok_or_else(|| ApiError::internal("indexed block missing"))?;
            Ok(hex::encode(
                block.transactions[loc.position as usize].to_bytes(),
            ))
        })
        .await
}

/// `GET /tx/{txid}/merkle-proof`: esplora's shape (`block_height`,
/// `merkle` siblings in display hex, `pos`).
pub async fn tx_merkle_proof(
    State(state): State<ApiState>,
    Path(txid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let txid = parse_hash(&txid, "invalid-txid")?;
    state
        .with_state(move |chain, _| {
            let (_, loc) = tx_status(chain, &txid)?.ok_or_else(|| {
                ApiError::not_found(format!("transaction {txid} is not confirmed"))
            })?;
            let block = chain
                .store()
                .block(&loc.block)?
                .ok_or_else(|| ApiError::internal("indexed block missing"))?;
            let branch = merkle_branch(&block.txids(), loc.position as usize)
                .expect("position within the block");
            Ok(Json(
                json!({ "block_height": loc.height, "merkle": branch, "pos": loc.position }),
            ))
        })
        .await
}

/// Parses an address of the node's network; a 400 says what is wrong.
pub(super) fn address_of(chain: &ChainView, s: &str) -> Result<Address, ApiError> {
    Address::parse(s, chain.params().network).map_err(|e| {
        let code = match e {
            crate::consensus::address::AddressError::WrongNetwork { .. } => "wrong-network",
            crate::consensus::address::AddressError::BadChecksum { .. } => "bad-checksum",
            _ => "invalid-address",
        };
        ApiError::bad_request(code, e.to_string())
    })
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(DEFAULT_ADDRESS_PAGE) {
        0 => Err(ApiError::bad_request(
            "invalid-limit",
            format!("limit must be 1 to {MAX_ADDRESS_PAGE}"),
        )),
        n if n > MAX_ADDRESS_PAGE => Err(ApiError::bad_request(
            "invalid-limit",
            format!("limit must be 1 to {MAX_ADDRESS_PAGE}"),
        )),
        n => Ok(n),
    }
}

/// `GET /address/{address}/utxo?cursor=TXID:VOUT&limit=N`: confirmed UTXOs
/// in outpoint order, each marked if a mempool transaction spends it.
pub async fn address_utxo(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    Query(q): Query<CursorQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => {
            let (txid, vout) = c.split_once(':').ok_or_else(|| {
                ApiError::bad_request("invalid-cursor", format!("{c:?} is not TXID:VOUT"))
            })?;
            let vout = vout.parse().map_err(|_| {
                ApiError::bad_request("invalid-cursor", format!("{c:?} is not TXID:VOUT"))
            })?;
            Some(OutPoint::new(parse_hash(txid, "invalid-cursor")?, vout))
        }
    };
    state
        .with_state(move |chain, pool| {
            let address = address_of(chain, &address)?;
            let utxos = chain
                .store()
                .address_utxos(&address.hash, after.as_ref(), limit + 1)?;
            let more = utxos.len() > limit;
            let utxos = &utxos[..utxos.len().min(limit)];
            // The address index has no coinbase flag: one multi-get of the
            // page's UTXOs tells which are immature block rewards.
            let outpoints: Vec<OutPoint> = utxos.iter().map(|(o, _, _)| *o).collect();
            let records = chain.store().utxos(&outpoints)?;
            let next_height = chain.tip().height + 1;
            let maturity = chain.params().coinbase_maturity;
            let page: Vec<Value> = utxos
                .iter()
                .zip(records)
                .map(|((outpoint, amount, height), record)| {
                    let coinbase = record.is_some_and(|u| u.is_coinbase);
                    json!({
                        "txid": outpoint.txid,
                        "vout": outpoint.vout,
                        "value": amount.units(),
                        "status": { "confirmed": true, "block_height": height },
                        "coinbase": coinbase,
                        "mature": !coinbase || next_height - height >= maturity,
                        "spent_in_mempool": pool.spender_of(outpoint).is_some(),
                    })
                })
                .collect();
            let next = more.then(|| {
                let (o, _, _) = utxos[limit - 1];
                format!("{}:{}", o.txid, o.vout)
            });
            // The tip this page was read at: a client paging through many
            // UTXOs restarts when it changes between pages.
            Ok(Json(
                json!({ "utxos": page, "next_cursor": next, "tip": chain.tip().hash }),
            ))
        })
        .await
}

/// Most transactions `/address/{address}/txs/mempool` lists (esplora's
/// limit).
pub const MAX_ADDRESS_MEMPOOL_TXS: usize = 50;

#[derive(Debug, Deserialize)]
pub struct MempoolTxsQuery {
    /// `FIRST_SEEN:TXID` of the last transaction of the previous page.
    pub cursor: Option<String>,
}

/// `GET /address/{address}/txs/mempool?cursor=FIRST_SEEN:TXID`: the
/// address's unconfirmed transactions, newest first (as esplora), at most
/// `MAX_ADDRESS_MEMPOOL_TXS`, in `/tx/{txid}`'s shape plus `first_seen`
/// (Unix seconds). A full page may be followed by the next one: pass the
/// last entry's `first_seen` and `txid` as the cursor.
pub async fn address_mempool_txs(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    Query(q): Query<MempoolTxsQuery>,
) -> Result<Json<Value>, ApiError> {
    let before: Option<(u32, Hash256)> = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.split_once(':')
                .and_then(|(time, txid)| Some((time.parse().ok()?, txid.parse().ok()?)))
                .ok_or_else(|| {
                    ApiError::bad_request("invalid-cursor", format!("{c:?} is not FIRST_SEEN:TXID"))
                })?,
        ),
    };
    state
        .with_state(move |chain, pool| {
            let address = address_of(chain, &address)?;
            let network = chain.params().network;
            let mut entries = pool.address_entries(&address.hash, usize::MAX);
            entries.retain(|e| before.is_none_or(|key| (e.time, e.txid) < key));
            entries.sort_by_key(|e| std::cmp::Reverse((e.time, e.txid)));
            let txs: Vec<Value> = entries
                .into_iter()
                .take(MAX_ADDRESS_MEMPOOL_TXS)
                .map(|entry| {
                    let mut tx = super::handlers::tx_json(network, &entry.tx, &entry.spent);
                    tx["status"] = json!({ "confirmed": false });
                    tx["first_seen"] = json!(entry.time);
                    tx
                })
                .collect();
            Ok(Json(Value::Array(txs)))
        })
        .await
}

/// `GET /address/{address}/txs?cursor=HEIGHT:POS&limit=N`: confirmed
/// history, newest first.
pub async fn address_txs(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    Query(q): Query<CursorQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    let before = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => {
            let parsed = c
                .split_once(':')
                .and_then(|(h, p)| Some((h.parse().ok()?, p.parse().ok()?)));
            Some(parsed.ok_or_else(|| {
                ApiError::bad_request("invalid-cursor", format!("{c:?} is not HEIGHT:POS"))
            })?)
        }
    };
    state
        .with_state(move |chain, _| {
            let address = address_of(chain, &address)?;
            let rows = chain.store().address_history(&address.hash, before, limit + 1)?;
            let more = rows.len() > limit;
            let page: Vec<Value> = rows
                .iter()
                .take(limit)
                .map(|(height, position, txid)| json!({ "txid": txid, "block_height": height, "position": position }))
                .collect();
            let next = more.then(|| {
                let (h, p, _) = rows[limit - 1];
                format!("{h}:{p}")
            });
            Ok(Json(json!({ "txs": page, "next_cursor": next })))
        })
        .await
}

#[derive(Debug, Deserialize)]
pub struct BalancesRequest {
    pub addresses: Vec<String>,
}

/// `POST /addresses/balances` with `{"addresses": [...]}`.
pub async fn address_balances(
    State(state): State<ApiState>,
    request: Result<Json<BalancesRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(request) = request.map_err(ApiError::from_rejection)?;
    if request.addresses.len() > MAX_BATCH_ADDRESSES {
        return Err(ApiError::bad_request(
            "too-many-addresses",
            format!("at most {MAX_BATCH_ADDRESSES} addresses"),
        ));
    }
    state
        .with_state(move |chain, pool| {
            let mut out = Vec::with_capacity(request.addresses.len());
            for a in &request.addresses {
                let address = address_of(chain, a)?;
                let stats = chain.store().address_stats(&address.hash)?;
                let pending = pool.address_stats(&address.hash);
                out.push(json!({ "address": a, "balance": stats.balance(), "unconfirmed": pending.net() }));
            }
            Ok(Json(Value::Array(out)))
        })
        .await
}

pub async fn chainstate(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    state
        .with_state(|chain, _| {
            let tip = chain.tip();
            Ok(Json(json!({
                "height": tip.height,
                "tip": tip.hash,
                "utxo_count": tip.utxo_count,
                "total_amount": tip.utxo_total,
                "total_amount_cc": Amount::from_units(tip.utxo_total).to_string(),
                "utxo_digest": tip.utxo_digest,
            })))
        })
        .await
}

pub async fn peers(State(state): State<ApiState>) -> Json<Value> {
    Json(serde_json::to_value(state.network.status().peers).unwrap_or(Value::Null))
}

//! The original ChainCore API's paths, kept so existing scripts keep
//! working. Each answers from the same state as the new endpoints, with
//! amounts as integer base units (the original's floats are gone) plus a
//! decimal CC string for display.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::explorer::{address_of, MAX_ADDRESS_PAGE};
use super::extract::{Path, Query};
use super::{ApiError, ApiState};
use crate::consensus::amount::Amount;
use crate::consensus::hash::Txid;
use crate::consensus::limits::MAX_BLOCK_SIZE;

/// Most blocks one `/blocks/range` answers.
pub const MAX_RANGE_BLOCKS: u32 = 100;

pub async fn balance(
    State(state): State<ApiState>,
    Path(address): Path<String>,
) -> Result<Json<Value>, ApiError> {
    // As `/address/{a}`: the store's reads, then the pool's lock for its
    // own lookup alone.
    state
        .with_state_quick(
            move |chain| {
                let a = address_of(chain, &address)?;
                let stats = chain.store().address_stats(&a.hash)?;
                Ok((a, stats))
            },
            move |_, pool, (a, stats)| {
                let pending = pool.address_stats(&a.hash);
                Ok(Json(json!({
                    "address": a.to_string(),
                    "balance": stats.balance(),
                    "balance_cc": Amount::from_units(stats.balance()).to_string(),
                    "unconfirmed": pending.net(),
                })))
            },
        )
        .await
}

pub async fn utxos(
    State(state): State<ApiState>,
    Path(address): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .with_chain_reads(move |chain, _| {
            let a = address_of(chain, &address)?;
            // One past the page says whether more remain.
            let mut rows = chain
                .store()
                .address_utxos(&a.hash, None, MAX_ADDRESS_PAGE + 1)?;
            let more = rows.len() > MAX_ADDRESS_PAGE;
            rows.truncate(MAX_ADDRESS_PAGE);
            let utxos: Vec<Value> = rows
                .into_iter()
                .map(|(o, amount, height)| json!({ "txid": o.txid, "vout": o.vout, "amount": amount.units(), "height": height }))
                .collect();
            let mut answer = json!({ "address": a.to_string(), "utxos": utxos, "more": more });
            if more {
                answer["pages"] = json!(format!("/address/{a}/utxo"));
            }
            Ok(Json(answer))
        })
        .await
}

pub async fn transactions(
    State(state): State<ApiState>,
    Path(address): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .with_chain_reads(move |chain, _| {
            let a = address_of(chain, &address)?;
            // One past the page says whether more remain.
            let mut rows = chain
                .store()
                .address_history(&a.hash, None, MAX_ADDRESS_PAGE + 1)?;
            let more = rows.len() > MAX_ADDRESS_PAGE;
            rows.truncate(MAX_ADDRESS_PAGE);
            let txs: Vec<Value> = rows
                .into_iter()
                .map(|(height, position, txid)| json!({ "txid": txid, "height": height, "position": position }))
                .collect();
            let mut answer = json!({ "address": a.to_string(), "transactions": txs, "more": more });
            if more {
                answer["pages"] = json!(format!("/address/{a}/txs/chain"));
            }
            Ok(Json(answer))
        })
        .await
}

/// Entries per page of `/transaction_pool`, by default and at most: a full
/// pool holds hundreds of thousands, tens of megabytes of JSON at once.
pub const DEFAULT_POOL_PAGE: usize = 1_000;
pub const MAX_POOL_PAGE: usize = 10_000;

#[derive(Debug, Deserialize)]
pub struct PoolPageQuery {
    /// `next_cursor` of the previous page: the last txid listed.
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

/// `GET /transaction_pool?cursor=TXID&limit=N`: pool entries by txid, a
/// page at a time, with `next_cursor` while more remain; `count` is the
/// whole pool's.
pub async fn transaction_pool(
    State(state): State<ApiState>,
    Query(q): Query<PoolPageQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_POOL_PAGE);
    if limit == 0 || limit > MAX_POOL_PAGE {
        return Err(ApiError::bad_request(
            "invalid-limit",
            format!("limit must be 1 to {MAX_POOL_PAGE}"),
        ));
    }
    let after: Option<Txid> = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(c.parse().map_err(|_| {
            ApiError::bad_request(
                "invalid-cursor",
                format!("{} is not a txid", super::error::quoted(c)),
            )
        })?),
    };
    // Sorted by the txid's text, as listed: by its bytes reversed (the
    // text is their hex). What is kept is 56 bytes an entry; the page's
    // JSON is written per request, for the page alone.
    let display_order = |txid: &Txid| {
        let mut bytes = txid.0;
        bytes.reverse();
        bytes
    };
    let entries = state
        .pool_view(
            "/transaction_pool",
            |_, pool| {
                Ok(pool
                    .entries()
                    .map(|e| (e.txid, e.fee.units(), e.size, e.time))
                    .collect::<Vec<_>>())
            },
            move |mut entries| {
                entries.sort_unstable_by_key(|(txid, ..)| display_order(txid));
                Ok(entries)
            },
        )
        .await?;
    let start = match after {
        None => 0,
        Some(after) => {
            entries.partition_point(|(txid, ..)| display_order(txid) <= display_order(&after))
        }
    };
    let page: Vec<Value> = entries[start..]
        .iter()
        .take(limit)
        .map(|(txid, fee, size, time)| {
            json!({ "txid": txid.to_string(), "fee": fee, "size": size, "time": time })
        })
        .collect();
    let end = start + page.len();
    let next = (end < entries.len()).then(|| entries[end - 1].0.to_string());
    Ok(Json(
        json!({ "count": entries.len(), "transactions": page, "next_cursor": next }),
    ))
}

#[derive(Debug, Deserialize)]
pub struct RangeQuery {
    pub start: u32,
    pub end: u32,
}

pub async fn blocks_range(
    State(state): State<ApiState>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<Value>, ApiError> {
    if q.end < q.start || q.end - q.start >= MAX_RANGE_BLOCKS {
        return Err(ApiError::bad_request(
            "invalid-range",
            format!("need start <= end and at most {MAX_RANGE_BLOCKS} blocks"),
        ));
    }
    state
        .with_chain_reads(move |chain, _| {
            let mut blocks = Vec::new();
            for height in q.start..=q.end.min(chain.height()) {
                let hash = chain.hash_at(height)?.ok_or_else(|| {
                    ApiError::internal(format!("active chain has no block at {height}"))
                })?;
                let entry = chain.index_entry(&hash)?.ok_or_else(|| {
                    ApiError::internal(format!("active block {hash} is not indexed"))
                })?;
                blocks.push(json!({
                    "height": height,
                    "hash": hash,
                    "previous_hash": entry.header.prev_hash,
                    "timestamp": entry.header.time,
                    "tx_count": entry.tx_count,
                    "size": entry.size,
                }));
            }
            Ok(Json(json!({ "blocks": blocks })))
        })
        .await
}

pub async fn chain_info(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    state
        .with_view(|chain| {
            let tip = chain.tip();
            Ok(Json(json!({
                "network": chain.params().network,
                "height": tip.height,
                "tip": tip.hash,
                "chain_work": format!("{:064x}", tip.chain_work),
                "difficulty_bits": format!("{:08x}", chain.tip_entry().header.bits),
            })))
        })
        .await
}

pub async fn stats(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let peers = state
        .network
        .status()
        .peers
        .iter()
        .filter(|p| p.ready)
        .count();
    state
        .with_state(move |chain, pool| {
            let tip = chain.tip();
            Ok(Json(json!({
                "height": tip.height,
                "peers": peers,
                "mempool_size": pool.len(),
                "utxo_count": tip.utxo_count,
                "total_supply": tip.utxo_total,
                "total_supply_cc": Amount::from_units(tip.utxo_total).to_string(),
                "orphan_blocks": chain.orphan_count(),
            })))
        })
        .await
}

pub async fn orphaned_blocks(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    state
        .with_view(|chain| {
            let mut hashes = chain.orphan_hashes();
            hashes.sort();
            Ok(Json(json!({ "count": hashes.len(), "orphans": hashes })))
        })
        .await
}

pub async fn network_config(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    state
        .with_view(|chain| {
            let p = chain.params();
            Ok(Json(json!({
                "network": p.network,
                "magic": hex::encode(p.magic),
                "p2p_port": p.default_p2p_port,
                "api_port": p.default_api_port,
                "genesis_hash": p.genesis_hash(),
                "target_spacing_secs": p.target_spacing_secs,
                "retarget_interval": p.retarget_interval,
                "coinbase_maturity": p.coinbase_maturity,
                "initial_subsidy": p.initial_subsidy.units(),
                "halving_interval": p.halving_interval,
                "max_block_size": MAX_BLOCK_SIZE,
            })))
        })
        .await
}

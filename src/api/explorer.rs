//! Blocks, transactions and addresses for explorers and wallets, in
//! esplora's routes and shapes (see `esplora`). Lists are bare JSON arrays,
//! as esplora's; ChainCore's own paging of them (a `limit` query parameter,
//! larger pages) hands out the next page's address in a `Link` header
//! (RFC 8288, `rel="next"`).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::esplora::{
    block_json, stored_block_entry, ConfirmedBlock, JsonList, PendingTx, TxJson, TxStatus,
};
use super::extract::{Path, Query};
use super::{ApiError, ApiState, PoolGate};
use crate::chain::ChainView;
use crate::consensus::address::{Address, PubKeyHash};
use crate::consensus::amount::Amount;
use crate::consensus::hash::{BlockHash, Hash256, Txid};
use crate::consensus::merkle::{merkle_branch, partial_merkle_tree};
use crate::consensus::transaction::OutPoint;
use crate::encoding::Encode;
use crate::mempool::Mempool;

/// Blocks listed by `/blocks` by default (esplora's page), and at most.
pub const DEFAULT_BLOCKS_PAGE: u32 = 10;
pub const MAX_BLOCKS_PAGE: u32 = 100;
/// Transactions per page of `/block/{hash}/txs/{start_index}` (esplora's).
pub const BLOCK_TXS_PAGE: usize = 25;
/// Entries per page of an address's UTXOs: by default and at most. Without
/// a `limit`, an address with more UTXOs is refused (as esplora's
/// `utxos_limit`) rather than answered in part.
pub const MAX_ADDRESS_PAGE: usize = 1000;
/// Most pool transactions of one address that `/address/{a}/utxo` walks
/// (under the pool's lock) for the unconfirmed outputs of its first page:
/// about a millisecond's work. Past it the request is a 400 that names the
/// paged list of the address's pool transactions.
pub const MAX_ADDRESS_POOL_WALK: usize = 10 * MAX_ADDRESS_PAGE;
/// Confirmed transactions per page of an address's history (esplora's),
/// and at most with `limit`: each is a full transaction, read from its
/// block.
pub const CHAIN_TXS_PAGE: usize = 25;
pub const MAX_CHAIN_TXS_PAGE: usize = 25;
/// Addresses one `POST /addresses/balances` may ask about.
pub const MAX_BATCH_ADDRESSES: usize = 1000;
/// Transactions `/mempool/recent` lists (esplora's).
pub const MEMPOOL_RECENT: usize = 10;

/// The response header naming the tip a page was read at: a client paging
/// through many UTXOs restarts when it changes between pages.
pub const TIP_HEADER: &str = "chaincore-tip";

fn parse_hash(s: &str, what: &'static str) -> Result<Hash256, ApiError> {
    s.parse().map_err(|_| {
        ApiError::bad_request(
            what,
            format!("{} is not a 64-digit hex hash", super::error::quoted(s)),
        )
    })
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

/// `body` with a `Link` header to the next page, if there is one.
fn with_next(next: Option<String>, body: impl IntoResponse) -> Response {
    match next {
        Some(next) => ([(header::LINK, format!("<{next}>; rel=\"next\""))], body).into_response(),
        None => body.into_response(),
    }
}

pub async fn tip_block(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    state
        .with_view(|chain| Ok(Json(block_json(chain, &chain.tip().hash)?)))
        .await
}

#[derive(Debug, Deserialize)]
pub struct BlocksQuery {
    pub start_height: Option<u32>,
    pub limit: Option<u32>,
}

fn blocks_page(
    chain: &ChainView,
    start: Option<u32>,
    limit: Option<u32>,
) -> Result<Response, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_BLOCKS_PAGE);
    if limit == 0 || limit > MAX_BLOCKS_PAGE {
        return Err(ApiError::bad_request(
            "invalid-limit",
            format!("limit must be 1 to {MAX_BLOCKS_PAGE}"),
        ));
    }
    let start = start.unwrap_or(chain.height()).min(chain.height());
    let lowest = start.saturating_sub(limit - 1);
    let mut out = Vec::new();
    for height in (lowest..=start).rev() {
        let hash = chain
            .hash_at(height)?
            .ok_or_else(|| ApiError::internal(format!("active chain has no block at {height}")))?;
        out.push(block_json(chain, &hash)?);
    }
    let next = (lowest > 0).then(|| format!("/blocks/{}?limit={limit}", lowest - 1));
    Ok(with_next(next, Json(Value::Array(out))))
}

/// `GET /blocks?start_height=&limit=`: blocks of the active chain from
/// `start_height` (default: the tip) downwards.
pub async fn blocks(
    State(state): State<ApiState>,
    Query(q): Query<BlocksQuery>,
) -> Result<Response, ApiError> {
    // Up to 100 blocks, each with its median time past: about 1 200
    // index reads, so it takes a chain-read permit.
    state
        .with_chain_reads(move |chain, _| blocks_page(chain, q.start_height, q.limit))
        .await
}

#[derive(Debug, Deserialize)]
pub struct LimitQuery {
    pub limit: Option<u32>,
}

/// `GET /blocks/{start_height}`: esplora's form of the same.
pub async fn blocks_from(
    State(state): State<ApiState>,
    Path(start): Path<String>,
    Query(q): Query<LimitQuery>,
) -> Result<Response, ApiError> {
    let start = parse_height(&start)?;
    state
        .with_chain_reads(move |chain, _| blocks_page(chain, Some(start), q.limit))
        .await
}

fn parse_height(s: &str) -> Result<u32, ApiError> {
    s.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid-height",
            format!("{} is not a height", super::error::quoted(s)),
        )
    })
}

pub async fn block(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash, "invalid-hash")?;
    state
        .with_view(move |chain| {
            Ok(with_cache_control(
                REVALIDATE,
                Json(block_json(chain, &hash)?),
            ))
        })
        .await
}

/// `GET /block/{hash}/status`: `in_best_chain`, and for a block of the
/// active chain its `height` and the `next_best` block above it.
pub async fn block_status(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let hash = parse_hash(&hash, "invalid-hash")?;
    state
        .with_view(move |chain| {
            // As esplora's: a block it does not know is not in the best
            // chain, and has no height and no next block.
            let entry = chain.index_entry(&hash)?;
            let active = match &entry {
                Some(entry) => chain.hash_at(entry.height)? == Some(hash),
                None => false,
            };
            let (height, next) = match entry.filter(|_| active) {
                Some(entry) => (Some(entry.height), chain.hash_at(entry.height + 1)?),
                None => (None, None),
            };
            Ok(Json(
                json!({ "in_best_chain": active, "height": height, "next_best": next }),
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
        .with_view(move |chain| {
            let entry = chain
                .index_entry(&hash)?
                .ok_or_else(|| ApiError::not_found(format!("block {hash} not found")))?;
            Ok((
                [(header::CACHE_CONTROL, IMMUTABLE)],
                hex::encode(entry.header.to_array()),
            )
                .into_response())
        })
        .await
}

/// `GET /block/{hash}/raw`: the block in ChainCore's encoding (not
/// Bitcoin's: its transactions differ).
pub async fn block_raw(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash, "invalid-hash")?;
    state
        .with_chain_reads(move |chain, _| {
            stored_block_entry(chain, &hash)?;
            let bytes = chain
                .store()
                .block_bytes(&hash)?
                .ok_or_else(|| ApiError::not_found(format!("block {hash} not found")))?;
            Ok((
                [
                    (header::CONTENT_TYPE, "application/octet-stream"),
                    (header::CACHE_CONTROL, IMMUTABLE),
                ],
                bytes,
            )
                .into_response())
        })
        .await
}

pub async fn block_at_height(
    State(state): State<ApiState>,
    Path(height): Path<String>,
) -> Result<String, ApiError> {
    let height = parse_height(&height)?;
    state
        .with_view(move |chain| {
            chain
                .hash_at(height)?
                .map(|h| h.to_string())
                .ok_or_else(|| ApiError::not_found(format!("no block at height {height}")))
        })
        .await
}

/// A stored block whose transactions are asked for: it must be known and
/// valid, and be on the active chain to carry statuses and spent outputs.
fn active_block(chain: &ChainView, hash: &BlockHash) -> Result<ConfirmedBlock, ApiError> {
    let entry = stored_block_entry(chain, hash)?;
    if chain.hash_at(entry.height)? != Some(*hash) {
        return Err(ApiError::not_found(format!(
            "block {hash} is not on the active chain"
        )));
    }
    ConfirmedBlock::load(chain, hash, entry.height)
}

fn block_txs_page(hash: String, start: Option<String>) -> Result<(BlockHash, usize), ApiError> {
    let hash = parse_hash(&hash, "invalid-hash")?;
    let start = match start {
        None => 0,
        Some(s) => s.parse::<usize>().map_err(|_| {
            ApiError::bad_request(
                "invalid-start-index",
                format!("{} is not an index", super::error::quoted(&s)),
            )
        })?,
    };
    if start % BLOCK_TXS_PAGE != 0 {
        return Err(ApiError::bad_request(
            "invalid-start-index",
            format!("start index must be a multiple of {BLOCK_TXS_PAGE}"),
        ));
    }
    Ok((hash, start))
}

async fn block_txs_from(
    state: ApiState,
    hash: BlockHash,
    start: usize,
) -> Result<Response, ApiError> {
    state
        .with_chain_reads(move |chain, _| {
            let block = active_block(chain, &hash)?;
            let count = block.block.transactions.len();
            if start >= count {
                return Err(ApiError::not_found(format!(
                    "block {hash} has {count} transactions"
                )));
            }
            let end = (start + BLOCK_TXS_PAGE).min(count);
            let network = chain.params().network;
            let mut txs = JsonList::default();
            for i in start..end {
                txs.push(&block.tx_json(network, i))?;
            }
            let next = (end < count).then(|| format!("/block/{hash}/txs/{end}"));
            // Statuses name the block, which is on the active chain now:
            // revalidate.
            Ok(with_next(
                next,
                with_cache_control(REVALIDATE, txs.into_response()),
            ))
        })
        .await
}

/// `GET /block/{hash}/txs`: the first 25 transactions, in esplora's shape.
pub async fn block_txs(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let (hash, start) = block_txs_page(hash, None)?;
    block_txs_from(state, hash, start).await
}

/// `GET /block/{hash}/txs/{start_index}`: 25 transactions from a multiple
/// of 25.
pub async fn block_txs_at(
    State(state): State<ApiState>,
    Path((hash, start)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (hash, start) = block_txs_page(hash, Some(start))?;
    block_txs_from(state, hash, start).await
}

/// `GET /block/{hash}/txids`: every txid of the block, in order.
pub async fn block_txids(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&hash, "invalid-hash")?;
    state
        .with_chain_reads(move |chain, _| {
            stored_block_entry(chain, &hash)?;
            let block = chain
                .store()
                .block(&hash)?
                .ok_or_else(|| ApiError::not_found(format!("block {hash} not found")))?;
            Ok(with_cache_control(IMMUTABLE, Json(json!(block.txids()))))
        })
        .await
}

/// `GET /block/{hash}/txid/{index}`: the txid at a position, as text.
pub async fn block_txid_at(
    State(state): State<ApiState>,
    Path((hash, index)): Path<(String, String)>,
) -> Result<String, ApiError> {
    let hash = parse_hash(&hash, "invalid-hash")?;
    let index: usize = index.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid-index",
            format!("{} is not an index", super::error::quoted(&index)),
        )
    })?;
    state
        .with_chain_reads(move |chain, _| {
            stored_block_entry(chain, &hash)?;
            let block = chain
                .store()
                .block(&hash)?
                .ok_or_else(|| ApiError::not_found(format!("block {hash} not found")))?;
            block
                .transactions
                .get(index)
                .map(|tx| tx.txid().to_string())
                .ok_or_else(|| {
                    ApiError::not_found(format!("block {hash} has no transaction {index}"))
                })
        })
        .await
}

/// The status of a confirmed transaction and where it is.
fn tx_status(
    chain: &ChainView,
    txid: &Hash256,
) -> Result<Option<(TxStatus, crate::store::schema::TxLocation)>, ApiError> {
    let Some(loc) = chain.store().tx_location(txid)? else {
        return Ok(None);
    };
    let time = chain.index_entry(&loc.block)?.map_or(0, |e| e.header.time);
    let status = TxStatus::Confirmed {
        height: loc.height,
        block: loc.block,
        time,
    };
    Ok(Some((status, loc)))
}

pub async fn tx_status_handler(
    State(state): State<ApiState>,
    Path(txid): Path<String>,
) -> Result<Json<TxStatus>, ApiError> {
    let txid = parse_hash(&txid, "invalid-txid")?;
    // As esplora's: what is not confirmed (in the pool or unknown) is
    // `{"confirmed": false}`.
    state
        .with_view(move |chain| {
            Ok(Json(
                tx_status(chain, &txid)?.map_or(TxStatus::Unconfirmed, |(status, _)| status),
            ))
        })
        .await
}

/// A transaction's ChainCore encoding, from the pool or its block (the
/// pool locked only to copy it out).
fn tx_bytes(chain: &ChainView, pool: &PoolGate, txid: &Txid) -> Result<Vec<u8>, ApiError> {
    if let Some(entry) = pool.lock().get(txid) {
        return Ok(entry.tx.to_bytes());
    }
    let (block, loc) = confirmed_block_of(chain, txid)?;
    block
        .transactions
        .get(loc.position as usize)
        .map(Encode::to_bytes)
        .ok_or_else(|| ApiError::internal(format!("tx index of {txid} points past its block")))
}

pub async fn tx_hex(
    State(state): State<ApiState>,
    Path(txid): Path<String>,
) -> Result<String, ApiError> {
    let txid = parse_hash(&txid, "invalid-txid")?;
    state
        .with_chain_reads(move |chain, pool| Ok(hex::encode(tx_bytes(chain, pool, &txid)?)))
        .await
}

/// `GET /tx/{txid}/raw`: the transaction in ChainCore's encoding (not
/// Bitcoin's).
pub async fn tx_raw(
    State(state): State<ApiState>,
    Path(txid): Path<String>,
) -> Result<Response, ApiError> {
    let txid = parse_hash(&txid, "invalid-txid")?;
    state
        .with_chain_reads(move |chain, pool| {
            Ok((
                [(header::CONTENT_TYPE, "application/octet-stream")],
                tx_bytes(chain, pool, &txid)?,
            )
                .into_response())
        })
        .await
}

/// A confirmed transaction's block, whole, and its position in it.
fn confirmed_block_of(
    chain: &ChainView,
    txid: &Txid,
) -> Result<
    (
        crate::consensus::block::Block,
        crate::store::schema::TxLocation,
    ),
    ApiError,
> {
    let (_, loc) = tx_status(chain, txid)?
        .ok_or_else(|| ApiError::not_found(format!("transaction {txid} not found")))?;
    let block = chain
        .store()
        .block(&loc.block)?
        .ok_or_else(|| ApiError::internal("indexed block missing"))?;
    Ok((block, loc))
}

/// `GET /tx/{txid}/merkle-proof`: esplora's shape (`block_height`,
/// `merkle` siblings in display hex, `pos`).
pub async fn tx_merkle_proof(
    State(state): State<ApiState>,
    Path(txid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let txid = parse_hash(&txid, "invalid-txid")?;
    state
        .with_chain_reads(move |chain, _| {
            let (block, loc) = confirmed_block_of(chain, &txid)?;
            let branch = merkle_branch(&block.txids(), loc.position as usize)
                .ok_or_else(|| ApiError::internal("tx index points past its block"))?;
            Ok(Json(
                json!({ "block_height": loc.height, "merkle": branch, "pos": loc.position }),
            ))
        })
        .await
}

/// `GET /tx/{txid}/merkleblock-proof`: Bitcoin's `merkleblock` message
/// (BIP 37) proving the transaction, in hex: the block header, the block's
/// transaction count (u32), the partial merkle tree's hashes and its flag
/// bits (least significant bit first). Exact: ChainCore's header and
/// merkle tree are Bitcoin's.
pub async fn tx_merkleblock_proof(
    State(state): State<ApiState>,
    Path(txid): Path<String>,
) -> Result<String, ApiError> {
    let txid = parse_hash(&txid, "invalid-txid")?;
    state
        .with_chain_reads(move |chain, _| {
            let (block, loc) = confirmed_block_of(chain, &txid)?;
            let txids = block.txids();
            let (hashes, bits) = partial_merkle_tree(&txids, loc.position as usize)
                .ok_or_else(|| ApiError::internal("tx index points past its block"))?;
            let mut out =
                Vec::with_capacity(80 + 4 + 9 + hashes.len() * 32 + 9 + bits.len() / 8 + 1);
            out.extend_from_slice(&block.header.to_array());
            out.extend_from_slice(&(txids.len() as u32).to_le_bytes());
            crate::encoding::write_compact_size(&mut out, hashes.len() as u64);
            for hash in &hashes {
                out.extend_from_slice(&hash.0);
            }
            let mut flags = vec![0u8; bits.len().div_ceil(8)];
            for (i, bit) in bits.iter().enumerate() {
                flags[i / 8] |= u8::from(*bit) << (i % 8);
            }
            crate::encoding::write_compact_size(&mut out, flags.len() as u64);
            out.extend_from_slice(&flags);
            Ok(hex::encode(out))
        })
        .await
}

/// The outspends of outputs `0..count` of `txid`: confirmed spenders from
/// the spent-by index (each spender block's time read once), then, with
/// the pool locked only for that, pool spenders of the rest.
fn outspends(
    chain: &ChainView,
    pool: &PoolGate,
    txid: &Txid,
    vouts: std::ops::Range<u32>,
    confirmed: bool,
) -> Result<Vec<Value>, ApiError> {
    let outpoints: Vec<OutPoint> = vouts.map(|v| OutPoint::new(*txid, v)).collect();
    let spenders = if confirmed {
        chain.store().spenders(&outpoints)?
    } else {
        vec![None; outpoints.len()]
    };
    let mut statuses: std::collections::HashMap<Txid, TxStatus> = Default::default();
    let mut out = Vec::with_capacity(outpoints.len());
    for (outpoint, spender) in outpoints.iter().zip(&spenders) {
        let Some(spender) = spender else {
            out.push(None);
            continue;
        };
        let status = match statuses.get(&spender.txid) {
            Some(status) => *status,
            None => {
                let (status, _) = tx_status(chain, &spender.txid)?.ok_or_else(|| {
                    ApiError::internal(format!(
                        "spender {} of {outpoint} is not indexed",
                        spender.txid
                    ))
                })?;
                statuses.insert(spender.txid, status);
                status
            }
        };
        out.push(Some(
            json!({ "spent": true, "txid": spender.txid, "vin": spender.vin, "status": status }),
        ));
    }
    let pool = pool.lock();
    Ok(out
        .into_iter()
        .zip(&outpoints)
        .map(|(found, outpoint)| {
            found.unwrap_or_else(|| match pool.spender_of(outpoint) {
                Some(spender) => {
                    let vin = pool.get(&spender).and_then(|entry| {
                        entry
                            .tx
                            .inputs
                            .iter()
                            .position(|input| input.prevout() == *outpoint)
                    });
                    json!({ "spent": true, "txid": spender, "vin": vin, "status": TxStatus::Unconfirmed })
                }
                None => json!({ "spent": false }),
            })
        })
        .collect())
}

/// The number of outputs of a confirmed transaction or, failing that, of a
/// pool one, and whether it is confirmed.
fn output_count(
    chain: &ChainView,
    pool: &PoolGate,
    txid: &Txid,
) -> Result<(usize, bool), ApiError> {
    if chain.store().tx_location(txid)?.is_some() {
        let (block, loc) = confirmed_block_of(chain, txid)?;
        let tx = block
            .transactions
            .get(loc.position as usize)
            .ok_or_else(|| {
                ApiError::internal(format!("tx index of {txid} points past its block"))
            })?;
        return Ok((tx.outputs.len(), true));
    }
    match pool.lock().get(txid) {
        Some(entry) => Ok((entry.tx.outputs.len(), false)),
        None => Err(ApiError::not_found(format!("transaction {txid} not found"))),
    }
}

/// `GET /tx/{txid}/outspend/{vout}`.
pub async fn tx_outspend(
    State(state): State<ApiState>,
    Path((txid, vout)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let txid = parse_hash(&txid, "invalid-txid")?;
    let vout: u32 = vout.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid-vout",
            format!("{} is not an output index", super::error::quoted(&vout)),
        )
    })?;
    state
        .with_chain_reads(move |chain, pool| {
            let (count, confirmed) = output_count(chain, pool, &txid)?;
            if vout as usize >= count {
                return Err(ApiError::not_found(format!(
                    "transaction {txid} has {count} outputs"
                )));
            }
            let mut found = outspends(chain, pool, &txid, vout..vout + 1, confirmed)?;
            Ok(Json(found.pop().expect("one output asked for")))
        })
        .await
}

/// `GET /tx/{txid}/outspends`: the outspend of every output, in order.
pub async fn tx_outspends(
    State(state): State<ApiState>,
    Path(txid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let txid = parse_hash(&txid, "invalid-txid")?;
    state
        .with_chain_reads(move |chain, pool| {
            let (count, confirmed) = output_count(chain, pool, &txid)?;
            let found = outspends(chain, pool, &txid, 0..count as u32, confirmed)?;
            Ok(Json(Value::Array(found)))
        })
        .await
}

/// Whose coins and history a route asks about: an address, or esplora's
/// script hash (the SHA-256 of the owner's script form, in hex).
#[derive(Clone, Debug)]
pub enum Subject {
    Address(String),
    ScriptHash(String),
}

impl Subject {
    /// The owner; `None` for a script hash that no output of the chain or
    /// the pool pays (whose lists are empty). `in_pool` finds the owner of
    /// a script hash among the pool's.
    fn owner(
        &self,
        chain: &ChainView,
        in_pool: impl FnOnce(&[u8; 32]) -> Option<PubKeyHash>,
    ) -> Result<Option<PubKeyHash>, ApiError> {
        match self {
            Subject::Address(a) => Ok(Some(address_of(chain, a)?.hash)),
            Subject::ScriptHash(h) => {
                let hash = parse_script_hash(h)?;
                Ok(match chain.store().owner_of_script_hash(&hash)? {
                    Some(owner) => Some(owner),
                    None => in_pool(&hash),
                })
            }
        }
    }

    fn path(&self) -> String {
        match self {
            Subject::Address(a) => format!("/address/{a}"),
            Subject::ScriptHash(h) => format!("/scripthash/{h}"),
        }
    }
}

fn parse_script_hash(s: &str) -> Result<[u8; 32], ApiError> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(s, &mut hash).map_err(|_| {
        ApiError::bad_request(
            "invalid-scripthash",
            format!("{} is not a 64-digit hex SHA-256", super::error::quoted(s)),
        )
    })?;
    Ok(hash)
}

/// `GET /scripthash/{hash}`: esplora's stats of the owner.
pub async fn scripthash_stats(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
) -> Result<Json<Value>, ApiError> {
    // The store's reads before the pool is locked (`with_state_quick`):
    // the pool's lock is held for its own lookups alone.
    let script_hash = parse_script_hash(&hash)?;
    state
        .with_state_quick(
            move |chain| {
                Ok(match chain.store().owner_of_script_hash(&script_hash)? {
                    Some(owner) => Some((owner, chain.store().address_stats(&owner)?)),
                    None => None,
                })
            },
            move |_, pool, known| {
            // An owner the chain has not seen yet may be paid in the pool.
            let (owner, chain_stats) = match known {
                Some((owner, stats)) => (Some(owner), stats),
                None => (pool.owner_of_script_hash(&script_hash), Default::default()),
            };
            let mempool_stats = owner.map(|o| pool.address_stats(&o)).unwrap_or_default();
            Ok(Json(json!({
                "scripthash": hash,
                "chain_stats": serde_json::to_value(chain_stats).map_err(ApiError::internal)?,
                "mempool_stats": serde_json::to_value(mempool_stats).map_err(ApiError::internal)?,
            })))
            },
        )
        .await
}

#[derive(Debug, Deserialize)]
pub struct CursorQuery {
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

fn parse_outpoint_cursor(c: &str) -> Result<OutPoint, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid-cursor",
            format!("{} is not TXID:VOUT", super::error::quoted(c)),
        )
    };
    let (txid, vout) = c.split_once(':').ok_or_else(bad)?;
    let vout = vout.parse().map_err(|_| bad())?;
    Ok(OutPoint::new(txid.parse().map_err(|_| bad())?, vout))
}

fn too_many_utxos(what: &str) -> ApiError {
    ApiError::bad_request(
        "too-many-utxos",
        format!(
            "more than {MAX_ADDRESS_PAGE} {what}: page through the confirmed ones with ?limit= (the Link header names the next page)"
        ),
    )
}

async fn utxo_list(
    state: ApiState,
    subject: Subject,
    q: CursorQuery,
) -> Result<Response, ApiError> {
    let explicit = q.limit.is_some() || q.cursor.is_some();
    let limit = page_limit(q.limit)?;
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(parse_outpoint_cursor(c)?),
    };
    state
        .with_chain_reads(move |chain, gate| {
            let Some(owner) = subject.owner(chain, |h| gate.lock().owner_of_script_hash(h))? else {
                return Ok(Json(json!([])).into_response());
            };
            let utxos = chain
                .store()
                .address_utxos(&owner, after.as_ref(), limit + 1)?;
            let more = utxos.len() > limit;
            if more && !explicit {
                return Err(too_many_utxos("unspent outputs"));
            }
            let utxos = &utxos[..utxos.len().min(limit)];
            // The address index has no coinbase flag: one multi-get of the
            // page's UTXOs tells which are immature block rewards, and each
            // height's block hash and time are read once.
            let outpoints: Vec<OutPoint> = utxos.iter().map(|(o, _, _)| *o).collect();
            let records = chain.store().utxos(&outpoints)?;
            let next_height = chain.tip().height + 1;
            let maturity = chain.params().coinbase_maturity;
            let mut blocks: std::collections::HashMap<u32, (BlockHash, u32)> = Default::default();
            let mut confirmed = Vec::with_capacity(utxos.len());
            for ((outpoint, amount, height), record) in utxos.iter().zip(records) {
                let (hash, time) = match blocks.get(height) {
                    Some(found) => *found,
                    None => {
                        let hash = chain.hash_at(*height)?.ok_or_else(|| {
                            ApiError::internal(format!("active chain has no block at {height}"))
                        })?;
                        let time = chain
                            .index_entry(&hash)?
                            .ok_or_else(|| {
                                ApiError::internal(format!("block {hash} is not indexed"))
                            })?
                            .header
                            .time;
                        blocks.insert(*height, (hash, time));
                        (hash, time)
                    }
                };
                let coinbase = record.is_some_and(|u| u.is_coinbase);
                confirmed.push((
                    *outpoint,
                    json!({
                        "txid": outpoint.txid,
                        "vout": outpoint.vout,
                        "value": amount.units(),
                        "status": TxStatus::Confirmed { height: *height, block: hash, time },
                        "coinbase": coinbase,
                        "mature": !coinbase || next_height - height >= maturity,
                    }),
                ));
            }
            // The pool, locked for this alone: as esplora's, confirmed
            // outputs a pool transaction spends are left out, and the first
            // page ends with the outputs of pool transactions that no other
            // pool transaction spends (at most `MAX_ADDRESS_PAGE`).
            let pool = gate.lock();
            let mut page: Vec<Value> = confirmed
                .into_iter()
                .filter(|(outpoint, _)| pool.spender_of(outpoint).is_none())
                .map(|(_, entry)| entry)
                .collect();
            if after.is_none() {
                // The walk holds the pool's lock: an owner with more pool
                // transactions than this is told to page them instead.
                if pool.address_entry_count(&owner) > MAX_ADDRESS_POOL_WALK {
                    return Err(ApiError::bad_request(
                        "too-many-pool-transactions",
                        format!(
                            "more than {MAX_ADDRESS_POOL_WALK} pool transactions touch this address: page them with {}/txs/mempool",
                            subject.path()
                        ),
                    ));
                }
                let mut unconfirmed = 0usize;
                // Walks the owner's entries in first-seen order (no sort);
                // a page of outputs ends the walk.
                for entry in pool.address_entries(&owner, None) {
                    for (vout, output) in entry.tx.outputs.iter().enumerate() {
                        let outpoint = OutPoint::new(entry.txid, vout as u32);
                        if output.owner != owner || pool.spender_of(&outpoint).is_some() {
                            continue;
                        }
                        unconfirmed += 1;
                        if unconfirmed > MAX_ADDRESS_PAGE {
                            return Err(too_many_utxos("unconfirmed unspent outputs"));
                        }
                        page.push(json!({
                            "txid": entry.txid,
                            "vout": vout,
                            "value": output.amount.units(),
                            "status": TxStatus::Unconfirmed,
                            "coinbase": false,
                            "mature": true,
                        }));
                    }
                }
            }
            drop(pool);
            let next = more.then(|| {
                let (o, _, _) = utxos[limit - 1];
                format!(
                    "{}/utxo?limit={limit}&cursor={}:{}",
                    subject.path(),
                    o.txid,
                    o.vout
                )
            });
            let tip = chain.tip().hash.to_string();
            Ok(with_next(
                next,
                ([(TIP_HEADER, tip)], Json(Value::Array(page))),
            ))
        })
        .await
}

/// `GET /address/{address}/utxo`: esplora's list of unspent outputs: the
/// confirmed ones (in outpoint order) that no pool transaction spends,
/// then, on the first page, those created by pool transactions (as
/// esplora and electrs order them). `?limit=N&cursor=TXID:VOUT` pages
/// through the confirmed ones.
pub async fn address_utxo(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    Query(q): Query<CursorQuery>,
) -> Result<Response, ApiError> {
    utxo_list(state, Subject::Address(address), q).await
}

pub async fn scripthash_utxo(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
    Query(q): Query<CursorQuery>,
) -> Result<Response, ApiError> {
    utxo_list(state, Subject::ScriptHash(hash), q).await
}

/// Most transactions `/address/{address}/txs/mempool` lists (esplora's
/// limit).
pub const MAX_ADDRESS_MEMPOOL_TXS: usize = 50;

#[derive(Debug, Deserialize)]
pub struct MempoolTxsQuery {
    /// `FIRST_SEEN:TXID` of the last transaction of the previous page.
    pub cursor: Option<String>,
}

/// The owner's pool transactions, newest first, after `before`: at most
/// `MAX_ADDRESS_MEMPOOL_TXS`, read in order from the pool's owner index
/// (the page costs its own length, not the owner's), copied out for their
/// JSON to be written after the pool's lock is released.
fn mempool_txs(
    pool: &Mempool,
    owner: &PubKeyHash,
    before: Option<(u32, Hash256)>,
) -> Vec<PendingTx> {
    pool.address_entries(owner, before)
        .rev()
        .take(MAX_ADDRESS_MEMPOOL_TXS)
        .map(PendingTx::of)
        .collect()
}

/// `page` into `out`.
fn push_pending(
    network: crate::consensus::params::Network,
    page: &[PendingTx],
    out: &mut JsonList,
) -> Result<(), ApiError> {
    for pending in page {
        out.push(&pending.json(network))?;
    }
    Ok(())
}

async fn mempool_txs_list(
    state: ApiState,
    subject: Subject,
    q: MempoolTxsQuery,
) -> Result<Response, ApiError> {
    let before: Option<(u32, Hash256)> = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            c.split_once(':')
                .and_then(|(time, txid)| Some((time.parse().ok()?, txid.parse().ok()?)))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid-cursor",
                        format!("{} is not FIRST_SEEN:TXID", super::error::quoted(c)),
                    )
                })?,
        ),
    };
    // Up to 50 full transactions: bounded like the routes that read
    // blocks, and written out after the pool's lock is released.
    state
        .with_chain_reads(move |chain, gate| {
            let page = {
                let pool = gate.lock();
                match subject.owner(chain, |h| pool.owner_of_script_hash(h))? {
                    Some(owner) => mempool_txs(&pool, &owner, before),
                    None => Vec::new(),
                }
            };
            let mut txs = JsonList::default();
            push_pending(chain.params().network, &page, &mut txs)?;
            Ok(txs.into_response())
        })
        .await
}

/// `GET /address/{address}/txs/mempool?cursor=FIRST_SEEN:TXID`: the
/// address's unconfirmed transactions, newest first (as esplora), at most
/// `MAX_ADDRESS_MEMPOOL_TXS`, plus `first_seen` (Unix seconds). A full page
/// may be followed by the next one: pass the last entry's `first_seen` and
/// `txid` as the cursor.
pub async fn address_mempool_txs(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    Query(q): Query<MempoolTxsQuery>,
) -> Result<Response, ApiError> {
    mempool_txs_list(state, Subject::Address(address), q).await
}

pub async fn scripthash_mempool_txs(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
    Query(q): Query<MempoolTxsQuery>,
) -> Result<Response, ApiError> {
    mempool_txs_list(state, Subject::ScriptHash(hash), q).await
}

/// Confirmed history of `owner`, newest first, before `before` (height,
/// position): `limit` full transactions into `out`, and the last one's
/// txid if more remain. Rows come newest first, so one block at a time is
/// held.
fn chain_txs(
    chain: &ChainView,
    owner: &PubKeyHash,
    before: Option<(u32, u32)>,
    limit: usize,
    out: &mut JsonList,
) -> Result<Option<Txid>, ApiError> {
    let rows = chain.store().address_history(owner, before, limit + 1)?;
    let more = rows.len() > limit;
    let network = chain.params().network;
    // The rows' transactions alone, one walk per block (rows come newest
    // first, a block's together): its other transactions are not decoded.
    for block_rows in rows[..rows.len().min(limit)].chunk_by(|a, b| a.0 == b.0) {
        let height = block_rows[0].0;
        let hash = chain
            .hash_at(height)?
            .ok_or_else(|| ApiError::internal(format!("active chain has no block at {height}")))?;
        let positions: Vec<usize> = block_rows.iter().rev().map(|r| r.1 as usize).collect();
        let found = chain
            .store()
            .block_transactions(&hash, &positions)?
            .ok_or_else(|| {
                ApiError::internal(format!("address history at {height} is out of step"))
            })?;
        for ((_, _, txid), found) in block_rows.iter().zip(found.iter().rev()) {
            if found.tx.txid() != *txid {
                return Err(ApiError::internal(format!(
                    "address history of {txid} is out of step"
                )));
            }
            out.push(&TxJson {
                network,
                tx: &found.tx,
                spent: &found.spent,
                status: TxStatus::Confirmed {
                    height,
                    block: hash,
                    time: found.header.time,
                },
                first_seen: None,
            })?;
        }
    }
    Ok(more.then(|| rows[limit - 1].2))
}

fn chain_page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(CHAIN_TXS_PAGE) {
        n if n == 0 || n > MAX_CHAIN_TXS_PAGE => Err(ApiError::bad_request(
            "invalid-limit",
            format!("limit must be 1 to {MAX_CHAIN_TXS_PAGE}"),
        )),
        n => Ok(n),
    }
}

#[derive(Debug, Deserialize)]
pub struct ChainTxsQuery {
    pub limit: Option<usize>,
}

/// `/…/txs`: up to 50 pool transactions, newest first (the pool locked
/// for them alone), then the first page of confirmed ones.
async fn txs_list(
    state: ApiState,
    subject: Subject,
    q: ChainTxsQuery,
) -> Result<Response, ApiError> {
    let limit = chain_page_limit(q.limit)?;
    state
        .with_chain_reads(move |chain, gate| {
            let mut txs = JsonList::default();
            let (owner, page) = {
                let pool = gate.lock();
                let Some(owner) = subject.owner(chain, |h| pool.owner_of_script_hash(h))? else {
                    return Ok(txs.into_response());
                };
                (owner, mempool_txs(&pool, &owner, None))
            };
            push_pending(chain.params().network, &page, &mut txs)?;
            let last = chain_txs(chain, &owner, None, limit, &mut txs)?;
            let next = last.map(|t| format!("{}/txs/chain/{t}?limit={limit}", subject.path()));
            Ok(with_next(next, txs.into_response()))
        })
        .await
}

/// `/…/txs/chain[/{last_seen_txid}]`: confirmed transactions, newest
/// first, after the one named. As esplora's, a `last_seen_txid` that is
/// not in the owner's confirmed history (unconfirmed, unknown, dropped by
/// a reorganisation) ends the history: an empty page.
async fn chain_txs_list(
    state: ApiState,
    subject: Subject,
    last_seen: Option<String>,
    q: ChainTxsQuery,
) -> Result<Response, ApiError> {
    let limit = chain_page_limit(q.limit)?;
    let last_seen = last_seen
        .map(|t| parse_hash(&t, "invalid-txid"))
        .transpose()?;
    state
        .with_chain_reads(move |chain, gate| {
            let owner = subject.owner(chain, |h| gate.lock().owner_of_script_hash(h))?;
            let mut txs = JsonList::default();
            let Some(owner) = owner else {
                return Ok(txs.into_response());
            };
            let before = match last_seen {
                None => None,
                Some(txid) => {
                    let Some(loc) = chain.store().tx_location(&txid)? else {
                        return Ok(txs.into_response());
                    };
                    let key = (loc.height, loc.position);
                    let next_key = (loc.height, loc.position.saturating_add(1));
                    let row = chain.store().address_history(&owner, Some(next_key), 1)?;
                    if row.first() != Some(&(key.0, key.1, txid)) {
                        return Ok(txs.into_response());
                    }
                    Some(key)
                }
            };
            let last = chain_txs(chain, &owner, before, limit, &mut txs)?;
            let next = last.map(|t| format!("{}/txs/chain/{t}?limit={limit}", subject.path()));
            Ok(with_next(next, txs.into_response()))
        })
        .await
}

/// `GET /address/{address}/txs`: esplora's history: up to 50 unconfirmed
/// transactions, newest first, then up to 25 confirmed ones, newest first
/// (`?limit=` up to `MAX_CHAIN_TXS_PAGE`, 25); `/txs/chain/{last txid}` continues.
pub async fn address_txs(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    Query(q): Query<ChainTxsQuery>,
) -> Result<Response, ApiError> {
    txs_list(state, Subject::Address(address), q).await
}

pub async fn scripthash_txs(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
    Query(q): Query<ChainTxsQuery>,
) -> Result<Response, ApiError> {
    txs_list(state, Subject::ScriptHash(hash), q).await
}

/// `GET /address/{address}/txs/chain`: the newest confirmed transactions.
pub async fn address_chain_txs(
    State(state): State<ApiState>,
    Path(address): Path<String>,
    Query(q): Query<ChainTxsQuery>,
) -> Result<Response, ApiError> {
    chain_txs_list(state, Subject::Address(address), None, q).await
}

/// `GET /address/{address}/txs/chain/{last_seen_txid}`: the confirmed
/// transactions after (older than) the one named.
pub async fn address_chain_txs_after(
    State(state): State<ApiState>,
    Path((address, last)): Path<(String, String)>,
    Query(q): Query<ChainTxsQuery>,
) -> Result<Response, ApiError> {
    chain_txs_list(state, Subject::Address(address), Some(last), q).await
}

pub async fn scripthash_chain_txs(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
    Query(q): Query<ChainTxsQuery>,
) -> Result<Response, ApiError> {
    chain_txs_list(state, Subject::ScriptHash(hash), None, q).await
}

pub async fn scripthash_chain_txs_after(
    State(state): State<ApiState>,
    Path((hash, last)): Path<(String, String)>,
    Query(q): Query<ChainTxsQuery>,
) -> Result<Response, ApiError> {
    chain_txs_list(state, Subject::ScriptHash(hash), Some(last), q).await
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
    match limit.unwrap_or(MAX_ADDRESS_PAGE) {
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
    // Up to a thousand index reads: one of the permits of the routes that
    // read the store at length, and the pool locked only for its part.
    state
        .with_chain_reads(move |chain, gate| {
            let owners = request
                .addresses
                .iter()
                .map(|a| Ok(address_of(chain, a)?.hash))
                .collect::<Result<Vec<PubKeyHash>, ApiError>>()?;
            // Each owner is read once, however often the request names it.
            let mut distinct = owners.clone();
            distinct.sort_unstable();
            distinct.dedup();
            let confirmed = chain.store().addresses_stats(&distinct)?;
            let pool = gate.lock();
            let known: crate::collections::FastHashMap<PubKeyHash, (u64, i64)> = distinct
                .iter()
                .zip(&confirmed)
                .map(|(owner, stats)| (*owner, (stats.balance(), pool.address_stats(owner).net())))
                .collect();
            drop(pool);
            let out: Vec<Value> = request
                .addresses
                .iter()
                .zip(&owners)
                .map(|(a, owner)| {
                    let (balance, unconfirmed) = known[owner];
                    json!({ "address": a, "balance": balance, "unconfirmed": unconfirmed })
                })
                .collect();
            Ok(Json(Value::Array(out)))
        })
        .await
}

pub async fn chainstate(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    state
        .with_view(|chain| {
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

pub async fn peers(
    State(state): State<ApiState>,
    axum::extract::ConnectInfo(client): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Json<Value> {
    let mut peers = serde_json::to_value(state.network.status().peers).unwrap_or(Value::Null);
    // Who connected to the node (a wallet, a miner, a home node) and whom
    // it chose to connect to (the peers an attacker would have to replace
    // to isolate it) are the operator's to know: others get `null` for
    // every peer's address, as Bitcoin Core keeps `getpeerinfo` to its RPC.
    if !super::admin::is_admin(&client, &headers, state.admin_token.as_deref()) {
        for peer in peers.as_array_mut().into_iter().flatten() {
            peer["addr"] = Value::Null;
        }
    }
    Json(peers)
}

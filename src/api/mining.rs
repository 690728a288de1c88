//! Block templates and submission for external miners.
//!
//! `GET /mining/template?address=A` returns an unsolved block paying the
//! subsidy and the fees of the mempool's best transactions to `A`, with a
//! fresh extra nonce, as hex and as fields. `POST /mining/submit` takes
//! either the solved block in hex, or only its 80-byte header in hex when it
//! belongs to a template the node handed out recently (found by merkle root).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::Query;
use super::{ApiError, ApiState};
use crate::chain::{BlockOutcome, ChainError, ChainView};
use crate::consensus::address::PubKeyHash;
use crate::consensus::block::{Block, BlockHeader, HEADER_LEN};
use crate::consensus::hash::Hash256;
use crate::consensus::pow::target_from_compact;
use crate::encoding::{Decode, Encode};
use crate::node::producer::{build_template, node_template, NodeTemplate};

/// Templates remembered for header-only submissions (each up to a full
/// block, so at most 32 MB).
pub const MAX_TEMPLATES: usize = 32;

/// Who a template is counted against: a client other than loopback (an
/// IPv4 address, an IPv6 /64), whatever address it asks to be paid, or, on
/// loopback (the node's own miners, a local pool), the address paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TemplateOwner {
    Client(super::listener::Client),
    Local(PubKeyHash),
}

impl TemplateOwner {
    pub fn of(client: std::net::IpAddr, payout: PubKeyHash) -> TemplateOwner {
        match super::listener::Client::of(client) {
            Some(client) => TemplateOwner::Client(client),
            None => TemplateOwner::Local(payout),
        }
    }
}

/// Recently handed-out templates, oldest first, with whom each was for.
///
/// When full, a new template evicts first one built on an older tip (it can
/// no longer extend the chain), else the oldest template of the owner
/// holding the most: a client asking for templates in a loop evicts its
/// own, whatever addresses it names, never the latest template of a miner
/// elsewhere.
#[derive(Default)]
pub struct Templates(VecDeque<(TemplateOwner, Block)>);

impl Templates {
    fn remember(&mut self, payout: TemplateOwner, block: Block) {
        if self.0.len() >= MAX_TEMPLATES {
            let tip = block.header.prev_hash;
            let victim = self
                .0
                .iter()
                .position(|(_, b)| b.header.prev_hash != tip)
                .or_else(|| {
                    let mut counts: HashMap<TemplateOwner, usize> = HashMap::new();
                    for (owner, _) in &self.0 {
                        *counts.entry(*owner).or_default() += 1;
                    }
                    let most = counts.values().copied().max().unwrap_or(0);
                    let greedy = if counts.get(&payout).is_some_and(|n| *n == most) {
                        payout
                    } else {
                        *counts
                            .iter()
                            .find(|(_, n)| **n == most)
                            .expect("a full list has owners")
                            .0
                    };
                    self.0.iter().position(|(owner, _)| *owner == greedy)
                })
                .unwrap_or(0);
            self.0.remove(victim);
        }
        self.0.push_back((payout, block));
    }

    fn by_merkle_root(&self, root: &Hash256) -> Option<Block> {
        self.0
            .iter()
            .rev()
            .find(|(_, b)| b.header.merkle_root == *root)
            .map(|(_, b)| b.clone())
    }
}

#[derive(Debug, Deserialize)]
pub struct TemplateQuery {
    pub address: Option<String>,
}

pub async fn template(
    State(state): State<ApiState>,
    ConnectInfo(client): ConnectInfo<std::net::SocketAddr>,
    Query(q): Query<TemplateQuery>,
) -> Result<Json<Value>, ApiError> {
    let address = q
        .address
        .ok_or_else(|| ApiError::bad_request("missing-address", "pass ?address= to be paid"))?;
    let owner = move |payout: PubKeyHash| TemplateOwner::of(client.ip(), payout);
    // The choice of pool transactions made for the last template, reused
    // at the same tip for `SELECTION_REUSE` with a new coinbase: a client
    // asking in a loop costs a block's assembly, not the pool's lock for a
    // selection and a check of the whole block each time.
    let (templates, selection) = (state.templates.clone(), state.pool_views.clone());
    let (reuse_address, reuse_templates) = (address.clone(), templates.clone());
    // Without a recent choice, straight to the pool: no read permit and no
    // blocking hop spent on finding out.
    let recent = state
        .pool_views
        .template_selection
        .lock()
        .expect("template selection lock")
        .as_ref()
        .is_some_and(|s| s.chosen_at.elapsed() < SELECTION_REUSE);
    let reused = if !recent {
        None
    } else {
        state
            .with_chain_reads(move |chain, _| {
                let payout = super::explorer::address_of(chain, &reuse_address)?;
                at_writers_tip(chain)?;
                let Some(chosen) = fresh_selection(&selection, chain) else {
                    return Ok(None);
                };
                let template = build_template(
                    chain,
                    payout.hash,
                    rand::random(),
                    chosen.fees,
                    chosen.txs.as_ref().clone(),
                )
                .map_err(ApiError::internal)?;
                answer(chain, template, &reuse_templates, owner(payout.hash)).map(Some)
            })
            .await?
    };
    if let Some(answer) = reused {
        return Ok(answer);
    }
    let selection = state.pool_views.clone();
    state
        .with_pool_permit(move |chain, pool| {
            let payout = super::explorer::address_of(chain, &address)?;
            at_writers_tip(chain)?;
            // Requests that waited for the permit together take the choice
            // the first of them made: one selection from the pool per tip
            // and `SELECTION_REUSE`, not one per request in the queue.
            let template = match fresh_selection(&selection, chain) {
                Some(chosen) => build_template(
                    chain,
                    payout.hash,
                    rand::random(),
                    chosen.fees,
                    chosen.txs.as_ref().clone(),
                ),
                None => {
                    node_template(chain, pool, payout.hash, rand::random()).inspect(|template| {
                        *selection
                            .template_selection
                            .lock()
                            .expect("template selection lock") = Some(Selection {
                            tip: chain.tip().hash,
                            chosen_at: std::time::Instant::now(),
                            txs: Arc::new(template.block.transactions[1..].to_vec()),
                            fees: template.fees,
                        });
                    })
                }
            }
            .map_err(ApiError::internal)?;
            answer(chain, template, &templates, owner(payout.hash))
        })
        .await
}

/// The pool transactions chosen for a template at `chain`'s tip less than
/// `SELECTION_REUSE` ago, if any.
fn fresh_selection(views: &super::PoolViews, chain: &ChainView) -> Option<Selection> {
    views
        .template_selection
        .lock()
        .expect("template selection lock")
        .clone()
        .filter(|s| s.tip == chain.tip().hash && s.chosen_at.elapsed() < SELECTION_REUSE)
}

/// How long the pool transactions chosen for a template are reused for
/// the next ones at the same tip (Bitcoin Core's `getblocktemplate` waits
/// 5 s too before choosing again for a changed pool).
pub const SELECTION_REUSE: std::time::Duration = std::time::Duration::from_secs(5);

/// The pool transactions chosen for the last template built from the pool.
#[derive(Clone)]
pub struct Selection {
    tip: crate::consensus::hash::BlockHash,
    chosen_at: std::time::Instant,
    txs: Arc<Vec<crate::consensus::transaction::Transaction>>,
    fees: crate::consensus::amount::Amount,
}

/// A view behind the writer (a catch-up not yet written, or a block
/// connecting now) would have miners work on a stale parent.
fn at_writers_tip(chain: &crate::chain::ChainView) -> Result<(), ApiError> {
    if chain.tip().hash != chain.published().tip.0 {
        return Err(ApiError::unavailable(
            "not-at-tip",
            "the node is catching up or connecting a block: ask again shortly",
        ));
    }
    Ok(())
}

/// The template's answer; the template is remembered for a header-only
/// submission.
fn answer(
    chain: &crate::chain::ChainView,
    template: NodeTemplate,
    templates: &std::sync::Mutex<Templates>,
    owner: TemplateOwner,
) -> Result<Json<Value>, ApiError> {
    let NodeTemplate { block, fees, ctx } = template;
    let header = block.header;
    let target = target_from_compact(header.bits).map_err(ApiError::internal)?;
    let value = json!({
        "height": ctx.height,
        "prev_hash": header.prev_hash,
        "bits": format!("{:08x}", header.bits),
        "target": format!("{target:064x}"),
        "time": header.time,
        "min_time": ctx.median_time_past + 1,
        "max_time": ctx.now + chain.params().max_future_block_time_secs,
        "coinbase_value": block.transactions[0].outputs[0].amount.units(),
        "fees": fees.units(),
        "tx_count": block.transactions.len(),
        "header_hex": hex::encode(block.header.to_array()),
        "block_hex": hex::encode(block.to_bytes()),
    });
    templates
        .lock()
        .expect("templates lock")
        .remember(owner, block);
    Ok(Json(value))
}

/// `POST /mining/submit` with a block (or a template's solved header) in hex.
pub async fn submit(
    State(state): State<ApiState>,
    body: Result<String, axum::extract::rejection::StringRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(ApiError::from_rejection)?;
    let bytes = hex::decode(body.trim())
        .map_err(|e| ApiError::bad_request("invalid-hex", format!("body is not hex: {e}")))?;
    // A header that does not meet its own bits is refused before anything
    // else: junk costs one hash, not a template's copy, a permit or the
    // chain task's time.
    let meets_its_bits = |header: &BlockHeader| {
        crate::consensus::validation::check_header(header, state.reader.params())
            .map_err(|e| ApiError::bad_request("invalid-block", e.to_string()))
    };
    let block = if bytes.len() == HEADER_LEN {
        let header = BlockHeader::from_bytes(&bytes).expect("80 bytes decode as a header");
        meets_its_bits(&header)?;
        let template = state
            .templates
            .lock()
            .expect("templates lock")
            .by_merkle_root(&header.merkle_root)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "unknown-template",
                    "no recent template has this merkle root: submit the whole block",
                )
            })?;
        Block {
            header,
            transactions: template.transactions,
        }
    } else {
        let block = Block::from_bytes(&bytes).map_err(|e| {
            ApiError::bad_request("invalid-block", format!("block does not decode: {e}"))
        })?;
        meets_its_bits(&block.header)?;
        block
    };
    let hash = block.hash();
    // Through the chain task, the only writer, like a block from a peer.
    let permit = state
        .pool_views
        .submit_permit(super::pool_views::Submission::Block)
        .await?;
    let outcome = match state
        .chain
        .process_submitted_block_async(Arc::new(block), Box::new(permit))
        .await
    {
        Err(ChainError::Stopped) => {
            return Err(ApiError::unavailable(
                "shutting-down",
                "the node is shutting down",
            ))
        }
        other => other.map_err(ApiError::internal)?,
    };
    let answer = match outcome {
        BlockOutcome::Accepted { height, .. } => {
            json!({ "hash": hash, "height": height, "result": "accepted" })
        }
        BlockOutcome::Duplicate => json!({ "hash": hash, "result": "duplicate" }),
        BlockOutcome::Orphan => {
            return Err(ApiError::bad_request(
                "orphan",
                format!("block {hash} does not extend a known block"),
            ))
        }
        BlockOutcome::Invalid(error) => {
            return Err(ApiError::bad_request("invalid-block", error.to_string()))
        }
        BlockOutcome::InvalidAncestor => {
            return Err(ApiError::bad_request(
                "invalid-ancestor",
                format!("block {hash} extends an invalid block"),
            ))
        }
        // The block is not invalid: it may be submitted again once the
        // node's clock has caught up with its time.
        BlockOutcome::Deferred(error) => {
            return Err(ApiError::bad_request("time-too-new", error.to_string()))
        }
        BlockOutcome::NotStored => {
            return Err(ApiError::bad_request(
                "low-work",
                format!("block {hash} is on a chain with too little work to store"),
            ))
        }
    };
    state.network.chain_changed().await;
    Ok(Json(answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::params::Network;
    use crate::testkit::{key, TestChain};

    fn template(chain: &TestChain, payout: PubKeyHash) -> Block {
        let mut block = chain.build_block(payout, Vec::new());
        block.header.merkle_root = Hash256(rand::random());
        block
    }

    /// A client asking for templates in a loop evicts its own templates,
    /// not a miner's latest: whatever addresses it asks to be paid (fresh
    /// ones cost nothing), and so do many local clients of one address.
    #[test]
    fn a_template_flood_does_not_evict_another_miners_latest_template() {
        let chain = TestChain::new(Network::Regtest);
        let mut templates = Templates::default();
        let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let remote: std::net::IpAddr = "203.0.113.9".parse().unwrap();
        let miner = key(1).pubkey_hash();
        let mine = template(&chain, miner);
        templates.remember(TemplateOwner::of(local, miner), mine.clone());
        let far = template(&chain, miner);
        let far_miner: std::net::IpAddr = "198.51.100.3".parse().unwrap();
        templates.remember(TemplateOwner::of(far_miner, miner), far.clone());
        for n in 0..10 * MAX_TEMPLATES as u64 {
            let fresh = crate::testkit::payee(n);
            templates.remember(TemplateOwner::of(remote, fresh), template(&chain, fresh));
        }
        for _ in 0..10 * MAX_TEMPLATES {
            let payout = key(2).pubkey_hash();
            templates.remember(TemplateOwner::of(local, payout), template(&chain, payout));
        }
        assert_eq!(templates.0.len(), MAX_TEMPLATES);
        assert!(templates.by_merkle_root(&mine.header.merkle_root).is_some());
        assert!(templates.by_merkle_root(&far.header.merkle_root).is_some());
        // Templates of an older tip go first.
        let mut next = chain.clone();
        next.mine_empty(key(3).pubkey_hash());
        templates.remember(TemplateOwner::of(local, miner), template(&next, miner));
        assert!(templates.by_merkle_root(&mine.header.merkle_root).is_none());
    }
}

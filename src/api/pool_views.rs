//! Routes whose work grows with the whole mempool (`/mempool`,
//! `/mempool/txids`, `/fee-estimates`, `/transaction_pool`,
//! `/mining/template`): at most `WHOLE_POOL_CONCURRENCY` of them are built at
//! once, and what they build is kept until the tip or the pool changes, so
//! a client polling a full pool costs a copy, not a rebuild.

use std::any::Any;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::listener::ClientCounts;
use super::{ApiError, ApiState, VIEW_ATTEMPTS};
use crate::chain::ChainView;
use crate::consensus::hash::BlockHash;
use crate::mempool::Mempool;

/// Whole-pool routes served at once: each may walk and sort every pool
/// entry (about 300 000 of them in the default 300 MiB), so two keep one core free for
/// the rest of the node on a two-core machine.
pub const WHOLE_POOL_CONCURRENCY: usize = 2;
/// How long a request waits for its turn before a 503: long enough to ride
/// out a burst, short enough that a client is told rather than hung.
pub const WHOLE_POOL_WAIT: Duration = Duration::from_secs(10);

/// Requests that read blocks (a block's transactions or txids, a proof, a
/// transaction from its block, an address's history of full transactions,
/// outspends, UTXO pages, an event stream's replay and each subscriber's
/// reading of new blocks, a balance batch of up to 1 000 addresses, the
/// legacy routes' pages of up to 1 000 rows and of a range of blocks, an
/// address's page of up to 50 full pool transactions) served
/// at once: one may decode a block of 1 MB or walk 25, and a replay up to
/// `MAX_CATCH_UP_BLOCKS` of them, so four
/// bound the CPU, memory and disk reads they hold at once whatever the
/// number of clients.
pub const CHAIN_READ_CONCURRENCY: usize = 4;

/// Event streams' first replay passes run at once. Knowing the balances
/// a replay starts from may read every block up to the tip that touches a
/// watched address (up to `MAX_CATCH_UP_BLOCKS` of them: a busy miner's
/// address is in every block): seconds of work, so replays take permits
/// of their own and wallets' reads never wait behind them.
pub const REPLAY_CONCURRENCY: usize = 1;

/// Event-stream replays' first passes (those `REPLAY_CONCURRENCY` bounds)
/// one client (an IPv4 address, an IPv6 /64) has waiting for a permit or
/// running at once (loopback excepted); its next ones wait for its place
/// as for a permit: a client that reconnects with replays in a loop
/// queues one, so others' replays wait behind one per client, not behind
/// its eight.
pub const MAX_REPLAYS_PER_CLIENT: usize = 1;

/// Event streams one client (an IPv4 address, an IPv6 /64) holds at once
/// (`GET /events`; loopback excepted): a few browser tabs, not the node's
/// `MAX_SUBSCRIBERS`.
pub const MAX_SUBSCRIBERS_PER_CLIENT: usize = 8;

/// Submissions of each kind (`POST /tx`; `POST /mining/submit`) judged at
/// once. Each may check up to thousands of signatures: a transaction's
/// under the pool's lock (which relay and the protocol thread take too), a
/// block's on the chain task. Two at once keep a client that floods them
/// from holding every blocking thread and queueing unbounded work for the
/// chain task; the rest wait their turn (503 `busy` after
/// `WHOLE_POOL_WAIT`). Blocks have permits of their own, so a flood of
/// transactions never keeps a miner's block waiting.
pub const SUBMIT_CONCURRENCY: usize = 2;

/// What a submission is, for its permits (see `SUBMIT_CONCURRENCY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submission {
    Transaction,
    Block,
}

/// One route's last answer and the state it was built from.
struct Cached {
    tip: BlockHash,
    changes: u64,
    value: Arc<dyn Any + Send + Sync>,
}

/// The concurrency limit and the per-route cache.
pub struct PoolViews {
    /// Permits are owned (`acquire_owned`) and moved into the blocking
    /// work they bound: a client that hangs up releases its permit when
    /// the work ends, not while it still runs.
    permits: Arc<Semaphore>,
    cache: Mutex<HashMap<&'static str, Cached>>,
    /// `CHAIN_READ_CONCURRENCY` permits for the routes that read blocks.
    chain_reads: Arc<Semaphore>,
    /// `REPLAY_CONCURRENCY` permits for event streams' first passes.
    replays: Arc<Semaphore>,
    /// Event streams by client: `MAX_SUBSCRIBERS_PER_CLIENT` each, and an
    /// eighth of `MAX_SUBSCRIBERS` kept for loopback (the node's own
    /// explorer, the operator), as the listener keeps connections.
    pub subscribers: Arc<ClientCounts>,
    /// Replays by client: `MAX_REPLAYS_PER_CLIENT` each.
    pub replayers: Arc<ClientCounts>,
    /// Bytes of large answers not yet taken by their clients (see
    /// `paced::MAX_PACED_BYTES`).
    pub answers: Arc<super::paced::AnswerBudget>,
    /// The pool transactions chosen for the last mining template (see
    /// `mining::SELECTION_REUSE`).
    pub template_selection: Mutex<Option<super::mining::Selection>>,
    /// `SUBMIT_CONCURRENCY` permits for transactions, and as many for
    /// blocks.
    tx_submits: Arc<Semaphore>,
    block_submits: Arc<Semaphore>,
}

impl Default for PoolViews {
    fn default() -> PoolViews {
        PoolViews {
            permits: Arc::new(Semaphore::new(WHOLE_POOL_CONCURRENCY)),
            cache: Mutex::new(HashMap::new()),
            chain_reads: Arc::new(Semaphore::new(CHAIN_READ_CONCURRENCY)),
            replays: Arc::new(Semaphore::new(REPLAY_CONCURRENCY)),
            subscribers: Arc::new(ClientCounts::new(MAX_SUBSCRIBERS_PER_CLIENT)),
            replayers: Arc::new(ClientCounts::new(MAX_REPLAYS_PER_CLIENT)),
            answers: Arc::default(),
            template_selection: Mutex::new(None),
            tx_submits: Arc::new(Semaphore::new(SUBMIT_CONCURRENCY)),
            block_submits: Arc::new(Semaphore::new(SUBMIT_CONCURRENCY)),
        }
    }
}

impl PoolViews {
    /// One of the `CHAIN_READ_CONCURRENCY` permits, waited for as long as
    /// it takes: for work no client waits on with a timeout (an event
    /// subscriber following the chain falls behind instead).
    pub async fn chain_read_permit(&self) -> OwnedSemaphorePermit {
        self.chain_reads
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// One of the `SUBMIT_CONCURRENCY` permits of `kind` (503 `busy` after
    /// `WHOLE_POOL_WAIT`). The caller moves it into the work it bounds, so a
    /// client that hangs up releases it when that work ends.
    pub async fn submit_permit(&self, kind: Submission) -> Result<OwnedSemaphorePermit, ApiError> {
        let (permits, what) = match kind {
            Submission::Transaction => (&self.tx_submits, "transaction submissions"),
            Submission::Block => (&self.block_submits, "block submissions"),
        };
        permit_or_busy(permits, what, SUBMIT_CONCURRENCY).await
    }
}

/// The mempool as a route that reads blocks reaches it: locked only while
/// the route holds the guard, never while it reads the store.
pub struct PoolGate<'a> {
    mempool: &'a Mutex<Mempool>,
    view: &'a ChainView,
    /// The pool was not at the view's tip when locked: what the route read
    /// of the store and of the pool may come from two states.
    stale: Cell<bool>,
}

impl PoolGate<'_> {
    /// The pool, caught up with the view's tip where it can be. When it
    /// cannot (a block came between the view and the lock, and the pool
    /// took it in), `with_chain_reads` runs the route again on a newer view.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Mempool> {
        let mut pool = self.mempool.lock().expect("mempool lock");
        // Only another tip makes a fresh view worth taking: a rebuild
        // still owed at this tip would be owed on the next view too.
        if !pool.catch_up_step(self.view) && pool.tip() != self.view.tip().hash {
            self.stale.set(true);
        }
        pool
    }
}

/// `f`'s answer on a view from `next_view` and the pool at that view's
/// tip: taken again on the next view when the pool was found at another
/// tip (`PoolGate::lock`), up to `VIEW_ATTEMPTS` views in all, or at once
/// in a catch-up (views trail the writer's cached blocks until the next
/// flush).
fn one_state_answer<T>(
    mut next_view: impl FnMut() -> Result<ChainView, ApiError>,
    mempool: &Mutex<Mempool>,
    f: impl Fn(&ChainView, &PoolGate) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let mut attempt = 1;
    loop {
        let view = next_view()?;
        let gate = PoolGate {
            mempool,
            view: &view,
            stale: Cell::new(false),
        };
        let answer = f(&view, &gate);
        if !gate.stale.get() || attempt == VIEW_ATTEMPTS || view.trails_cached_blocks() {
            return answer;
        }
        attempt += 1;
        std::thread::yield_now();
    }
}

/// One of `permits`, waited for at most `WHOLE_POOL_WAIT`; then 503 `busy`,
/// naming what is limited (`what`, at most `limit` at once).
async fn permit_or_busy(
    permits: &Arc<Semaphore>,
    what: &str,
    limit: usize,
) -> Result<OwnedSemaphorePermit, ApiError> {
    tokio::time::timeout(WHOLE_POOL_WAIT, permits.clone().acquire_owned())
        .await
        .map_err(|_| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "busy",
            message: format!("too many {what} at once (at most {limit}); retry shortly"),
        })
        .map(|permit| permit.expect("the semaphore is never closed"))
}

impl ApiState {
    /// Runs `f` on a blocking thread with a view of the chain and a gate to
    /// the mempool, once one of the `CHAIN_READ_CONCURRENCY` permits is
    /// free (503 `busy` after `WHOLE_POOL_WAIT`). One answer comes from one
    /// state: if `f` found the pool at another tip than its view's, it runs
    /// again on a fresh view, up to `VIEW_ATTEMPTS` times (as `with_state`;
    /// in a catch-up, where views trail the writer's cached blocks, the
    /// first answer stands).
    pub async fn with_chain_reads<T: Send + 'static>(
        &self,
        f: impl Fn(&ChainView, &PoolGate) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = permit_or_busy(
            &self.pool_views.chain_reads,
            "requests reading blocks",
            CHAIN_READ_CONCURRENCY,
        )
        .await?;
        self.read_blocks_with(permit, f).await
    }

    /// `with_chain_reads` for an event stream's first replay pass, under a
    /// `REPLAY_CONCURRENCY` permit instead.
    pub async fn with_replay_reads<T: Send + 'static>(
        &self,
        f: impl Fn(&ChainView, &PoolGate) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = permit_or_busy(
            &self.pool_views.replays,
            "event-stream replays",
            REPLAY_CONCURRENCY,
        )
        .await?;
        self.read_blocks_with(permit, f).await
    }

    async fn read_blocks_with<T: Send + 'static>(
        &self,
        permit: OwnedSemaphorePermit,
        f: impl Fn(&ChainView, &PoolGate) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let (reader, mempool) = (self.reader.clone(), self.mempool.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            one_state_answer(|| reader.view().map_err(ApiError::internal), &mempool, f)
        })
        .await?
    }

    /// Runs `f` like `with_state`, once a whole-pool permit is free.
    pub async fn with_pool_permit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ChainView, &mut Mempool) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = permit_or_busy(
            &self.pool_views.permits,
            "whole-mempool requests",
            WHOLE_POOL_CONCURRENCY,
        )
        .await?;
        self.with_state(move |chain, pool| {
            let _permit = permit;
            f(chain, pool)
        })
        .await
    }

    /// `route`'s value for the current tip and pool: the cached one, or,
    /// under the concurrency limit, `extract`'s copy of what it needs from
    /// the pool (under the pool's lock, a walk of its entries) turned into
    /// the value by `build` after the lock is released (the sorting and
    /// JSON, which relay and the protocol thread would otherwise wait for),
    /// then cached under the tip and pool state the copy was taken at.
    pub async fn pool_view<E: Send + 'static, T: Send + Sync + 'static>(
        &self,
        route: &'static str,
        extract: impl FnOnce(&ChainView, &Mempool) -> Result<E, ApiError> + Send + 'static,
        build: impl FnOnce(E) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<Arc<T>, ApiError> {
        let views = self.pool_views.clone();
        let permit = permit_or_busy(
            &views.permits,
            "whole-mempool requests",
            WHOLE_POOL_CONCURRENCY,
        )
        .await?;
        let cache = views.clone();
        // The permit travels with the work (released when the work ends,
        // whether or not the client still waits).
        let (permit, step) = self
            .with_state(move |chain, pool| {
                let (tip, changes) = (chain.tip().hash, pool.changes());
                let hit = cache
                    .cache
                    .lock()
                    .expect("pool view cache lock")
                    .get(route)
                    .filter(|c| c.tip == tip && c.changes == changes)
                    .and_then(|c| c.value.clone().downcast::<T>().ok());
                let step = match hit {
                    Some(hit) => Err(hit),
                    None => Ok((tip, changes, extract(chain, pool)?)),
                };
                Ok((permit, step))
            })
            .await?;
        let (tip, changes, extracted) = match step {
            Err(hit) => return Ok(hit),
            Ok(extracted) => extracted,
        };
        let value = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            build(extracted).map(Arc::new)
        })
        .await??;
        views.cache.lock().expect("pool view cache lock").insert(
            route,
            Cached {
                tip,
                changes,
                value: value.clone(),
            },
        );
        Ok(value)
    }

    /// `route`'s JSON body for the current tip and pool, cached as bytes
    /// (`pool_view`: `extract` runs under the pool's lock, `build` and the
    /// serialising after it).
    pub async fn pool_json<E: Send + 'static, J: serde::Serialize>(
        &self,
        route: &'static str,
        extract: impl FnOnce(&ChainView, &Mempool) -> Result<E, ApiError> + Send + 'static,
        build: impl FnOnce(E) -> Result<J, ApiError> + Send + 'static,
    ) -> Result<Response, ApiError> {
        let body = self
            .pool_view(route, extract, move |extracted| {
                serde_json::to_vec(&build(extracted)?)
                    .map(Bytes::from)
                    .map_err(ApiError::internal)
            })
            .await?;
        Ok((
            [(header::CONTENT_TYPE, "application/json")],
            Bytes::clone(&body),
        )
            .into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::params::Network;
    use crate::testkit::{key, TestChain};

    /// A block lands between a route's store read and its pool read: the
    /// pool has taken the block in, the route's view has not. The route
    /// runs again on the new view, so its answer is one state's.
    #[test]
    fn an_answer_read_across_a_new_block_is_read_again_on_the_new_view() {
        let dir = tempfile::tempdir().unwrap();
        let mut chain = crate::testkit::regtest_chain(dir.path());
        let mut blocks = TestChain::new(Network::Regtest);
        for _ in 0..3 {
            let block = blocks.mine_empty(key(1).pubkey_hash()).clone();
            chain.process_block(Arc::new(block), None).unwrap();
        }
        let mempool = Mutex::new(Mempool::new(
            &chain,
            crate::mempool::DEFAULT_MAX_MEMPOOL_BYTES,
        ));
        let reader = chain.reader();
        let before = reader.view().unwrap();
        let block = blocks.mine_empty(key(1).pubkey_hash()).clone();
        chain.process_block(Arc::new(block), None).unwrap();
        let route = |view: &ChainView, gate: &PoolGate| {
            let pool = gate.lock();
            Ok((view.height(), pool.len()))
        };
        // The older view first, as a route would have taken it.
        let mut views = vec![
            Ok(before.clone()),
            reader.view().map_err(ApiError::internal),
        ]
        .into_iter();
        let calls = Cell::new(0);
        let answer = one_state_answer(
            || views.next().expect("at most two views"),
            &mempool,
            |view, gate| {
                calls.set(calls.get() + 1);
                route(view, gate)
            },
        );
        assert_eq!(answer.unwrap(), (4, 0));
        assert_eq!(calls.get(), 2);
        // A route that never reads the pool answers from its first view.
        let calls = Cell::new(0);
        let answer = one_state_answer(
            || Ok(before.clone()),
            &mempool,
            |view, _| {
                calls.set(calls.get() + 1);
                Ok(view.height())
            },
        );
        assert_eq!(answer.unwrap(), 3);
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn one_client_holds_a_few_event_streams_and_loopback_keeps_an_eighth() {
        let views = PoolViews::default();
        let max = crate::events::MAX_SUBSCRIBERS;
        let held: Vec<_> = (0..MAX_SUBSCRIBERS_PER_CLIENT)
            .map(|_| views.subscribers.take("198.51.100.7".parse().unwrap(), max))
            .collect();
        assert!(held.iter().all(|h| matches!(h, Some(Some(_)))));
        assert!(views
            .subscribers
            .take("198.51.100.7".parse().unwrap(), max)
            .is_none());
        // Other clients fill the rest but an eighth, which loopback keeps.
        let others: Vec<_> = (0..=255u8)
            .map_while(|n| views.subscribers.take([203, 0, 113, n].into(), max))
            .collect();
        assert_eq!(held.len() + others.len(), max - max / 8);
        assert!(matches!(
            views.subscribers.take("127.0.0.1".parse().unwrap(), max),
            Some(None)
        ));
    }
}

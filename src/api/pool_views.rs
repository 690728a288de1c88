//! Routes whose work grows with the whole mempool (`/mempool`,
//! `/mempool/txids`, `/fee-estimates`, `/transaction_pool`,
//! `/mining/template`): at most `WHOLE_POOL_CONCURRENCY` of them are built at
//! once, and what they build is kept until the tip or the pool changes, so
//! a client polling a full pool costs a copy, not a rebuild.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ApiError, ApiState};
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
}

impl PoolGate<'_> {
    /// The pool, caught up with the view's tip where it can be (as
    /// `with_state` after its last attempt).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Mempool> {
        let mut pool = self.mempool.lock().expect("mempool lock");
        pool.catch_up_step(self.view);
        pool
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
    /// free (503 `busy` after `WHOLE_POOL_WAIT`).
    pub async fn with_chain_reads<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ChainView, &PoolGate) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = permit_or_busy(
            &self.pool_views.chain_reads,
            "requests reading blocks",
            CHAIN_READ_CONCURRENCY,
        )
        .await?;
        let (reader, mempool) = (self.reader.clone(), self.mempool.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let view = reader.view().map_err(ApiError::internal)?;
            f(
                &view,
                &PoolGate {
                    mempool: &mempool,
                    view: &view,
                },
            )
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

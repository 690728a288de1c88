//! The REST API: an adapter over the node's own state for wallets, miners
//! and explorers (peers never use it). Reads never wait for the chain task:
//! each request reads one `ChainView` (a RocksDB snapshot at a block
//! boundary) and the mempool, locked for the request's own bounded work.
//! Writes go through the mempool, or to the chain task (a submitted block)
//! like every other source.

mod admin;
pub mod cors;
mod error;
mod esplora;
mod events;
mod explorer;
pub mod explorer_site;
mod extract;
mod handlers;
mod latency;
mod legacy;
pub mod listener;
mod mining;
mod paced;
mod pool_views;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::chain::{ChainHandle, ChainReader, ChainView};
use crate::mempool::Mempool;
use crate::p2p::NetworkHandle;
pub use error::ApiError;
pub use explorer::{MAX_CHAIN_TXS_PAGE, TIP_HEADER};
pub use latency::Latency;
pub use mining::Templates;
pub use pool_views::{PoolGate, PoolViews, CHAIN_READ_CONCURRENCY, WHOLE_POOL_CONCURRENCY};

/// Largest request body of every route but block submission: a
/// maximum-size standard transaction in hex (`POST /tx`), with room to
/// spare; also bounds `POST /addresses/balances` and `POST /peers`.
pub const MAX_BODY_BYTES: usize = 2 * crate::mempool::MAX_STANDARD_TX_SIZE + 1024;
/// Largest body of `POST /mining/submit`: a maximum-size block in hex
/// (a miner loses a block the node refuses to read), with room for
/// surrounding whitespace.
pub const MAX_SUBMIT_BODY_BYTES: usize = 2 * crate::consensus::limits::MAX_BLOCK_SIZE + 1024;

/// What every handler can reach: one pointer, cloned for every request
/// (axum's `State` extractor and the middleware each take a copy). Its
/// fields behind a single `Arc`: cloning and dropping a dozen `Arc`s per
/// request, their counters bouncing between cores, was a tenth of the
/// REST workers' time under load.
#[derive(Clone)]
pub struct ApiState(Arc<ApiShared>);

impl ApiState {
    pub fn new(shared: ApiShared) -> Self {
        ApiState(Arc::new(shared))
    }
}

impl std::ops::Deref for ApiState {
    type Target = ApiShared;

    fn deref(&self) -> &ApiShared {
        &self.0
    }
}

/// The node's handles that the REST API serves from (see `ApiState`).
pub struct ApiShared {
    /// Where reads come from: consistent views, never the writer's lock.
    pub reader: ChainReader,
    /// The chain task, for the writes REST asks for (a submitted block, a
    /// transaction no view can judge); reads go through `reader`.
    pub chain: ChainHandle,
    pub mempool: Arc<Mutex<Mempool>>,
    pub network: NetworkHandle,
    pub started: Instant,
    /// The PostgreSQL mirror's progress, when the node runs one.
    pub mirror: Option<Arc<Mutex<crate::mirror::MirrorStatus>>>,
    /// Token that allows admin endpoints from other hosts than loopback.
    pub admin_token: Option<String>,
    /// Block templates handed out, for header-only submissions.
    pub templates: Arc<Mutex<mining::Templates>>,
    /// Hash rate of the node's own miner (hashes per second; 0 when it does
    /// not mine).
    pub hashrate: Arc<std::sync::atomic::AtomicU64>,
    /// Request latency by route.
    pub latency: Arc<Latency>,
    /// The whole-mempool routes' concurrency limit and cache.
    pub pool_views: Arc<pool_views::PoolViews>,
    /// The event stream's hub (`GET /events`).
    pub events: crate::events::EventHub,
    /// Other origins whose web pages may read the API (`--api-cors`).
    pub cors: cors::CorsOrigins,
    /// How often an event stream sends a keep-alive comment: often enough
    /// that the listener's idle timeout never closes a quiet stream.
    pub keep_alive: std::time::Duration,
    /// How long a request's handling may take, its body's reading included
    /// (`--api-request-timeout-secs`; the listener bounds its head's).
    pub request_timeout: std::time::Duration,
}

/// Views a reader takes before it answers from a pool that is not at the
/// view's tip. At the tip a fresh view matches at the second try (the
/// writer sends a block's event right after writing it). During a catch-up
/// whose state is not yet flushed they never match (the view says so:
/// `ChainView::trails_cached_blocks`), and the answer says what the view
/// holds plus the pool as it is, at the first try: each retry yields the
/// CPU, which on a machine busy with the catch-up cost a millisecond or
/// more (requests took 3 to 6 ms where they take 0.5).
const VIEW_ATTEMPTS: usize = 4;

/// Tries for the pool's lock on the quick path before taking the blocking
/// one. Other quick requests hold it for a microsecond or two (one
/// address's pool entries), so a short spin nearly always gets it, where a
/// miss costs a hop to the blocking pool; a long holder (a rebuild step, a
/// whole-pool view) is left alone after a few microseconds. With two REST
/// workers on two cores, a single try missed often enough to hold
/// `GET /address` at 0.5x the reference route.
const QUICK_LOCK_TRIES: usize = 64;

impl ApiState {
    /// Runs `f` on a blocking thread with a view of the chain and the
    /// mempool, locked for `f` alone and caught up with the view's tip (see
    /// `VIEW_ATTEMPTS`). Never waits for the chain's writer.
    pub async fn with_state<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ChainView, &mut Mempool) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || state.with_state_blocking(f)).await?
    }

    /// As `with_state`, on the calling async worker when that is cheap: for
    /// routes whose work is a few point reads of the store (block-cache
    /// hits, microseconds) and a few lookups in the pool, where the hop to
    /// the blocking pool would cost more than the work. The store part
    /// (`read`) runs before the pool is locked, so the pool's lock is held
    /// for the pool part (`overlay`) alone: a worker preempted while holding
    /// it stalls the others for less. If the pool is locked, owes a rebuild
    /// after a reorganisation, or is not at the view's tip while the view
    /// could still meet it (at the tip, not in a catch-up:
    /// `ChainView::trails_cached_blocks`), the request takes the blocking
    /// path, where `read` runs again on the view the pool is caught up to.
    pub async fn with_state_quick<A, T>(
        &self,
        read: impl Fn(&ChainView) -> Result<A, ApiError> + Send + 'static,
        overlay: impl FnOnce(&ChainView, &Mempool, A) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError>
    where
        A: Send + 'static,
        T: Send + 'static,
    {
        {
            let view = self.reader.view().map_err(ApiError::internal)?;
            let part = read(&view)?;
            // Never wait for the pool's lock on an async worker: whoever holds
            // it (a rebuild, a whole-pool view) may hold it long.
            if let Some(mut pool) = self.try_lock_pool_briefly() {
                let at_tip = pool.catch_up_without_rebuild(&view);
                if at_tip || (view.trails_cached_blocks() && !pool.rebuild_pending()) {
                    return overlay(&view, &pool, part);
                }
            }
        }
        self.with_state(move |view, pool| {
            let part = read(view)?;
            overlay(view, pool, part)
        })
        .await
    }

    /// The pool's lock if it comes within `QUICK_LOCK_TRIES` tries.
    fn try_lock_pool_briefly(&self) -> Option<std::sync::MutexGuard<'_, Mempool>> {
        for _ in 0..QUICK_LOCK_TRIES {
            match self.mempool.try_lock() {
                Ok(pool) => return Some(pool),
                Err(std::sync::TryLockError::WouldBlock) => std::hint::spin_loop(),
                Err(std::sync::TryLockError::Poisoned(_)) => return None,
            }
        }
        None
    }

    fn with_state_blocking<T>(
        &self,
        f: impl FnOnce(&ChainView, &mut Mempool) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut attempt = 1;
        loop {
            let view = self.reader.view().map_err(ApiError::internal)?;
            let mut pool = self.mempool.lock().expect("mempool lock");
            // In a catch-up the store gets the writer's blocks at the next
            // flush, minutes away: no view will meet the pool's tip before.
            if pool.catch_up_step(&view) || attempt == VIEW_ATTEMPTS || view.trails_cached_blocks()
            {
                return f(&view, &mut pool);
            }
            drop(pool);
            attempt += 1;
            std::thread::yield_now();
        }
    }

    /// Runs `f` on a blocking thread with a view of the chain, without the
    /// mempool.
    pub async fn with_view<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ChainView) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&reader.view().map_err(ApiError::internal)?)).await?
    }
}

/// The OpenAPI 3 document of every route (kept in step with the router by
/// a test).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> (
    [(axum::http::header::HeaderName, &'static str); 1],
    &'static str,
) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

pub fn router(state: ApiState) -> Router {
    let latency = state.latency.clone();
    let cors = state.cors.layer();
    let router = Router::new()
        // The explorer in the browser: static files (see `explorer_site`).
        .route("/", get(explorer_site::index))
        .route("/explorer/app.js", get(explorer_site::app_js))
        .route("/explorer/style.css", get(explorer_site::style_css))
        .route("/status", get(handlers::status))
        .route("/blocks/tip/height", get(handlers::tip_height))
        .route("/blocks/tip/hash", get(handlers::tip_hash))
        .route("/mempool", get(handlers::mempool_summary))
        .route("/mempool/txids", get(handlers::mempool_txids))
        .route("/mempool/recent", get(handlers::mempool_recent))
        .route("/tx", post(handlers::submit_tx))
        .route("/tx/{txid}", get(handlers::get_tx))
        .route("/tx/{txid}/status", get(explorer::tx_status_handler))
        .route("/tx/{txid}/hex", get(explorer::tx_hex))
        .route("/tx/{txid}/raw", get(explorer::tx_raw))
        .route("/tx/{txid}/merkle-proof", get(explorer::tx_merkle_proof))
        .route(
            "/tx/{txid}/merkleblock-proof",
            get(explorer::tx_merkleblock_proof),
        )
        .route("/tx/{txid}/outspend/{vout}", get(explorer::tx_outspend))
        .route("/tx/{txid}/outspends", get(explorer::tx_outspends))
        .route("/address/{address}", get(handlers::address))
        .route("/address/{address}/utxo", get(explorer::address_utxo))
        .route("/address/{address}/txs", get(explorer::address_txs))
        .route(
            "/address/{address}/txs/chain",
            get(explorer::address_chain_txs),
        )
        .route(
            "/address/{address}/txs/chain/{last_seen_txid}",
            get(explorer::address_chain_txs_after),
        )
        .route(
            "/address/{address}/txs/mempool",
            get(explorer::address_mempool_txs),
        )
        .route("/scripthash/{hash}", get(explorer::scripthash_stats))
        .route("/scripthash/{hash}/utxo", get(explorer::scripthash_utxo))
        .route("/scripthash/{hash}/txs", get(explorer::scripthash_txs))
        .route(
            "/scripthash/{hash}/txs/chain",
            get(explorer::scripthash_chain_txs),
        )
        .route(
            "/scripthash/{hash}/txs/chain/{last_seen_txid}",
            get(explorer::scripthash_chain_txs_after),
        )
        .route(
            "/scripthash/{hash}/txs/mempool",
            get(explorer::scripthash_mempool_txs),
        )
        .route("/addresses/balances", post(explorer::address_balances))
        .route("/blocks/tip", get(explorer::tip_block))
        .route("/blocks", get(explorer::blocks))
        .route("/blocks/{start_height}", get(explorer::blocks_from))
        .route("/block/{hash}", get(explorer::block))
        .route("/block/{hash}/status", get(explorer::block_status))
        .route("/block/{hash}/header", get(explorer::block_header))
        .route("/block/{hash}/raw", get(explorer::block_raw))
        .route("/block/{hash}/txs", get(explorer::block_txs))
        .route(
            "/block/{hash}/txs/{start_index}",
            get(explorer::block_txs_at),
        )
        .route("/block/{hash}/txids", get(explorer::block_txids))
        .route("/block/{hash}/txid/{index}", get(explorer::block_txid_at))
        .route("/block-height/{height}", get(explorer::block_at_height))
        .route("/chainstate", get(explorer::chainstate))
        .route("/peers", get(explorer::peers).post(admin::add_peer))
        .route("/peers/{addr}", axum::routing::delete(admin::remove_peer))
        .route("/fee-estimates", get(handlers::fee_estimates))
        .route("/mining/template", get(mining::template))
        .route(
            "/mining/submit",
            post(mining::submit).layer(DefaultBodyLimit::max(MAX_SUBMIT_BODY_BYTES)),
        )
        .route("/metrics", get(handlers::metrics))
        .route("/events", get(events::events))
        .route("/openapi.json", get(openapi))
        // The original ChainCore API's paths.
        .route("/balance/{address}", get(legacy::balance))
        .route("/utxos/{address}", get(legacy::utxos))
        .route("/transactions/{address}", get(legacy::transactions))
        .route("/transaction_pool", get(legacy::transaction_pool))
        .route("/blocks/range", get(legacy::blocks_range))
        .route("/chain/info", get(legacy::chain_info))
        .route("/stats", get(legacy::stats))
        .route("/orphaned_blocks", get(legacy::orphaned_blocks))
        .route("/network_config", get(legacy::network_config))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(
            state.request_timeout,
            within_request_timeout,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            latency,
            latency::track,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.pool_views.answers.clone(),
            paced::pace_large_answers,
        ))
        .with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Middleware: a request's handling, the reading of its body included,
/// ends within the request timeout, or is answered 503 `timeout` (the
/// listener bounds the reading of its head, and a request pipelined
/// behind another is read before its own handling starts).
async fn within_request_timeout(
    axum::extract::State(timeout): axum::extract::State<std::time::Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::unavailable(
            "timeout",
            format!("the request took longer than {} s", timeout.as_secs()),
        )
        .into_response(),
    }
}

/// Binds the API listener and serves until the task is dropped, within
/// `limits` (see `listener`).
pub async fn serve(
    bind: SocketAddr,
    state: ApiState,
    limits: listener::ConnectionLimits,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("binding the REST API on {bind}: {e}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(addr = %addr, max_connections = limits.max_connections, idle_timeout_secs = limits.idle_timeout.as_secs(), "api listening");
    // `tap_io` for the client's address as `ConnectInfo` (axum gives it to
    // any tapped listener).
    let listener = listener::LimitedListener::new(listener, limits).tap_io(|_| {});
    let app = router(state);
    let task = tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "REST API stopped");
        }
    });
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    /// Every route of the router is documented, and nothing else is.
    #[test]
    fn openapi_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let mut documented: Vec<String> =
            doc["paths"].as_object().unwrap().keys().cloned().collect();
        documented.sort();
        let source = include_str!("mod.rs");
        // The router's body only (this test mentions `.route(` too).
        let source = &source[source.find("pub fn router(").unwrap()..];
        let source = &source[..source.find("pub async fn serve(").unwrap()];
        let mut routed: Vec<String> = source
            .split(".route(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
            .map(str::to_string)
            .collect();
        routed.sort();
        routed.dedup();
        assert_eq!(documented, routed);
    }
}

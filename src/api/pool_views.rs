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
use tokio::sync::Semaphore;

use super::{ApiError, ApiState};
use crate::chain::ChainView;
use crate::consensus::hash::BlockHash;
use crate::mempool::Mempool;

/// Whole-pool routes served at once: each may walk and sort every pool
/// entry (64 MB of transactions by default), so two keep one core free for
/// the rest of the node on a two-core machine.
pub const WHOLE_POOL_CONCURRENCY: usize = 2;
/// How long a request waits for its turn before a 503: long enough to ride
/// out a burst, short enough that a client is told rather than hung.
pub const WHOLE_POOL_WAIT: Duration = Duration::from_secs(10);

/// One route's last answer and the state it was built from.
struct Cached {
    tip: BlockHash,
    changes: u64,
    value: Arc<dyn Any + Send + Sync>,
}

/// The concurrency limit and the per-route cache.
pub struct PoolViews {
    permits: Semaphore,
    cache: Mutex<HashMap<&'static str, Cached>>,
}

impl Default for PoolViews {
    fn default() -> PoolViews {
        PoolViews {
            permits: Semaphore::new(WHOLE_POOL_CONCURRENCY),
            cache: Mutex::new(HashMap::new()),
        }
    }
}

fn busy() -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "busy",
        message: format!(
            "too many whole-mempool requests at once (at most {WHOLE_POOL_CONCURRENCY}); retry shortly"
        ),
    }
}

impl ApiState {
    /// Runs `f` like `with_state`, once a whole-pool permit is free.
    pub async fn with_pool_permit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ChainView, &mut Mempool) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = tokio::time::timeout(WHOLE_POOL_WAIT, self.pool_views.permits.acquire())
            .await
            .map_err(|_| busy())?
            .expect("the semaphore is never closed");
        self.with_state(f).await
    }

    /// `route`'s value for the current tip and pool: the cached one, or
    /// `build`'s (under the concurrency limit), then cached.
    pub async fn pool_view<T: Send + Sync + 'static>(
        &self,
        route: &'static str,
        build: impl FnOnce(&ChainView, &mut Mempool) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<Arc<T>, ApiError> {
        let views = self.pool_views.clone();
        self.with_pool_permit(move |chain, pool| {
            let (tip, changes) = (chain.tip().hash, pool.changes());
            if let Some(hit) = views
                .cache
                .lock()
                .expect("pool view cache lock")
                .get(route)
                .filter(|c| c.tip == tip && c.changes == changes)
                .and_then(|c| c.value.clone().downcast::<T>().ok())
            {
                return Ok(hit);
            }
            let value = Arc::new(build(chain, pool)?);
            views.cache.lock().expect("pool view cache lock").insert(
                route,
                Cached {
                    tip,
                    changes,
                    value: value.clone(),
                },
            );
            Ok(value)
        })
        .await
    }

    /// `route`'s JSON body for the current tip and pool, cached as bytes.
    pub async fn pool_json(
        &self,
        route: &'static str,
        build: impl FnOnce(&ChainView, &mut Mempool) -> Result<serde_json::Value, ApiError>
            + Send
            + 'static,
    ) -> Result<Response, ApiError> {
        let body = self
            .pool_view(route, move |chain, pool| {
                serde_json::to_vec(&build(chain, pool)?)
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

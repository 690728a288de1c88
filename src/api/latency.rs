//! Request latency by route, as a Prometheus histogram for `/metrics`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// Upper bounds of the histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// One route's histogram.
#[derive(Debug, Default, Clone)]
pub struct RouteLatency {
    /// Requests at or under each bound of [`LATENCY_BUCKETS`].
    pub buckets: [u64; LATENCY_BUCKETS.len()],
    pub count: u64,
    pub sum_secs: f64,
}

/// Histograms by route pattern, then method. Routes are the router's
/// patterns (`/tx/{txid}`), never raw paths, so the table stays small; a
/// request looks its entry up by `&str`, allocating nothing once its route
/// has been seen.
#[derive(Debug, Default)]
pub struct Latency(Mutex<BTreeMap<String, BTreeMap<String, RouteLatency>>>);

/// Methods the table keeps apart; any other (HTTP allows a client to name
/// its own) counts as `OTHER`, so no client can grow the table.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];

impl Latency {
    pub fn record(&self, method: &str, route: &str, secs: f64) {
        let method = METHODS
            .into_iter()
            .find(|m| *m == method)
            .unwrap_or("OTHER");
        let mut table = self.0.lock().expect("latency lock");
        if !table.contains_key(route) {
            table.insert(route.to_string(), BTreeMap::new());
        }
        let methods = table.get_mut(route).expect("inserted above");
        if !methods.contains_key(method) {
            methods.insert(method.to_string(), RouteLatency::default());
        }
        let entry = methods.get_mut(method).expect("inserted above");
        entry.count += 1;
        entry.sum_secs += secs;
        for (bucket, bound) in entry.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if secs <= bound {
                *bucket += 1;
            }
        }
    }

    /// Every histogram, by (method, route).
    pub fn snapshot(&self) -> BTreeMap<(String, String), RouteLatency> {
        let table = self.0.lock().expect("latency lock");
        table
            .iter()
            .flat_map(|(route, methods)| {
                methods
                    .iter()
                    .map(|(method, entry)| ((method.clone(), route.clone()), entry.clone()))
            })
            .collect()
    }
}

/// Middleware: times every request that matched a route.
pub async fn track(State(latency): State<Arc<Latency>>, request: Request, next: Next) -> Response {
    // Both are reference-counted or static: no allocation per request.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    if let Some(route) = route {
        latency.record(
            method.as_str(),
            route.as_str(),
            started.elapsed().as_secs_f64(),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let latency = Latency::default();
        latency.record("GET", "/status", 0.000_1);
        latency.record("GET", "/status", 0.003);
        latency.record("GET", "/status", 9.0);
        let table = latency.snapshot();
        let status = &table[&("GET".to_string(), "/status".to_string())];
        assert_eq!(status.count, 3);
        assert_eq!(status.buckets[0], 1);
        assert_eq!(status.buckets[4], 2); // <= 5 ms
        assert_eq!(status.buckets[LATENCY_BUCKETS.len() - 1], 2);
        assert!((status.sum_secs - 9.0031).abs() < 1e-9);
    }

    #[test]
    fn methods_a_client_makes_up_share_one_entry() {
        let latency = Latency::default();
        for i in 0..100 {
            latency.record(&format!("X-{i}"), "/status", 0.001);
        }
        latency.record("GET", "/status", 0.001);
        let table = latency.snapshot();
        assert_eq!(table.len(), 2);
        assert_eq!(
            table[&("OTHER".to_string(), "/status".to_string())].count,
            100
        );
    }
}

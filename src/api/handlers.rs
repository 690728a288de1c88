//! Handlers. Shapes follow esplora where it has a counterpart.

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};

use super::esplora::{json_bytes, PendingTx, TxJson, TxStatus};
use super::extract::Path;
use super::{ApiError, ApiState};
use crate::consensus::hash::Txid;
use crate::consensus::transaction::Transaction;
use crate::encoding::Decode;
use crate::mempool::MempoolError;

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// A known path with a method it does not serve.
pub async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
        code: "method-not-allowed",
        message: format!("{method} is not served on this path"),
    }
}

fn parse_txid(s: &str) -> Result<Txid, ApiError> {
    s.parse()
        .map_err(|e: crate::consensus::hash::ParseHashError| {
            ApiError::bad_request("invalid-txid", e.to_string())
        })
}

pub async fn status(
    State(state): State<ApiState>,
    axum::extract::ConnectInfo(client): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    // The mirror's last error quotes PostgreSQL (users, hosts, the other
    // holder of its lock): the operator's to read.
    let operator = super::admin::is_admin(&client, &headers, state.admin_token.as_deref());
    let network = state.network.status();
    let uptime = state.started.elapsed().as_secs();
    let hashrate = state.hashrate.load(std::sync::atomic::Ordering::Relaxed);
    let mirror = state.mirror.clone();
    // A few fields of the view and two of the pool: no blocking hop.
    state
        .with_state_quick(
            move |chain| {
                let tip = chain.tip();
                // The lag against this very tip, whatever the mirror is doing.
                let mirror = mirror.as_ref().map(|m| {
                    m.lock()
                        .expect("mirror status lock")
                        .clone()
                        .at_tip(tip.height)
                });
                let (best_header, header_height) = chain.best_header();
                Ok(json!({
                    "network": chain.params().network,
                    "version": env!("CARGO_PKG_VERSION"),
                    "uptime_secs": uptime,
                    "tip": {
                        "height": tip.height,
                        "hash": tip.hash,
                        "time": tip.time,
                        "chain_work": format!("{:064x}", tip.chain_work),
                    },
                    "best_header": { "height": header_height, "hash": best_header },
                    "sync": network.sync,
                    "peers": network.peers.iter().filter(|p| p.ready).count(),
                    "chainstate": {
                        "utxo_count": tip.utxo_count,
                        "total_amount": tip.utxo_total,
                        "utxo_digest": tip.utxo_digest,
                    },
                    "orphan_blocks": chain.orphan_count(),
                    "dbcache": chain.published().cache,
                    "mining": { "hashrate": hashrate },
                    "mirror": mirror,
                }))
            },
            move |_, pool, mut status| {
                status["mempool"] = json!({
                    "count": pool.len(),
                    "bytes": pool.bytes(),
                    "usage": pool.usage(),
                });
                // (`get_mut`: indexing would turn a null `mirror` into an
                // object.)
                let error = status
                    .get_mut("mirror")
                    .and_then(|mirror| mirror.get_mut("last_error"));
                if let Some(error) = error.filter(|e| !operator && e.is_string()) {
                    *error = json!("the mirror failed: the node's log says why");
                }
                Ok(Json(status))
            },
        )
        .await
}

pub async fn tip_height(State(state): State<ApiState>) -> Result<String, ApiError> {
    state
        .reader
        .view()
        .map(|view| view.height().to_string())
        .map_err(ApiError::internal)
}

pub async fn tip_hash(State(state): State<ApiState>) -> Result<String, ApiError> {
    state
        .reader
        .view()
        .map(|view| view.tip().hash.to_string())
        .map_err(ApiError::internal)
}

pub async fn mempool_summary(State(state): State<ApiState>) -> Result<Response, ApiError> {
    state
        .pool_json(
            "/mempool",
            |_, pool| {
                let total_fee: u64 = pool.entries().map(|e| e.fee.units()).sum();
                let rates: Vec<(u64, usize)> =
                    pool.entries().map(|e| (e.fee_rate(), e.size)).collect();
                Ok((pool.len(), pool.bytes(), total_fee, rates))
            },
            |(count, bytes, total_fee, rates)| {
                Ok(json!({
                    "count": count,
                    // esplora's virtual size: bytes, as nothing is witness data.
                    "vsize": bytes,
                    "bytes": bytes,
                    "total_fee": total_fee,
                    "fee_histogram": fee_histogram(rates.into_iter()),
                }))
            },
        )
        .await
}

/// Width of a bin of the mempool's fee histogram, in virtual bytes
/// (esplora's `VSIZE_BIN_WIDTH`): the histogram has at most one bin per
/// this many bytes of the pool, whatever the number of distinct rates.
pub const FEE_HISTOGRAM_BIN_BYTES: usize = 50_000;

/// esplora's fee histogram of `(rate per 1000 bytes, size)` entries:
/// `[rate in units per byte, bytes]` bins, highest rate first. Entries are
/// taken from the highest rate down into the current bin until it holds
/// more than `FEE_HISTOGRAM_BIN_BYTES`; the bin is then closed with the
/// rate of its last (lowest) entry.
pub fn fee_histogram(entries: impl Iterator<Item = (u64, usize)>) -> Vec<(f64, usize)> {
    let mut rates: Vec<(u64, usize)> = entries.collect();
    rates.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
    let mut histogram = Vec::new();
    let mut bin = 0usize;
    let mut last_rate = None;
    for (rate, size) in rates {
        if bin > FEE_HISTOGRAM_BIN_BYTES && last_rate != Some(rate) {
            histogram.push((last_rate.unwrap_or(rate) as f64 / 1000.0, bin));
            bin = 0;
        }
        bin += size;
        last_rate = Some(rate);
    }
    if let Some(rate) = last_rate {
        histogram.push((rate as f64 / 1000.0, bin));
    }
    histogram
}

/// `GET /mempool/recent`: the last `MEMPOOL_RECENT` transactions to enter
/// the pool, newest first, in esplora's short form.
pub async fn mempool_recent(State(state): State<ApiState>) -> Result<Response, ApiError> {
    state
        .pool_json(
            "/mempool/recent",
            |_, pool| {
                // The newest few are picked under the lock (a selection, not
                // a sort of the pool); their JSON is built after it.
                let mut entries: Vec<_> = pool.entries().collect();
                let count = super::explorer::MEMPOOL_RECENT.min(entries.len());
                if count > 0 {
                    entries.select_nth_unstable_by_key(count - 1, |e| {
                        std::cmp::Reverse((e.time, e.txid))
                    });
                }
                entries.truncate(count);
                Ok(entries
                    .into_iter()
                    .map(|e| {
                        let value: u64 = e.tx.outputs.iter().map(|o| o.amount.units()).sum();
                        (e.time, e.txid, e.fee.units(), e.size, value)
                    })
                    .collect::<Vec<_>>())
            },
            |mut entries| {
                entries.sort_by_key(|e| std::cmp::Reverse((e.0, e.1)));
                Ok(json!(entries
                    .iter()
                    .map(|(_, txid, fee, size, value)| json!({
                        "txid": txid,
                        "fee": fee,
                        "vsize": size,
                        "value": value,
                    }))
                    .collect::<Vec<_>>()))
            },
        )
        .await
}

pub async fn mempool_txids(State(state): State<ApiState>) -> Result<Response, ApiError> {
    state
        .pool_json(
            "/mempool/txids",
            |_, pool| Ok(pool.entries().map(|e| e.txid).collect::<Vec<_>>()),
            // Written from the txids themselves: a JSON value of a full
            // pool's 300 000 strings took about 35 MB while it was built.
            |mut txids| {
                txids.sort_unstable();
                Ok(txids)
            },
        )
        .await
}

/// Runs `step` on the pool against a view of the chain, or, when no view
/// meets the pool's tip (a catch-up writes the store in batches, so views
/// trail the chain), on the chain task against its own tip. `permit` is
/// held by the work.
async fn judge<T: Send + 'static>(
    state: &ApiState,
    permit: &std::sync::Arc<tokio::sync::OwnedSemaphorePermit>,
    step: impl FnOnce(
            &dyn crate::mempool::TipState,
            &mut crate::mempool::Mempool,
        ) -> Result<T, MempoolError>
        + Send
        + Clone
        + 'static,
) -> Result<Result<T, MempoolError>, ApiError> {
    let held = permit.clone();
    let first = step.clone();
    let judged = state
        .with_state(move |chain, pool| {
            let _held = held;
            Ok(first(chain, pool))
        })
        .await?;
    Ok(match judged {
        Err(MempoolError::TipMoved) => {
            let (mempool, held) = (state.mempool.clone(), permit.clone());
            state
                .chain
                .call_async(move |chain| {
                    let _held = held;
                    step(chain, &mut mempool.lock().expect("mempool lock"))
                })
                .await
                .map_err(ApiError::stopped)?
        }
        other => other,
    })
}

/// `POST /tx` with the transaction's hex as the body: answers the txid, or
/// the mempool's rejection with 400.
pub async fn submit_tx(
    State(state): State<ApiState>,
    body: Result<String, axum::extract::rejection::StringRejection>,
) -> Result<String, ApiError> {
    let body = body.map_err(ApiError::from_rejection)?;
    let bytes = hex::decode(body.trim())
        .map_err(|e| ApiError::bad_request("invalid-hex", format!("body is not hex: {e}")))?;
    let tx = Transaction::from_bytes(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid-transaction",
            format!("transaction does not decode: {e}"),
        )
    })?;
    // Held by the work itself (see `submit_permit`): on the blocking
    // threads, and on the chain task if it judges the transaction.
    let permit = std::sync::Arc::new(
        state
            .pool_views
            .submit_permit(super::pool_views::Submission::Transaction)
            .await?,
    );
    // In three steps, so that the pool's lock (which relay and the chain
    // task take too) is held for the checks and the insertion but not for
    // the signature checks, hundreds for a transaction of 100 kB: the
    // checks and the outputs it spends, the signatures with no lock held,
    // then the insertion (its checks run again, the pool having moved).
    let attempt = tx.clone();
    let spent = judge(&state, &permit, move |chain, pool| {
        pool.prepare(chain, &attempt)
    })
    .await?;
    let result = match spent {
        Ok(spent) => {
            let held = permit.clone();
            let (checked, spent) = tokio::task::spawn_blocking(move || {
                let _held = held;
                let checked = crate::consensus::validation::verify_tx_signatures(&tx, &spent);
                (checked.map(|()| tx), spent)
            })
            .await?;
            match checked {
                Ok(tx) => {
                    judge(&state, &permit, move |chain, pool| {
                        pool.accept_verified(chain, tx, &spent)
                    })
                    .await?
                }
                Err(e) => Err(MempoolError::Invalid(e)),
            }
        }
        Err(e) => Err(e),
    };
    let txid = result.map_err(|e| match e {
        MempoolError::TipMoved => ApiError::unavailable(e.code(), e.to_string()),
        // The node's own failure, not the transaction's: logged, not told.
        MempoolError::Store(_) => ApiError::internal(e),
        e => ApiError::bad_request(e.code(), e.to_string()),
    })?;
    state.network.chain_changed().await;
    Ok(txid.to_string())
}

pub async fn get_tx(
    State(state): State<ApiState>,
    Path(txid): Path<String>,
) -> Result<Response, ApiError> {
    let txid = parse_txid(&txid)?;
    state
        .with_chain_reads(move |chain, pool| {
            let network = chain.params().network;
            // The pool, locked only to copy its entry out.
            let pending = pool.lock().get(&txid).map(PendingTx::of);
            let pending = pending.map(|pending| serde_json::to_vec(&pending.json(network)));
            let body = match pending {
                Some(body) => body,
                None => {
                    let location = chain.store().tx_location(&txid)?.ok_or_else(|| {
                        ApiError::not_found(format!("transaction {txid} not found"))
                    })?;
                    // The transaction alone: its block is walked, not decoded.
                    let found = chain
                        .store()
                        .block_transaction(&location.block, location.position as usize)?
                        .filter(|found| found.tx.txid() == txid)
                        .ok_or_else(|| {
                            ApiError::internal(format!(
                                "tx index of {txid} is out of step with its block"
                            ))
                        })?;
                    serde_json::to_vec(&TxJson {
                        network,
                        tx: &found.tx,
                        spent: &found.spent,
                        status: TxStatus::Confirmed {
                            height: location.height,
                            block: location.block,
                            time: found.header.time,
                        },
                        first_seen: None,
                    })
                }
            };
            Ok(json_bytes(body.map_err(ApiError::internal)?))
        })
        .await
}

/// The answer of `GET /address/{address}`. Typed rather than built with
/// `json!`: the confirmed sums are u128 and are written as plain JSON
/// numbers, which `serde_json::Value` cannot hold past u64.
#[derive(serde::Serialize)]
pub struct AddressInfo {
    address: String,
    chain_stats: crate::store::schema::AddressStats,
    mempool_stats: crate::mempool::PendingStats,
    balance: u64,
}

/// `GET /address/{address}`: esplora's shape (`chain_stats`,
/// `mempool_stats`) plus `balance`, the confirmed balance in base units.
pub async fn address(
    State(state): State<ApiState>,
    Path(address): Path<String>,
) -> Result<Json<AddressInfo>, ApiError> {
    // Two point reads and the address's own pool entries: cheaper than a
    // hop to the blocking pool. A Base58Check string that parses is the one
    // its payload encodes to (one '1' per leading zero byte, then the digits
    // without leading zeros), so the answer echoes it rather than encoding
    // it again (a double SHA-256 and Base58).
    let echo = address.clone();
    state
        .with_state_quick(
            move |chain| {
                let parsed = super::explorer::address_of(chain, &address)?;
                let stats = chain.store().address_stats(&parsed.hash)?;
                Ok((parsed, stats))
            },
            move |_, pool, (parsed, stats)| {
                Ok(Json(AddressInfo {
                    address: echo,
                    chain_stats: stats,
                    mempool_stats: pool.address_stats(&parsed.hash),
                    balance: stats.balance(),
                }))
            },
        )
        .await
}

/// `GET /metrics` in Prometheus' text format.
pub async fn metrics(
    State(state): State<ApiState>,
) -> Result<([(axum::http::header::HeaderName, &'static str); 1], String), ApiError> {
    let network = state.network.status();
    let hashrate = state.hashrate.load(std::sync::atomic::Ordering::Relaxed);
    let latency = state.latency.clone();
    let mirror = state.mirror.clone();
    let events = state.events.clone();
    let mempool = state.mempool.clone();
    let answer_bytes = state.pool_views.answers.held();
    let body = state
        .with_view(move |chain| {
            use std::fmt::Write;
            // The pool, locked for three numbers alone.
            let (pool_len, pool_bytes, pool_usage) = {
                let pool = mempool.lock().expect("mempool lock");
                (pool.len(), pool.bytes(), pool.usage())
            };
            let tip = chain.tip();
            let mirror = mirror.map(|m| m.lock().expect("mirror status lock").clone().at_tip(tip.height));
            let mut out = String::new();
            let mut gauge = |name: &str, help: &str, value: f64| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
            };
            gauge("chaincore_block_height", "Height of the active chain's tip.", f64::from(tip.height));
            gauge("chaincore_header_height", "Height of the best known header.", f64::from(chain.best_header().1));
            gauge("chaincore_sync_percent", "Block sync progress.", network.sync.percent);
            gauge("chaincore_peers", "Peers that completed the handshake.", network.peers.iter().filter(|p| p.ready).count() as f64);
            gauge("chaincore_mempool_transactions", "Transactions in the mempool.", pool_len as f64);
            gauge("chaincore_mempool_bytes", "Bytes of the mempool's transactions.", pool_bytes as f64);
            gauge("chaincore_mempool_usage_bytes", "Heap bytes of the mempool's entries and indexes (what --mempool-max-mb bounds).", pool_usage as f64);
            gauge("chaincore_orphan_blocks", "Blocks waiting for their parent.", chain.orphan_count() as f64);
            let cache = chain.published().cache;
            gauge("chaincore_dbcache_bytes", "Bytes held by the chain state write-back cache (--dbcache-mb).", cache.bytes as f64);
            gauge("chaincore_dbcache_blocks", "Blocks connected since the cache was last written to RocksDB.", f64::from(cache.blocks));
            gauge("chaincore_flushed_height", "Height of the tip on disk, which REST answers from.", f64::from(cache.flushed_height));
            gauge("chaincore_utxo_count", "Unspent outputs.", tip.utxo_count as f64);
            gauge("chaincore_utxo_total_units", "Sum of all unspent outputs, base units.", tip.utxo_total as f64);
            gauge("chaincore_event_subscribers", "Subscribers of the event stream (GET /events).", events.subscribers() as f64);
            gauge("chaincore_rest_paced_answer_bytes", "Bytes of large REST answers not yet taken by their clients.", answer_bytes as f64);
            gauge("chaincore_mining_hashrate", "Hashes per second of the node's own miner (0: not mining).", hashrate as f64);
            if let Some(m) = &mirror {
                gauge("chaincore_mirror_height", "Height of the PostgreSQL mirror's watermark (-1: none).", m.height.map_or(-1.0, f64::from));
                gauge("chaincore_mirror_lag_blocks", "Blocks the mirror is behind the tip.", f64::from(m.lag));
                gauge("chaincore_mirror_connected", "Whether the mirror is connected to PostgreSQL.", f64::from(u8::from(m.connected)));
            }
            let _ = writeln!(out, "# HELP chaincore_event_subscribers_cut_off_total Event stream subscribers cut off for falling behind.\n# TYPE chaincore_event_subscribers_cut_off_total counter\nchaincore_event_subscribers_cut_off_total {}", events.cut_off());
            let _ = writeln!(out, "# HELP chaincore_misbehaviour_total Peers disconnected for a protocol violation, by reason.\n# TYPE chaincore_misbehaviour_total counter");
            let mut reasons: Vec<_> = network.counters.misbehaviour.iter().collect();
            reasons.sort();
            for (reason, count) in reasons {
                let _ = writeln!(out, "chaincore_misbehaviour_total{{reason=\"{reason}\"}} {count}");
            }
            let _ = writeln!(out, "# HELP chaincore_unknown_commands_total Frames with an unknown command (ignored).\n# TYPE chaincore_unknown_commands_total counter\nchaincore_unknown_commands_total {}", network.counters.unknown_commands);
            let _ = writeln!(out, "# HELP chaincore_addr_rate_limited_total Addresses of addr messages dropped by the per-peer rate limit.\n# TYPE chaincore_addr_rate_limited_total counter\nchaincore_addr_rate_limited_total {}", network.counters.addr_rate_limited);
            let _ = writeln!(out, "# HELP chaincore_inbound_evictions_total Inbound peers disconnected to make room for a newcomer.\n# TYPE chaincore_inbound_evictions_total counter\nchaincore_inbound_evictions_total {}", network.counters.inbound_evictions);
            write_traffic(&mut out, &crate::p2p::traffic::TRAFFIC.snapshot());
            write_latency(&mut out, &latency.snapshot());
            Ok(out)
        })
        .await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    ))
}

/// P2P messages and bytes by command and direction.
fn write_traffic(
    out: &mut String,
    table: &std::collections::BTreeMap<&'static str, crate::p2p::traffic::CommandTraffic>,
) {
    use std::fmt::Write;
    for (name, help, bytes) in [
        (
            "chaincore_p2p_messages_total",
            "P2P messages by command and direction.",
            false,
        ),
        (
            "chaincore_p2p_bytes_total",
            "P2P frame bytes (header and payload) by command and direction.",
            true,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (command, traffic) in table {
            for (direction, counts) in [("in", traffic.received), ("out", traffic.sent)] {
                let value = if bytes { counts.bytes } else { counts.messages };
                let _ = writeln!(
                    out,
                    "{name}{{command=\"{command}\",direction=\"{direction}\"}} {value}"
                );
            }
        }
    }
}

/// REST latency histograms by route.
fn write_latency(
    out: &mut String,
    table: &std::collections::BTreeMap<(String, String), super::latency::RouteLatency>,
) {
    use std::fmt::Write;
    let name = "chaincore_api_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} REST request latency by route.\n# TYPE {name} histogram"
    );
    for ((method, route), h) in table {
        let labels = format!("method=\"{method}\",route=\"{route}\"");
        for (count, bound) in h.buckets.iter().zip(super::latency::LATENCY_BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_secs);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
    }
}

/// Confirmation targets answered by `/fee-estimates`, in blocks.
pub const FEE_TARGETS: [usize; 7] = [1, 2, 3, 6, 12, 25, 144];

/// `GET /fee-estimates`: for each target, the fee rate (base units per
/// byte) that places a transaction within that many blocks' worth of the
/// mempool's best-paying bytes; the relay minimum when the pool is smaller.
pub async fn fee_estimates(State(state): State<ApiState>) -> Result<Response, ApiError> {
    state
        .pool_json(
            "/fee-estimates",
            |_, pool| {
                Ok(pool
                    .entries()
                    .map(|e| (e.fee_rate(), e.size))
                    .collect::<Vec<(u64, usize)>>())
            },
            |mut rates| {
                rates.sort_by_key(|r| std::cmp::Reverse(r.0));
                let minimum = crate::mempool::MIN_RELAY_FEE_RATE as f64 / 1000.0;
                let mut out = serde_json::Map::new();
                for target in FEE_TARGETS {
                    let room = target * crate::mempool::Mempool::block_space();
                    let mut used = 0usize;
                    let mut rate = minimum;
                    for (r, size) in &rates {
                        used += size;
                        if used > room {
                            // Beat the last transaction that still fits.
                            rate = (*r as f64 / 1000.0).max(minimum) + 0.001;
                            break;
                        }
                    }
                    out.insert(target.to_string(), json!(rate));
                }
                Ok(Value::Object(out))
            },
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// esplora's binning: bins close after more than
    /// `FEE_HISTOGRAM_BIN_BYTES`, never between two entries of one rate,
    /// and carry their lowest rate.
    #[test]
    fn the_fee_histogram_bins_by_size_as_esploras() {
        let entries = vec![
            (5_000, 30_000),
            (9_000, 30_000),
            (5_000, 30_000),
            (2_000, 10_000),
            (1_000, 60_000),
        ];
        assert_eq!(
            fee_histogram(entries.into_iter()),
            vec![(5.0, 90_000), (1.0, 70_000)]
        );
        assert!(fee_histogram(std::iter::empty()).is_empty());
        let many = (0..10_000u64).map(|r| (1_000 + r, 250));
        assert_eq!(
            fee_histogram(many).len(),
            10_000 * 250 / (FEE_HISTOGRAM_BIN_BYTES + 250) + 1
        );
    }
}

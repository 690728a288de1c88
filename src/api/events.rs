//! `GET /events`: the live event stream as Server-Sent Events (see
//! `crate::events` for what is sent and how a resume works).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::extract::Query;
use super::{ApiError, ApiState, PoolGate, PoolViews};
use crate::chain::ChainReader;
use crate::chain::ChainView;
use crate::consensus::address::{Address, AddressError};
use crate::events::{
    catch_up, pool_events, Balances, CatchUpError, Closed, EventId, HubMessage, Outbox, Pass,
    StreamEvent, Watch, MAX_CATCH_UP_BLOCKS, MAX_QUEUED_EVENTS, MAX_WATCHED_ADDRESSES,
    SLOW_SUBSCRIBER_GRACE,
};

#[derive(Deserialize)]
pub struct EventsQuery {
    /// Comma-separated addresses to watch.
    addresses: Option<String>,
    /// Replay the chain's events from this height (a `Last-Event-ID`
    /// header wins: a browser reconnecting keeps the URL).
    from_height: Option<u32>,
    /// Send every mempool addition and removal (default true).
    mempool: Option<bool>,
}

impl From<CatchUpError> for ApiError {
    fn from(e: CatchUpError) -> Self {
        match e {
            CatchUpError::UnknownBlock(_) | CatchUpError::WrongHeight { .. } => {
                ApiError::bad_request("unknown-event-id", e.to_string())
            }
            CatchUpError::TooFarBehind { .. } | CatchUpError::OffTheChain { .. } => {
                ApiError::bad_request("replay-too-long", e.to_string())
            }
            CatchUpError::Chain(e) => ApiError::internal(e),
            CatchUpError::Abandoned => ApiError::unavailable("abandoned", e.to_string()),
        }
    }
}

fn parse_watch(state: &ApiState, q: &EventsQuery) -> Result<Watch, ApiError> {
    let network = state.reader.params().network;
    let listed: Vec<&str> = q
        .addresses
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    if listed.len() > MAX_WATCHED_ADDRESSES {
        return Err(ApiError::bad_request(
            "too-many-addresses",
            format!(
                "{} addresses given, at most {MAX_WATCHED_ADDRESSES} per subscription",
                listed.len()
            ),
        ));
    }
    let mut addresses = BTreeSet::new();
    for a in listed {
        let address = Address::parse(a, network).map_err(|e| {
            let code = match e {
                AddressError::WrongNetwork { .. } => "wrong-network",
                AddressError::BadChecksum { .. } => "bad-checksum",
                _ => "invalid-address",
            };
            ApiError::bad_request(code, e.to_string())
        })?;
        addresses.insert(address.hash);
    }
    Ok(Watch {
        network,
        addresses,
        mempool: q.mempool.unwrap_or(true),
    })
}

pub async fn events(
    State(state): State<ApiState>,
    axum::extract::ConnectInfo(client): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let watch = parse_watch(&state, &q)?;
    let resume: Option<EventId> = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid-event-id",
                        format!(
                            "Last-Event-ID {} is not HEIGHT:BLOCK_HASH:SEQ (SEQ a number or \"end\")",
                            super::error::quoted(&String::from_utf8_lossy(value.as_bytes()))
                        ),
                    )
                })?,
        ),
    };
    if q.from_height == Some(0) {
        return Err(ApiError::bad_request(
            "invalid-query",
            "from_height starts at 1 (the first block after genesis)",
        ));
    }
    // Subscribe before the first view: whatever happens after it is either
    // in the view or announced to this receiver.
    // The client's share first (loopback has none): no client takes every
    // subscriber slot.
    let client_slot = state
        .pool_views
        .subscribers
        .take(client.ip(), crate::events::MAX_SUBSCRIBERS)
        .ok_or_else(|| {
            ApiError::unavailable(
                "too-many-subscribers",
                format!(
                    "this client holds {} event streams, the most one client may (or other clients hold theirs)",
                    super::pool_views::MAX_SUBSCRIBERS_PER_CLIENT
                ),
            )
        })?;
    let (hub, slot) = state.events.subscribe().ok_or_else(|| {
        ApiError::unavailable(
            "too-many-subscribers",
            format!(
                "{} event stream subscribers are connected, the most this node serves",
                crate::events::MAX_SUBSCRIBERS
            ),
        )
    })?;
    let from_height = q.from_height;
    let first_watch = watch.clone();
    // A replay's first pass may read up to `MAX_CATCH_UP_BLOCKS` blocks:
    // it waits for a replay permit (503 when it stays taken), one replay
    // per client at a time, so reconnecting clients can neither hold every
    // core nor the permits wallets' reads take, nor queue ahead of other
    // clients' replays. A stream from the tip, or a reconnect whose last
    // event is the tip's, replays nothing (its first pass reads the
    // watched addresses' balances): it takes a permit of the reads
    // wallets make, never waiting behind replays.
    let tip_hash = state.reader.published().tip.0;
    let replaying = from_height.is_some() || resume.is_some_and(|id| id.hash != tip_hash);
    let replay_slot = if replaying {
        // The tabs of one browser, or the users behind one address, that
        // reconnect at once take turns, waiting as for a permit.
        let slot = state
            .pool_views
            .replayers
            .take_within(client.ip(), crate::events::MAX_SUBSCRIBERS, super::pool_views::WHOLE_POOL_WAIT)
            .await
            .ok_or_else(|| {
                ApiError::unavailable(
                    "busy",
                    format!(
                        "this client's other event-stream replays ({} at a time) took too long; retry shortly",
                        super::pool_views::MAX_REPLAYS_PER_CLIENT
                    ),
                )
            })?;
        Some(slot)
    } else {
        None
    };
    // Set when this request ends, answered or not (its client gone, or the
    // request timeout): a first pass still reading then stops at its next
    // block and frees its permit.
    let replay_abandoned = Arc::new(AtomicBool::new(false));
    let _abandon_on_drop = SetOnDrop(replay_abandoned.clone());
    let first_pass = move |view: &ChainView, _: &PoolGate<'_>| {
        let tip = view.tip();
        let start = match (resume, from_height) {
            (Some(id), _) => id,
            (None, Some(height)) => {
                if height > tip.height + 1 {
                    return Err(ApiError::bad_request(
                        "invalid-query",
                        format!(
                            "from_height {height} is above the tip's height {} + 1",
                            tip.height
                        ),
                    ));
                }
                let below = view.hash_at(height - 1)?.ok_or_else(|| {
                    ApiError::internal(format!("no active block at height {}", height - 1))
                })?;
                EventId::end_of(height - 1, below)
            }
            (None, None) => EventId::end_of(tip.height, tip.hash),
        };
        let behind = tip.height.saturating_sub(start.height);
        if behind > MAX_CATCH_UP_BLOCKS {
            return Err(CatchUpError::TooFarBehind {
                from: start.height,
                blocks: behind,
                limit: MAX_CATCH_UP_BLOCKS,
            }
            .into());
        }
        // The first pass here, so that a position the node cannot
        // follow is a 400; the rest of the replay is the subscriber's,
        // one pass at a time (`MAX_BLOCKS_PER_PASS`).
        let pass = catch_up(view, &first_watch, start, None, &replay_abandoned)?;
        Ok((start, pass))
    };
    let (start, pass) = if replaying {
        state.with_replay_reads(first_pass).await?
    } else {
        state.with_chain_reads(first_pass).await?
    };
    drop(replay_slot);
    let Pass {
        events: replayed,
        position,
        balances,
    } = pass;

    let (outbox, queue) = Outbox::new(MAX_QUEUED_EVENTS, SLOW_SUBSCRIBER_GRACE);
    let close_reason = Arc::new(Mutex::new(None::<String>));
    let ready = StreamEvent {
        name: "ready",
        id: Some(start),
        data: json!({
            "position": start.to_string(),
            "addresses": watch.addresses.iter()
                .map(|o| Address::new(watch.network, *o).to_string())
                .collect::<Vec<_>>(),
            "mempool": watch.mempool,
        }),
    };
    let subscriber = Subscriber {
        reader: state.reader.clone(),
        reads: state.pool_views.clone(),
        hub: state.events.clone(),
        watch,
        position,
        balances,
        outbox,
        close_reason: close_reason.clone(),
    };
    tokio::spawn(async move {
        let _slot = (slot, client_slot);
        subscriber.run(hub, ready, replayed).await
    });

    let stream = futures_util::stream::unfold(
        (queue, close_reason, false),
        |(mut queue, close_reason, done)| async move {
            if done {
                return None;
            }
            match queue.recv().await {
                Some(event) => Some((
                    Ok::<_, Infallible>(sse_event(&event)),
                    (queue, close_reason, false),
                )),
                None => {
                    let reason = close_reason.lock().expect("close reason").take()?;
                    let last = sse_event(&StreamEvent {
                        name: "close",
                        id: None,
                        data: json!({ "reason": reason }),
                    });
                    Some((Ok(last), (queue, close_reason, true)))
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default().interval(state.keep_alive))
        .into_response())
}

fn sse_event(event: &StreamEvent) -> Event {
    let mut out = Event::default()
        .event(event.name)
        .data(event.data.to_string());
    if let Some(id) = event.id {
        out = out.id(id.to_string());
    }
    out
}

/// One subscriber's task: follows the chain from its position and the
/// hub's mempool messages, into its bounded queue.
struct Subscriber {
    reader: ChainReader,
    /// Whose permits the reading of new blocks takes, as the REST routes
    /// that read blocks do: sixty-four subscribers watching an address of
    /// every block cannot decode each block sixty-four times at once.
    reads: Arc<PoolViews>,
    hub: crate::events::EventHub,
    watch: Watch,
    position: EventId,
    /// The watched addresses' balances at `position`, for the next pass.
    balances: Option<Balances>,
    outbox: Outbox,
    close_reason: Arc<Mutex<Option<String>>>,
}

impl Subscriber {
    async fn run(
        mut self,
        mut hub: tokio::sync::broadcast::Receiver<HubMessage>,
        ready: StreamEvent,
        replayed: Vec<StreamEvent>,
    ) {
        let result: Result<(), Closed> = async {
            self.outbox.send(ready).await?;
            for event in replayed {
                self.outbox.send(event).await?;
            }
            // The rest of a replay, if the first pass did not reach the tip.
            self.follow_chain().await?;
            loop {
                let message = tokio::select! {
                    message = hub.recv() => message,
                    _ = self.outbox.closed() => return Err(Closed::Gone),
                };
                match message {
                    Ok(HubMessage::ChainMoved) => self.follow_chain().await?,
                    Ok(HubMessage::Pool(event)) => {
                        for event in pool_events(&event, &self.watch) {
                            self.outbox.send(event).await?;
                        }
                    }
                    Ok(HubMessage::PoolGap(missed)) => {
                        let notice = StreamEvent {
                            name: "mempool-gap",
                            id: None,
                            data: json!({ "missed": missed }),
                        };
                        self.outbox.send(notice).await?;
                    }
                    Err(RecvError::Lagged(missed)) => {
                        return Err(Closed::CutOff(format!(
                            "slow subscriber: missed {missed} mempool events"
                        )))
                    }
                    Err(RecvError::Closed) => {
                        return Err(Closed::CutOff("the node is shutting down".into()))
                    }
                }
            }
        }
        .await;
        if let Err(Closed::CutOff(reason)) = result {
            if reason.starts_with("slow") {
                self.hub.record_cut_off();
            }
            tracing::debug!(%reason, "event stream subscriber closed");
            *self.close_reason.lock().expect("close reason") = Some(reason);
        }
        // Dropping the outbox ends the stream (after the close event).
    }

    /// Sends the blocks between the position and the tip of a fresh view.
    async fn follow_chain(&mut self) -> Result<(), Closed> {
        loop {
            let reader = self.reader.clone();
            let watch = self.watch.clone();
            let position = self.position;
            let balances = self.balances.take();
            // A permit only for reading blocks: a subscriber watching no
            // address reads index entries alone. Waited for while watching
            // for the client to leave.
            let permit = if watch.addresses.is_empty() {
                None
            } else {
                tokio::select! {
                    permit = self.reads.chain_read_permit() => Some(permit),
                    _ = self.outbox.closed() => return Err(Closed::Gone),
                }
            };
            // The permit goes with the reading and is released when it
            // ends, before the events are sent: a reader slow to take them
            // holds none.
            let read = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let view = reader.view()?;
                // Ten blocks at most, from known balances: not worth
                // stopping midway.
                let pass = catch_up(
                    &view,
                    &watch,
                    position,
                    balances.as_ref(),
                    &AtomicBool::new(false),
                )?;
                Ok::<_, CatchUpError>((pass, view.height()))
            })
            .await;
            let (
                Pass {
                    events,
                    position,
                    balances,
                },
                tip_height,
            ) = match read {
                Ok(Ok(read)) => read,
                // A position a deep reorganisation left far off the
                // active chain: the client's to hear, not a failure.
                Ok(Err(e @ CatchUpError::OffTheChain { .. })) => {
                    return Err(Closed::CutOff(e.to_string()))
                }
                // The cause is the node's to log, not the client's to read.
                Ok(Err(e)) => return Err(read_failed(e)),
                Err(e) => return Err(read_failed(e)),
            };
            for event in events {
                self.outbox.send(event).await?;
            }
            let moved = position != self.position;
            self.position = position;
            self.balances = balances;
            if !moved || position.height >= tip_height {
                return Ok(());
            }
        }
    }
}

/// A subscriber cut off because the node failed to read its chain: the
/// cause goes to the log, the client is told that it happened.
fn read_failed(error: impl std::fmt::Display) -> Closed {
    tracing::error!(%error, "an event stream's reading of the chain failed");
    Closed::CutOff("the node failed to read its chain (see its log)".into())
}

/// Sets its flag when dropped: with the future that owns it, when the
/// request ends.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

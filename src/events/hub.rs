//! The event hub: one task that reads the chain's and the mempool's events
//! and fans out a message per change to the subscribers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::chain::ChainEvent;
use crate::mempool::PoolEvent;

/// Most concurrent subscribers of the event stream (more get 503): each
/// holds a connection, a queue of up to `MAX_QUEUED_EVENTS` events and
/// reads every new block once from the store.
pub const MAX_SUBSCRIBERS: usize = 64;
/// Capacity of the hub's channel to subscribers. A subscriber whose task
/// falls this many messages behind (its queue full all that time) has
/// lost mempool events it cannot get back and is cut off; chain events
/// are never lost (it resumes from the store).
pub const HUB_CHANNEL_CAPACITY: usize = 1024;

/// What the hub tells every subscriber.
#[derive(Debug, Clone)]
pub enum HubMessage {
    /// The chain moved (or the hub missed some of its events): read a view
    /// and catch up from your position.
    ChainMoved,
    /// A transaction entered or left the mempool.
    Pool(Arc<PoolEvent>),
    /// The hub missed this many mempool events (the pool's channel lagged).
    PoolGap(u64),
}

/// The subscribers' side of the hub. Cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    sender: broadcast::Sender<HubMessage>,
    slots: Arc<Semaphore>,
    cut_off: Arc<AtomicU64>,
}

impl EventHub {
    /// Starts the hub task on the current runtime. It ends when the chain's
    /// channel closes.
    pub fn start(
        mut chain_events: broadcast::Receiver<ChainEvent>,
        mut pool_events: broadcast::Receiver<Arc<PoolEvent>>,
    ) -> (EventHub, tokio::task::JoinHandle<()>) {
        let (sender, _) = broadcast::channel(HUB_CHANNEL_CAPACITY);
        let hub = EventHub {
            sender: sender.clone(),
            slots: Arc::new(Semaphore::new(MAX_SUBSCRIBERS)),
            cut_off: Arc::new(AtomicU64::new(0)),
        };
        let task = tokio::spawn(async move {
            let mut pool_open = true;
            loop {
                let message = tokio::select! {
                    event = chain_events.recv() => match event {
                        Ok(_) => HubMessage::ChainMoved,
                        Err(RecvError::Lagged(missed)) => {
                            // Subscribers read the store, which has every
                            // block: one nudge covers the missed events.
                            tracing::debug!(missed, "event hub lagged behind the chain");
                            HubMessage::ChainMoved
                        }
                        Err(RecvError::Closed) => break,
                    },
                    event = pool_events.recv(), if pool_open => match event {
                        Ok(event) => HubMessage::Pool(event),
                        Err(RecvError::Lagged(missed)) => HubMessage::PoolGap(missed),
                        Err(RecvError::Closed) => {
                            pool_open = false;
                            continue;
                        }
                    },
                };
                // No subscriber is no error.
                let _ = sender.send(message);
            }
        });
        (hub, task)
    }

    /// A subscription: the hub's messages from now on and a slot, or `None`
    /// when `MAX_SUBSCRIBERS` are connected.
    pub fn subscribe(&self) -> Option<(broadcast::Receiver<HubMessage>, OwnedSemaphorePermit)> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some((self.sender.subscribe(), permit))
    }

    /// Subscribers connected now.
    pub fn subscribers(&self) -> usize {
        MAX_SUBSCRIBERS - self.slots.available_permits()
    }

    /// Counts a subscriber cut off for falling behind.
    pub fn record_cut_off(&self) {
        self.cut_off.fetch_add(1, Ordering::Relaxed);
    }

    /// Subscribers cut off since the node started.
    pub fn cut_off(&self) -> u64 {
        self.cut_off.load(Ordering::Relaxed)
    }
}

//! The chain task: the thread that validates and connects the blocks peers
//! send, so the protocol thread never waits for a block to connect.
//!
//! The protocol hands each block over (`Action::ProcessBlock`) with the
//! inbound permit it arrived under, so the queue is bounded in bytes by the
//! same budgets as every received message (`PEER_INBOUND_QUEUE_BYTES` per
//! peer, `INBOUND_QUEUE_BYTES` for the node): a peer whose blocks wait here
//! stops being read, as if they still waited in its inbound queue. The task
//! stores the block, then connects one block per lock of the chain
//! (`Chain::activate_step`), so the protocol thread, the producer and the
//! REST mining routes get the chain between two blocks of a long catch-up
//! or a deep reorganisation; readers never need the lock at all. Each
//! outcome goes back to the protocol thread as an event.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::connection::InboundPermit;
use super::protocol::PeerId;
use super::Event;
use crate::chain::{ActivationStep, Chain};
use crate::consensus::block::Block;

/// Pause between two block steps, in which the threads waiting for the
/// chain's lock (the protocol thread above all) get it, taken once
/// `STEP_PAUSE_EVERY` has gone by in steps: at most about 5% of a catch-up
/// of small blocks, and a waiter gets the lock within a few milliseconds.
pub const STEP_PAUSE: std::time::Duration = std::time::Duration::from_micros(100);
pub const STEP_PAUSE_EVERY: std::time::Duration = std::time::Duration::from_millis(2);

/// A block for the chain task.
pub struct BlockJob {
    pub peer: PeerId,
    pub block: Arc<Block>,
    pub requested: bool,
    /// The inbound budget the block still holds, released once it is stored.
    pub permit: Option<InboundPermit>,
}

/// The protocol thread's end of the queue.
pub struct ChainTask {
    jobs: Sender<BlockJob>,
    stopping: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl ChainTask {
    /// Starts the thread; outcomes go to `events` as
    /// `Event::BlockProcessed`.
    pub fn start(chain: Arc<Mutex<Chain>>, events: mpsc::Sender<Event>) -> std::io::Result<Self> {
        let (jobs, queue) = channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("chain".into())
            // Normal priority: this thread holds the chain's lock while it
            // connects a block, and the protocol thread waits for that lock;
            // only the signature checks it hands to rayon's pool run lower.
            .spawn(move || run(chain, queue, events, stop))?;
        Ok(ChainTask {
            jobs,
            stopping,
            thread,
        })
    }

    pub fn submit(&self, job: BlockJob) {
        // The thread only stops once this sender is dropped.
        let _ = self.jobs.send(job);
    }

    /// Stops after the block step under way: queued blocks are dropped
    /// (asked for again after a restart), stored ones connect at the next
    /// start (`Chain::open`), so a shutdown never waits for a backlog. Call
    /// once the receiver of the events is dropped, so the task never waits
    /// on a full channel.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::Relaxed);
        drop(self.jobs);
        let _ = self.thread.join();
    }
}

fn run(
    chain: Arc<Mutex<Chain>>,
    queue: Receiver<BlockJob>,
    events: mpsc::Sender<Event>,
    stopping: Arc<AtomicBool>,
) {
    while let Ok(job) = queue.recv() {
        if stopping.load(Ordering::Relaxed) {
            continue;
        }
        let hash = job.block.hash();
        let outcome = process(
            &chain,
            job.block,
            job.peer,
            job.requested,
            job.permit,
            &stopping,
        );
        let event = Event::BlockProcessed {
            peer: job.peer,
            hash,
            outcome: outcome.map_err(|e| e.to_string()),
        };
        if events.blocking_send(event).is_err() {
            // The protocol thread has stopped: finish storing what is
            // queued, tell no one.
            continue;
        }
    }
}

/// `Chain::process_new_block`, with the lock taken once to store and once
/// per block connected or disconnected.
fn process(
    chain: &Mutex<Chain>,
    block: Arc<Block>,
    peer: PeerId,
    requested: bool,
    permit: Option<InboundPermit>,
    stopping: &AtomicBool,
) -> Result<crate::chain::BlockOutcome, crate::chain::ChainError> {
    let accepted =
        chain
            .lock()
            .expect("chain lock")
            .accept_new_block(block, Some(peer), requested)?;
    drop(permit);
    let mut failures = Vec::new();
    let mut since_pause = std::time::Instant::now();
    while !stopping.load(Ordering::Relaxed) {
        match chain.lock().expect("chain lock").activate_step()? {
            ActivationStep::Done => break,
            ActivationStep::Failed(hash, error) => failures.push((hash, error)),
            ActivationStep::Connected(_) | ActivationStep::Disconnected(_) => {}
        }
        // The chain's lock is not fair: taken again at once, step after
        // step, it would keep the protocol thread waiting through a whole
        // reorganisation (a ping waited 77 to 360 ms during a 100-block one
        // on a 2-core machine; with the pause, under 10 ms).
        if since_pause.elapsed() >= STEP_PAUSE_EVERY {
            std::thread::sleep(STEP_PAUSE);
            since_pause = std::time::Instant::now();
        }
    }
    Ok(chain
        .lock()
        .expect("chain lock")
        .final_outcome(accepted, &failures))
}

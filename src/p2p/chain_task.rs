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

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::connection::InboundPermit;
use super::protocol::PeerId;
use super::Event;
use crate::chain::{ActivationStep, Chain};
use crate::consensus::block::Block;

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
    thread: std::thread::JoinHandle<()>,
}

impl ChainTask {
    /// Starts the thread; outcomes go to `events` as
    /// `Event::BlockProcessed`.
    pub fn start(chain: Arc<Mutex<Chain>>, events: mpsc::Sender<Event>) -> std::io::Result<Self> {
        let (jobs, queue) = channel();
        let thread = std::thread::Builder::new()
            .name("chain".into())
            .spawn(move || {
                crate::priority::lower_current_thread();
                run(chain, queue, events)
            })?;
        Ok(ChainTask { jobs, thread })
    }

    pub fn submit(&self, job: BlockJob) {
        // The thread only stops once this sender is dropped.
        let _ = self.jobs.send(job);
    }

    /// Stops after the blocks already queued; call once the receiver of
    /// the events is dropped, so the task never waits on a full channel.
    pub fn stop(self) {
        drop(self.jobs);
        let _ = self.thread.join();
    }
}

fn run(chain: Arc<Mutex<Chain>>, queue: Receiver<BlockJob>, events: mpsc::Sender<Event>) {
    while let Ok(job) = queue.recv() {
        let hash = job.block.hash();
        let outcome = process(&chain, job.block, job.peer, job.requested, job.permit);
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
) -> Result<crate::chain::BlockOutcome, crate::chain::ChainError> {
    let accepted =
        chain
            .lock()
            .expect("chain lock")
            .accept_new_block(block, Some(peer), requested)?;
    drop(permit);
    let mut failures = Vec::new();
    loop {
        match chain.lock().expect("chain lock").activate_step()? {
            ActivationStep::Done => break,
            ActivationStep::Failed(hash, error) => failures.push((hash, error)),
            ActivationStep::Connected(_) | ActivationStep::Disconnected(_) => {}
        }
    }
    Ok(chain
        .lock()
        .expect("chain lock")
        .final_outcome(accepted, &failures))
}

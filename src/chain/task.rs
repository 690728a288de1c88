//! The chain task: the one thread that owns the [`Chain`] and so the only
//! place its writer state is ever touched.
//!
//! Everything else reads what the chain publishes (`ChainReader`: views of
//! the store, the header tree, the published tip) and asks the task for
//! writes through a [`ChainHandle`]:
//! - blocks from peers (`submit_block`), stored and then connected one block
//!   step at a time (`Chain::activate_step`);
//! - blocks the node mined or imports (`process_block`), and blocks
//!   submitted over REST (`process_submitted_block_async`, stored only
//!   where a peer's unrequested block would be), the same way, behind
//!   those already queued;
//! - anything else that needs the writer (headers to index, the mempool's
//!   checks against the writer's tip, a flush of the cache, templates): a
//!   closure run on the task (`run`, `call`, `call_async`).
//!
//! Closures jump the queue of blocks: between two block steps of a long
//! catch-up or a deep reorganisation the task runs the closures waiting, at
//! most `MAX_CALLS_PER_STEP` of them, first come first served (between two
//! blocks, all of them). A batch of headers waits for the closures ahead of
//! it, never for the blocks queued. Blocks keep their order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use super::orphans::Source;
use super::{ActivationStep, BlockOutcome, Chain, ChainError, ChainReader};
use crate::consensus::block::Block;

/// What a caller learns when the task has stopped (the node is shutting
/// down) before running its closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the chain task has stopped")]
pub struct ChainStopped;

/// A block for the task, with where its outcome goes.
pub struct BlockJob {
    pub source: Source,
    pub block: Arc<Block>,
    /// Whether the node asked for it (an unrequested block far ahead of the
    /// tip is dropped).
    pub requested: bool,
    /// Held until the block is stored, then dropped: the inbound budget a
    /// peer's block still counts against (so blocks waiting here bound the
    /// queue in bytes, as if they waited in the peer's inbound queue).
    pub hold: Option<Box<dyn Send>>,
    /// Called on the task with the outcome; must not wait on the caller.
    pub done: Box<dyn FnOnce(Result<BlockOutcome, ChainError>) + Send>,
}

type Closure = Box<dyn FnOnce(&mut Chain) + Send>;

/// Closures run between two block steps at most: a stream of them (peers'
/// headers and transactions, each holding its message's inbound budget
/// until run) delays a block step, never starves it.
pub const MAX_CALLS_PER_STEP: usize = 32;

enum Job {
    Block(BlockJob),
    Run(Closure),
    /// Sent by `ChainTask::stop`.
    Stop,
}

/// A cheap, cloneable way to reach the chain task.
#[derive(Clone)]
pub struct ChainHandle {
    jobs: Sender<Job>,
    reader: ChainReader,
}

impl ChainHandle {
    /// What the chain publishes, for reading without the task.
    pub fn reader(&self) -> &ChainReader {
        &self.reader
    }

    /// Queues a block; `job.done` gets the outcome on the task. A block
    /// given to a stopped task is dropped unanswered (`done` may send to
    /// the caller's own queue, which the caller would then wait on).
    pub fn submit_block(&self, job: BlockJob) {
        let _ = self.jobs.send(Job::Block(job));
    }

    /// `Chain::process_block` for a block the node produced or imported:
    /// queued behind the blocks already waiting, and
    /// connected a step at a time like theirs. Waits for the outcome (a
    /// thread that may block).
    pub fn process_block(&self, block: Arc<Block>) -> Result<BlockOutcome, ChainError> {
        let (reply, result) = std::sync::mpsc::sync_channel(1);
        self.submit_own_block(block, move |outcome| {
            let _ = reply.send(outcome);
        });
        result.recv().map_err(|_| ChainError::Stopped)?
    }

    /// A block a client submitted over REST (`POST /mining/submit`), for
    /// async code: stored only where a peer's block the node did not ask
    /// for would be (its chain has at least the tip's work and is not far
    /// ahead), and never kept waiting for a parent. A miner's block extends
    /// the tip; anything else would let a client fill the disk with cheap
    /// blocks on a low-work fork. `hold` (a permit of the route that
    /// submitted it) is dropped with the outcome, once the block is
    /// connected or refused.
    pub async fn process_submitted_block_async(
        &self,
        block: Arc<Block>,
        hold: Box<dyn Send>,
    ) -> Result<BlockOutcome, ChainError> {
        let (reply, result) = tokio::sync::oneshot::channel();
        self.submit_block(BlockJob {
            source: None,
            block,
            requested: false,
            hold: None,
            done: Box::new(move |outcome| {
                drop(hold);
                let _ = reply.send(outcome);
            }),
        });
        result.await.map_err(|_| ChainError::Stopped)?
    }

    /// Queues a block of the node's own (no peer, as if requested).
    fn submit_own_block(
        &self,
        block: Arc<Block>,
        done: impl FnOnce(Result<BlockOutcome, ChainError>) + Send + 'static,
    ) {
        self.submit_block(BlockJob {
            source: None,
            block,
            requested: true,
            hold: None,
            done: Box::new(done),
        });
    }

    /// Holds the task in a closure until the returned sender sends (or is
    /// dropped), so what a test queues meanwhile waits.
    #[cfg(test)]
    pub(crate) fn hold(&self) -> std::sync::mpsc::Sender<()> {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        self.run(move |_| {
            let _ = wait.recv();
        })
        .expect("the task runs");
        release
    }

    /// Runs `f` on the task, ahead of queued blocks, without waiting for
    /// it. `f` must not wait on anything that waits on the task.
    pub fn run(&self, f: impl FnOnce(&mut Chain) + Send + 'static) -> Result<(), ChainStopped> {
        self.jobs
            .send(Job::Run(Box::new(f)))
            .map_err(|_| ChainStopped)
    }

    /// Runs `f` on the task and waits for its result: for threads that may
    /// block (never an async worker: see `call_async`).
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Chain) -> T + Send + 'static,
    ) -> Result<T, ChainStopped> {
        let (reply, result) = std::sync::mpsc::sync_channel(1);
        self.run(move |chain| {
            let _ = reply.send(f(chain));
        })?;
        result.recv().map_err(|_| ChainStopped)
    }

    /// As `call`, for async code: the worker is free while the task runs.
    pub async fn call_async<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Chain) -> T + Send + 'static,
    ) -> Result<T, ChainStopped> {
        let (reply, result) = tokio::sync::oneshot::channel();
        self.run(move |chain| {
            let _ = reply.send(f(chain));
        })?;
        result.await.map_err(|_| ChainStopped)
    }
}

/// The task itself: its thread, and how to stop it.
pub struct ChainTask {
    handle: ChainHandle,
    stopping: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl ChainTask {
    /// Moves `chain` onto a thread of its own.
    pub fn start(chain: Chain) -> std::io::Result<ChainTask> {
        let (jobs, queue) = channel();
        let reader = chain.reader();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("chain".into())
            .spawn(move || run(chain, queue, &stop))?;
        Ok(ChainTask {
            handle: ChainHandle { jobs, reader },
            stopping,
            thread,
        })
    }

    pub fn handle(&self) -> ChainHandle {
        self.handle.clone()
    }

    /// Whether the thread has ended: stopped, or died of a panic.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops after the block step under way: closures already queued still
    /// run, queued blocks are answered `ChainError::Stopped` (stored ones
    /// connect at the next start, in `Chain::open`; the rest are asked for
    /// again), and the chain is closed on its thread (its cache written).
    /// Handles kept elsewhere get `ChainStopped` from then on.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::Relaxed);
        let _ = self.handle.jobs.send(Job::Stop);
        let _ = self.thread.join();
    }
}

fn run(mut chain: Chain, queue: Receiver<Job>, stopping: &AtomicBool) {
    // What arrived while a block connected: closures first, then blocks in
    // their order.
    let mut pending = Pending::default();
    loop {
        let job = if let Some(f) = pending.calls.pop_front() {
            Job::Run(f)
        } else if let Some(block) = pending.blocks.pop_front() {
            Job::Block(block)
        } else if stopping.load(Ordering::Relaxed) {
            // `Job::Stop` may have been taken between two steps: never
            // wait for more (other handles keep the queue open).
            break;
        } else {
            match queue.recv() {
                Ok(job) => job,
                Err(_) => break,
            }
        };
        match job {
            Job::Run(f) => f(&mut chain),
            Job::Stop => break,
            Job::Block(job) if stopping.load(Ordering::Relaxed) => {
                (job.done)(Err(ChainError::Stopped));
            }
            Job::Block(job) => {
                let mut between = |chain: &mut Chain| {
                    pending.take_in(&queue, stopping);
                    for f in pending
                        .calls
                        .drain(..pending.calls.len().min(MAX_CALLS_PER_STEP))
                    {
                        f(chain);
                    }
                };
                let outcome = process(
                    &mut chain,
                    job.source,
                    job.block,
                    job.requested,
                    job.hold,
                    stopping,
                    &mut between,
                );
                (job.done)(outcome);
            }
        }
    }
    // Whatever is still queued: closures run (a shutdown's last save),
    // blocks are refused.
    pending.take_in(&queue, stopping);
    for f in pending.calls {
        f(&mut chain);
    }
    for job in pending.blocks {
        (job.done)(Err(ChainError::Stopped));
    }
    drop(chain);
}

/// Jobs taken off the queue and not yet run.
#[derive(Default)]
struct Pending {
    calls: VecDeque<Closure>,
    blocks: VecDeque<BlockJob>,
}

impl Pending {
    /// Everything queued now; a `Stop` sets `stopping`.
    fn take_in(&mut self, queue: &Receiver<Job>, stopping: &AtomicBool) {
        while let Ok(job) = queue.try_recv() {
            match job {
                Job::Run(f) => self.calls.push_back(f),
                Job::Block(block) => self.blocks.push_back(block),
                Job::Stop => stopping.store(true, Ordering::Relaxed),
            }
        }
    }
}

/// `Chain::process_new_block`, one block step at a time, with `between`
/// called after each step.
fn process(
    chain: &mut Chain,
    source: Source,
    block: Arc<Block>,
    requested: bool,
    hold: Option<Box<dyn Send>>,
    stopping: &AtomicBool,
    between: &mut dyn FnMut(&mut Chain),
) -> Result<BlockOutcome, ChainError> {
    let accepted = chain.accept_new_block(block, source, requested)?;
    drop(hold);
    let mut failures = Vec::new();
    loop {
        between(chain);
        if stopping.load(Ordering::Relaxed) {
            break;
        }
        match chain.activate_step()? {
            ActivationStep::Done => break,
            ActivationStep::Failed(hash, error) => failures.push((hash, error)),
            ActivationStep::Connected(_) | ActivationStep::Disconnected(_) => {}
        }
    }
    Ok(chain.final_outcome(accepted, &failures))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::params::Network;
    use crate::testkit::{key, regtest_chain, TestChain};
    use std::sync::Mutex;

    fn blocks(n: usize) -> Vec<Arc<Block>> {
        let mut test = TestChain::new(Network::Regtest);
        (0..n)
            .map(|_| Arc::new(test.mine_empty(key(1).pubkey_hash()).clone()))
            .collect()
    }

    /// A task on a fresh regtest chain, held by a closure until `release`
    /// is sent, so what a test queues meanwhile waits.
    fn held_task() -> (
        tempfile::TempDir,
        ChainTask,
        ChainHandle,
        std::sync::mpsc::Sender<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let task = ChainTask::start(regtest_chain(dir.path())).unwrap();
        let handle = task.handle();
        let release = handle.hold();
        (dir, task, handle, release)
    }

    /// Queues `blocks`, each reporting its height and outcome into `done`.
    fn submit_all(
        handle: &ChainHandle,
        blocks: &[Arc<Block>],
        done: &Arc<Mutex<Vec<Result<BlockOutcome, String>>>>,
    ) {
        for block in blocks {
            let done = done.clone();
            handle.submit_block(BlockJob {
                source: Some(1),
                block: block.clone(),
                requested: true,
                hold: None,
                done: Box::new(move |outcome| {
                    done.lock()
                        .unwrap()
                        .push(outcome.map_err(|e| e.to_string()));
                }),
            });
        }
    }

    #[test]
    fn a_call_runs_between_block_steps_ahead_of_queued_blocks() {
        let (_dir, task, handle, release) = held_task();
        // Everything is queued before the task goes on: 20 blocks, a call.
        let blocks = blocks(20);
        let done = Arc::new(Mutex::new(Vec::new()));
        submit_all(&handle, &blocks, &done);
        let (probe, probed) = std::sync::mpsc::channel();
        handle
            .run(move |chain| probe.send(chain.height()).unwrap())
            .unwrap();
        release.send(()).unwrap();
        let height_at_call = probed.recv().unwrap();
        assert!(
            height_at_call < 2,
            "the call waited for queued blocks: it ran at height {height_at_call}"
        );
        // A call jumps the queue too: wait for the blocks' own answers.
        while done.lock().unwrap().len() < blocks.len() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let tip = handle.call(|chain| chain.tip()).unwrap();
        assert_eq!(tip.hash, blocks[19].hash());
        let done = done.lock().unwrap();
        let heights: Vec<u32> = done
            .iter()
            .map(|o| match o {
                Ok(BlockOutcome::Accepted { height, .. }) => *height,
                other => panic!("unexpected outcome {other:?}"),
            })
            .collect();
        assert_eq!(
            heights,
            (1..=20).collect::<Vec<u32>>(),
            "blocks keep their order"
        );
        drop(done);
        task.stop();
    }

    #[test]
    fn stopping_refuses_queued_blocks_runs_queued_calls_then_takes_nothing() {
        let (_dir, task, handle, release) = held_task();
        let done = Arc::new(Mutex::new(Vec::new()));
        submit_all(&handle, &blocks(3), &done);
        let (ran, saw_run) = std::sync::mpsc::channel();
        handle.run(move |_| ran.send(()).unwrap()).unwrap();
        let stopping = task.stopping.clone();
        let stopper = std::thread::spawn(move || task.stop());
        // Let the task go once `stop` has been asked for.
        while !stopping.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
        release.send(()).unwrap();
        stopper.join().unwrap();
        assert!(saw_run.try_recv().is_ok(), "a queued call still ran");
        let outcomes = done.lock().unwrap().clone();
        assert_eq!(
            outcomes,
            vec![Err(ChainError::Stopped.to_string()); 3],
            "blocks queued at the stop are refused"
        );
        assert_eq!(handle.call(|chain| chain.height()), Err(ChainStopped));
        assert_eq!(handle.run(|_| {}), Err(ChainStopped));
    }

    #[test]
    fn a_stop_taken_between_two_block_steps_ends_the_task() {
        let (_dir, task, handle, release) = held_task();
        let done = Arc::new(Mutex::new(Vec::new()));
        submit_all(&handle, &blocks(3), &done);
        // `stop` arriving while the first block connects: its `Stop` is
        // taken in between two steps, with the other blocks.
        let jobs = handle.jobs.clone();
        handle
            .run(move |_| {
                let _ = jobs.send(Job::Stop);
            })
            .unwrap();
        release.send(()).unwrap();
        // `handle` stays alive, as handles elsewhere in a node do: the task
        // must end with nothing more queued.
        let ChainTask { thread, .. } = task;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !thread.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the task waits for a job after its stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        thread.join().unwrap();
        let outcomes = done.lock().unwrap().clone();
        assert!(matches!(
            outcomes[0],
            Ok(BlockOutcome::Accepted { height: 1, .. })
        ));
        assert_eq!(outcomes[1..], vec![Err(ChainError::Stopped.to_string()); 2]);
        assert_eq!(handle.run(|_| {}), Err(ChainStopped));
    }
}

//! The node: opens the chain and runs its tasks until asked to stop.

pub mod producer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::broadcast::error::RecvError;

use crate::chain::block_file::read_block;
use crate::chain::{BlockOutcome, Chain, ChainEvent, ChainHandle, ChainOptions};
use crate::consensus::address::PubKeyHash;
use crate::consensus::params::Network;
use crate::mempool::{persist as mempool_file, Mempool};

/// How often the mempool is caught up with the chain and expired.
const MEMPOOL_UPKEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often the node looks for a mempool rebuild to drive (one lock of the
/// pool when there is none).
const MEMPOOL_REBUILD_POLL: Duration = Duration::from_millis(20);
/// Pause between two steps of a mempool rebuild, in which blocks queued for
/// the chain task and threads waiting for the pool's lock go first.
const MEMPOOL_REBUILD_PAUSE: Duration = Duration::from_millis(1);
/// How often the node checks that its chain task still runs.
const CHAIN_TASK_WATCH: Duration = Duration::from_secs(1);
/// Save the mempool every this many upkeep rounds (5 minutes).
const MEMPOOL_SAVE_EVERY: u64 = 30;

/// Everything `chaincore node` was asked to do.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub network: Network,
    pub data_dir: PathBuf,
    pub mine_to: Option<PubKeyHash>,
    pub mine_blocks: Option<u64>,
    pub mine_interval: Duration,
    /// Threads of the node's miner.
    pub mine_threads: usize,
    pub import: Option<PathBuf>,
    pub sync_writes: bool,
    /// Byte limit of the chain state cache (`--dbcache-mb`).
    pub cache_bytes: usize,
    /// Overrides the network's minimum chain work (`--minimum-chain-work`).
    pub minimum_chain_work: Option<primitive_types::U256>,
    /// Memory limit of the mempool (`Mempool::usage`).
    pub mempool_max_bytes: usize,
    /// PostgreSQL to mirror into, if any.
    pub postgres_url: Option<String>,
    /// Token for admin endpoints from other hosts than loopback.
    pub api_admin_token: Option<String>,
    /// Other origins whose web pages may read the REST API (`--api-cors`).
    pub api_cors: crate::api::cors::CorsOrigins,
    /// Where the REST API listens.
    pub api_bind: std::net::SocketAddr,
    /// The REST API's connection limits (`--api-max-connections`,
    /// `--api-idle-timeout-secs`).
    pub api_limits: crate::api::listener::ConnectionLimits,
    /// Where the P2P listener binds.
    pub p2p_bind: std::net::SocketAddr,
    /// Peers to keep connected to (`--peer`).
    pub peers: Vec<std::net::SocketAddr>,
    /// Dial only `peers`.
    pub connect_only: bool,
}

/// File descriptors the node asks for (its soft limit raised as far as the
/// hard one allows, as Bitcoin Core does): RocksDB keeps its table files
/// open, and each peer and REST connection takes one. Debian's default
/// soft limit is 1 024.
const WANTED_FILE_DESCRIPTORS: u64 = 65_536;

/// Raises the soft limit of open files toward `WANTED_FILE_DESCRIPTORS`,
/// and logs the limit the node runs with.
fn raise_file_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit read and write one `rlimit` we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return;
        }
        let wanted = WANTED_FILE_DESCRIPTORS.min(limit.rlim_max);
        if limit.rlim_cur < wanted {
            let raised = libc::rlimit {
                rlim_cur: wanted,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit.rlim_cur = wanted;
            }
        }
        tracing::info!(limit = limit.rlim_cur, "open file limit");
    }
}

/// Runs the node until Ctrl-C or SIGTERM.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    // First: a signal during start-up (opening the chain may connect many
    // stored blocks) stops the node cleanly once it is up, instead of
    // killing it.
    let shutdown = ShutdownSignal::install()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    crate::priority::lower_global_pool();
    raise_file_limit();
    let options = ChainOptions {
        sync_writes: config.sync_writes,
        minimum_chain_work: config.minimum_chain_work,
        cache_bytes: config.cache_bytes,
        ..ChainOptions::default()
    };
    let (dir, network) = (config.data_dir.clone(), config.network);
    let started = std::time::Instant::now();
    let chain = tokio::task::spawn_blocking(move || Chain::open(&dir, network, options))
        .await?
        .with_context(|| format!("opening chain state in {}", config.data_dir.display()))?;
    let tip = chain.tip();
    tracing::info!(
        network = %config.network,
        height = tip.height,
        tip = %tip.hash,
        utxos = tip.utxo_count,
        digest = %tip.utxo_digest,
        dbcache_mb = config.cache_bytes >> 20,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "chain state loaded"
    );
    let mut events = chain.subscribe();
    let mut pool = Mempool::new(&chain, config.mempool_max_bytes);
    let (loaded, saved) = mempool_file::load(&mut pool, &chain, &config.data_dir);
    if saved > 0 {
        tracing::info!(loaded, saved, "mempool reloaded");
    }
    let (event_hub, _event_hub_task) =
        crate::events::EventHub::start(chain.subscribe(), pool.subscribe_events());
    let mempool = Arc::new(Mutex::new(pool));
    let reader = chain.reader();
    let store = chain.store().clone();
    // From here on the chain lives on its task: everything else reads what
    // it publishes or asks the task.
    let chain_task = crate::chain::ChainTask::start(chain)?;
    let chain = chain_task.handle();
    let stop = Arc::new(AtomicBool::new(false));
    let hashrate = Arc::new(AtomicU64::new(0));

    let (p2p, p2p_thread) = crate::p2p::start(
        crate::p2p::NetworkConfig {
            network: config.network,
            bind: config.p2p_bind,
            peers: config.peers.clone(),
            connect_only: config.connect_only,
            data_dir: config.data_dir.clone(),
        },
        chain.clone(),
        mempool.clone(),
    )
    .await?;

    let mirror_wake = Arc::new(tokio::sync::Notify::new());
    let mirror_status = config.postgres_url.clone().map(|url| {
        let status = Arc::new(Mutex::new(crate::mirror::MirrorStatus::default()));
        tokio::spawn(crate::mirror::run(
            url,
            config.network,
            store.clone(),
            mirror_wake.clone(),
            status.clone(),
        ));
        status
    });

    let (api_addr, api_task) = crate::api::serve(
        config.api_bind,
        crate::api::ApiState::new(crate::api::ApiShared {
            reader: reader.clone(),
            chain: chain.clone(),
            mempool: mempool.clone(),
            network: p2p.clone(),
            started: std::time::Instant::now(),
            mirror: mirror_status.clone(),
            templates: Default::default(),
            hashrate: hashrate.clone(),
            latency: Default::default(),
            pool_views: Default::default(),
            admin_token: config.api_admin_token.clone(),
            events: event_hub,
            cors: config.api_cors.clone(),
            keep_alive: config.api_limits.keep_alive(),
            request_timeout: config.api_limits.request_timeout,
        }),
        config.api_limits,
    )
    .await?;
    tracing::debug!(%api_addr, "REST API ready");

    let relay = p2p.clone();
    let wake = mirror_wake.clone();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(ChainEvent::BlockConnected {
                    hash,
                    height,
                    block,
                }) => {
                    tracing::info!(height, %hash, txs = block.transactions.len(), "block connected");
                    relay.chain_changed().await;
                    wake.notify_one();
                }
                Ok(ChainEvent::BlockDisconnected { hash, height, .. }) => {
                    tracing::info!(height, %hash, "block disconnected")
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "event log fell behind");
                    relay.chain_changed().await;
                }
                Err(RecvError::Closed) => break,
            }
        }
    });

    let mut tasks = Vec::new();
    if let Some(path) = config.import.clone() {
        let chain = chain.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            import(&chain, &path)
                .inspect_err(|e| tracing::error!(error = format!("{e:#}"), "import failed"))
        }));
    }
    if let Some(payout) = config.mine_to {
        let (chain, mempool, stop) = (chain.clone(), mempool.clone(), stop.clone());
        let (count, interval) = (config.mine_blocks, config.mine_interval);
        let (threads, hashrate) = (config.mine_threads, hashrate.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            let mined = producer::produce_blocks(
                &chain, &mempool, payout, count, interval, threads, &hashrate, &stop,
            )
            .inspect_err(|e| tracing::error!(error = format!("{e:#}"), "block producer failed"))?;
            hashrate.store(0, Ordering::Relaxed);
            tracing::info!(mined, "block producer finished");
            Ok(())
        }));
    }

    // A rebuild of the mempool after a reorganisation (thousands of
    // transactions judged again) runs on the chain task a step at a time,
    // each step holding the pool's lock for milliseconds, so blocks, the
    // protocol thread and REST readers interleave with it.
    let rebuild_driver = {
        let (chain, mempool) = (chain.clone(), mempool.clone());
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(MEMPOOL_REBUILD_POLL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                // Never wait for the pool's lock on an async worker: whoever
                // holds it may hold it long.
                match mempool.try_lock() {
                    Ok(pool) if pool.rebuild_pending() => {}
                    _ => continue,
                }
                loop {
                    let mempool = mempool.clone();
                    let more = chain
                        .call_async(move |chain| {
                            let mut pool = mempool.lock().expect("mempool lock");
                            // Mid-reorganisation (not settled): the next
                            // poll goes on.
                            !pool.catch_up_step(chain) && pool.rebuild_pending() && chain.settled()
                        })
                        .await;
                    if more != Ok(true) {
                        break;
                    }
                    // Blocks waiting for the task go first between steps.
                    tokio::time::sleep(MEMPOOL_REBUILD_PAUSE).await;
                }
            }
        })
    };

    let upkeep = {
        let (chain, mempool, dir) = (chain.clone(), mempool.clone(), config.data_dir.clone());
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(MEMPOOL_UPKEEP_INTERVAL);
            let mut rounds = 0u64;
            loop {
                ticker.tick().await;
                rounds += 1;
                let pool = mempool.clone();
                let _ = chain
                    .call_async(move |chain| {
                        // A catch-up whose blocks stopped coming still
                        // reaches the disk (and the store's readers).
                        if let Err(e) = chain.flush_if_old() {
                            tracing::warn!(error = %e, "writing the chain state cache failed");
                        }
                        let mut pool = pool.lock().expect("mempool lock");
                        let expired = pool.expire(chain, crate::chain::unix_now());
                        if expired > 0 {
                            tracing::info!(expired, "expired mempool transactions");
                        }
                    })
                    .await;
                if rounds.is_multiple_of(MEMPOOL_SAVE_EVERY) {
                    // Off the chain task, and written after the pool's
                    // lock is released (it is held for a copy of pointers).
                    let (mempool, dir) = (mempool.clone(), dir.clone());
                    let _ = tokio::task::spawn_blocking(move || {
                        let _saving = mempool_file::SAVING.lock().expect("mempool save lock");
                        let saved =
                            mempool_file::SavedPool::of(&mempool.lock().expect("mempool lock"));
                        if let Err(e) = saved.write(&dir) {
                            tracing::warn!(error = %e, "saving the mempool failed");
                        }
                    })
                    .await;
                }
            }
        })
    };

    // A node whose chain task has died (a panic) has no writer: it stops,
    // and says so, rather than serve a chain that no longer moves.
    let chain_died = async {
        while !chain_task.is_finished() {
            tokio::time::sleep(CHAIN_TASK_WATCH).await;
        }
    };
    tokio::select! {
        _ = shutdown.recv() => tracing::info!("shutting down"),
        _ = chain_died => tracing::error!("the chain task has stopped: shutting down"),
    }
    upkeep.abort();
    rebuild_driver.abort();
    api_task.abort();
    stop.store(true, Ordering::Relaxed);
    p2p.shutdown().await;
    // A task's failure (logged when it happened) is returned once the rest
    // of the shutdown has run: the chain's cache and the pool are still
    // saved.
    let mut failed: Option<anyhow::Error> = None;
    for task in tasks {
        let outcome = match task.await {
            Ok(outcome) => outcome,
            Err(join) => {
                tracing::error!(error = %join, "an import or block producer task panicked");
                Err(join.into())
            }
        };
        if let Err(e) = outcome {
            failed.get_or_insert(e);
        }
    }
    tokio::task::spawn_blocking(move || p2p_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the p2p thread panicked"))?;
    let saved = {
        let (pool, dir) = (mempool.clone(), config.data_dir.clone());
        let last = chain
            .call_async(move |chain| {
                if let Err(e) = chain.flush() {
                    tracing::warn!(error = %e, "writing the chain state cache at shutdown failed");
                }
                chain.stage_times().log();
                // After a periodic save still writing (its blocking job
                // outlives the task that started it).
                let _saving = mempool_file::SAVING.lock().expect("mempool save lock");
                let mut pool = pool.lock().expect("mempool lock");
                pool.catch_up(chain);
                mempool_file::save(&pool, &dir)
            })
            .await;
        match last {
            Ok(saved) => saved,
            // The chain task is gone: the pool is saved as it is (the next
            // start judges every entry again anyway).
            Err(_) => {
                let (pool, dir) = (mempool.clone(), config.data_dir.clone());
                tokio::task::spawn_blocking(move || {
                    let _saving = mempool_file::SAVING.lock().expect("mempool save lock");
                    mempool_file::save(&pool.lock().expect("mempool lock"), &dir)
                })
                .await?
            }
        }
    };
    let died = chain_task.is_finished();
    tokio::task::spawn_blocking(move || chain_task.stop()).await?;
    match saved {
        Ok(count) => tracing::info!(transactions = count, "mempool saved"),
        Err(e) => tracing::warn!(error = %e, "saving the mempool failed"),
    }
    if died {
        anyhow::bail!("the chain task stopped on its own (see the log)");
    }
    failed.map_or(Ok(()), Err)
}

/// Imports a block file one record at a time, so memory holds one block
/// whatever the file's size; a damaged record stops the import there, with
/// the blocks before it imported.
fn import(chain: &ChainHandle, path: &std::path::Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut input = std::io::BufReader::new(file);
    let mut total = 0;
    while let Some(block) = read_block(&mut input, total)
        .with_context(|| format!("reading blocks from {}", path.display()))?
    {
        total += 1;
        let outcome = chain.process_block(Arc::new(block))?;
        match outcome {
            BlockOutcome::Accepted { .. } | BlockOutcome::Duplicate | BlockOutcome::Orphan => {}
            other => tracing::warn!(?other, "imported block rejected"),
        }
    }
    let (hash, height) = chain.reader().published().tip;
    tracing::info!(blocks = total, height, tip = %hash, "import done");
    Ok(())
}

/// Ctrl-C or SIGTERM, listened to from the moment it is installed.
struct ShutdownSignal {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn install() -> anyhow::Result<ShutdownSignal> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(ShutdownSignal {
                interrupt: signal(SignalKind::interrupt())
                    .context("installing a SIGINT handler")?,
                terminate: signal(SignalKind::terminate())
                    .context("installing a SIGTERM handler")?,
            })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignal {})
    }

    async fn recv(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

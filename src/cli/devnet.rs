//! `chaincore devnet`: N regtest nodes on 127.0.0.1, each with its own data
//! dir and ports, peered with one another; stopped together on Ctrl-C.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::client::NodeClient;
use crate::consensus::address::Address;
use crate::consensus::params::Network;

/// Most nodes one devnet runs.
pub const MAX_DEVNET_NODES: usize = 32;
/// How long a node may take to answer on its REST port after start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the nodes get to stop after SIGTERM before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct DevnetArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Mine on the first node (to --mine-to, or to a wallet made in the
    /// devnet's directory).
    #[arg(long)]
    mine: bool,
    /// Address the first node mines to (implies --mine).
    #[arg(long)]
    mine_to: Option<String>,
    /// Pause between mined blocks, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    mine_interval_ms: u64,
    /// Where the nodes' data dirs and logs go (default: a new temporary
    /// directory, removed on exit).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// First port: node i listens for peers on BASE+2i and serves REST on
    /// BASE+2i+1 (default: free ports picked by the system).
    #[arg(long)]
    base_port: Option<u16>,
}

/// One running node of the devnet.
struct DevNode {
    child: Child,
    api: SocketAddr,
    p2p: SocketAddr,
    dir: PathBuf,
    /// Where this run's lines start in its `node.log` (earlier runs'
    /// come before).
    log_start: u64,
}

/// Stops every node (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]) when
/// dropped, so an error or a panic never leaves nodes behind.
struct Nodes(Vec<DevNode>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for node in &mut self.0 {
            terminate(&node.child);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for node in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = node.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = node.child.try_wait() {
                let _ = node.child.kill();
                let _ = node.child.wait();
            }
        }
    }
}

fn terminate(child: &Child) {
    #[cfg(unix)]
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
}

/// A port nothing listens on right now, held until `held` is dropped so no
/// two picks collide.
fn free_port(held: &mut Vec<TcpListener>) -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let port = listener.local_addr()?.port();
    held.push(listener);
    Ok(port)
}

pub fn run(args: DevnetArgs) -> Result<()> {
    if args.nodes == 0 || args.nodes > MAX_DEVNET_NODES {
        bail!("--nodes must be 1 to {MAX_DEVNET_NODES}");
    }
    let network = Network::Regtest;
    let (root, _temp) = match &args.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile_dir()?;
            (temp.clone(), Some(TempDir(temp)))
        }
    };
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let _lock = lock_root(&root)?;
    let mine_to = match (&args.mine_to, args.mine) {
        (Some(address), _) => Some(Address::parse(address, network)?.to_string()),
        (None, true) => {
            let path = root.join("miner-wallet.json");
            // Made on the first run, used again after; one that cannot be
            // read is reported as it is (never replaced).
            let wallet = if path.exists() {
                crate::wallet::Wallet::open(&path)?
            } else {
                crate::wallet::Wallet::create(&path, network, None)?
            };
            eprintln!("mining to {} (wallet {})", wallet.address(), path.display());
            Some(wallet.address().to_string())
        }
        (None, false) => None,
    };

    let mut ports = Vec::new();
    let mut held = Vec::new();
    for i in 0..args.nodes {
        ports.push(match args.base_port {
            Some(base) => {
                let p2p = base
                    .checked_add(2 * i as u16)
                    .context("--base-port too high")?;
                (p2p, p2p.checked_add(1).context("--base-port too high")?)
            }
            None => (free_port(&mut held)?, free_port(&mut held)?),
        });
    }
    drop(held);
    let exe = std::env::current_exe().context("finding the chaincore binary")?;
    let mut nodes = Nodes(Vec::new());
    for (i, (p2p, api)) in ports.iter().enumerate() {
        let dir = root.join(format!("node{i}"));
        std::fs::create_dir_all(&dir)?;
        // Appended to: a run's log is kept across runs of the same dir.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))?;
        let log_start = log.metadata()?.len();
        let mut command = Command::new(&exe);
        command
            .args(["node", "--network", network.name(), "--connect-only"])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--p2p-bind", "127.0.0.1", "--p2p-port", &p2p.to_string()])
            .args(["--api-bind", "127.0.0.1", "--api-port", &api.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Each node dials the ones started before it: one connection per
        // pair, a full mesh.
        for (peer, _) in &ports[..i] {
            command.args(["--peer", &format!("127.0.0.1:{peer}")]);
        }
        if let (0, Some(address)) = (i, &mine_to) {
            command
                .args(["--mine-to", address])
                .args(["--mine-interval-ms", &args.mine_interval_ms.to_string()]);
        }
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("starting node {i}"))?;
        nodes.0.push(DevNode {
            child,
            api: SocketAddr::from((Ipv4Addr::LOCALHOST, *api)),
            p2p: SocketAddr::from((Ipv4Addr::LOCALHOST, *p2p)),
            dir,
            log_start,
        });
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        for (i, node) in nodes.0.iter_mut().enumerate() {
            wait_until_serving(i, node).await?;
        }
        println!("devnet: {} regtest nodes in {}", args.nodes, root.display());
        for (i, node) in nodes.0.iter().enumerate() {
            println!(
                "node {i}  rest http://{}  p2p {}  log {}",
                node.api,
                node.p2p,
                node.dir.join("node.log").display()
            );
        }
        println!("ready; Ctrl-C stops every node");
        watch(&mut nodes).await
    })
}

/// Holds `root/devnet.lock` for the devnet's life (an advisory lock the
/// kernel drops when the process ends, however it ends): a second devnet
/// on the same directory is refused before it starts nodes on the first
/// one's data dirs.
fn lock_root(root: &std::path::Path) -> Result<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    let path = root.join("devnet.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory is shared.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!(
                "a devnet already runs in {} (it holds {}): stop it, or pass another --data-dir",
                root.display(),
                path.display()
            );
        }
        return Err(error).with_context(|| format!("locking {}", path.display()));
    }
    Ok(file)
}

/// Most bytes read from the end of a node's log for its last error.
const LOG_TAIL_BYTES: u64 = 16 * 1024;

/// The last line of a node's log that says "error" (its last line if none
/// does), from the log's last `LOG_TAIL_BYTES` written from `start` on
/// (nodes log without colours to a file).
fn last_error(log: &std::path::Path, start: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(log).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(
        len.saturating_sub(LOG_TAIL_BYTES).max(start),
    ))
    .ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = lines
        .iter()
        .rev()
        .find(|l| l.to_ascii_lowercase().contains("error"))
        .or(lines.last())?;
    Some(line.to_string())
}

/// Waits for a node's REST API, failing early if the process exits.
async fn wait_until_serving(i: usize, node: &mut DevNode) -> Result<()> {
    let client = NodeClient::new(&format!("http://{}", node.api))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if client.get_text("/blocks/tip/height").await.is_ok() {
            return Ok(());
        }
        if let Some(status) = node.child.try_wait()? {
            let log = node.dir.join("node.log");
            bail!(
                "node {i} exited ({status}) at start: {}; see {}",
                last_error(&log, node.log_start)
                    .unwrap_or_else(|| "it logged no error".to_string()),
                log.display()
            );
        }
        if Instant::now() > deadline {
            bail!("node {i} did not serve REST within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs until Ctrl-C or SIGTERM, or until a node dies.
async fn watch(nodes: &mut Nodes) -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = ticker.tick() => {
                for (i, node) in nodes.0.iter_mut().enumerate() {
                    if let Some(status) = node.child.try_wait()? {
                        bail!("node {i} exited ({status}); see {}", node.dir.join("node.log").display());
                    }
                }
            }
        }
    }
    eprintln!("stopping {} nodes", nodes.0.len());
    Ok(())
}

/// On Linux, a node gets SIGTERM if the devnet process dies, even by
/// SIGKILL, so no node outlives its devnet.
fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

/// A fresh directory under the system's temp dir.
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "chaincore-devnet-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Removes a devnet's temporary directory on exit.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

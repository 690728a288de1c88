//! Helpers shared by the integration tests: running the `chaincore` binary
//! and building chains to feed it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chaincore::consensus::amount::Amount;
use chaincore::consensus::block::Block;
use chaincore::consensus::keys::PrivateKey;
use chaincore::consensus::params::Network;
use chaincore::consensus::transaction::TxOut;
use chaincore::testkit::{key, signed_spend, TestChain};

pub fn chaincore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chaincore"))
}

/// A running `chaincore node` whose log lines arrive on a channel.
pub struct NodeProcess {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl NodeProcess {
    pub fn start(data_dir: &Path, extra: &[&str]) -> NodeProcess {
        let mut child = chaincore()
            .args([
                "node",
                "--network",
                "regtest",
                "--p2p-bind",
                "127.0.0.1",
                "--p2p-port",
                "0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .env("CHAINCORE_LOG", "info,chaincore::p2p::protocol=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chaincore node");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        NodeProcess {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Collects the lines logged so far.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
    }

    /// Waits until a logged line contains `needle`, or panics after `timeout`
    /// with the log so far.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(500)))
            {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) if Instant::now() < deadline => self.fail_if_exited(),
                Err(_) => panic!(
                    "no log line with {needle:?} within {timeout:?}; log:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) -> Vec<String> {
        self.child.kill().expect("kill node");
        self.child.wait().expect("reap node");
        self.drain();
        self.log
    }
}

/// The value of `field=` in a log line.
pub fn log_field<'a>(line: &'a str, field: &str) -> Option<&'a str> {
    let start = line.find(&format!("{field}="))? + field.len() + 1;
    line[start..].split_whitespace().next()
}

/// What each generated spend pays, and its fee, in base units.
const PAYMENT: u64 = 1_000_000;
const FEE: u64 = 1_000;

/// A regtest chain of `prefix` blocks mined to key(1), then `len` blocks each
/// carrying `txs` signed spends of key(1)'s mature coins to `to`.
pub fn chain_with_spends(
    base: &TestChain,
    len: usize,
    txs: usize,
    to: &PrivateKey,
    miner: &PrivateKey,
) -> (TestChain, Vec<Block>) {
    let mut chain = base.clone();
    let owner = key(1);
    let mut blocks = Vec::new();
    for _ in 0..len {
        let spendable = chain.spendable(owner.pubkey_hash());
        let spends = spendable
            .iter()
            .filter(|(_, utxo)| utxo.output.amount.units() >= 2 * PAYMENT)
            .take(txs)
            .map(|(outpoint, utxo)| {
                let change = utxo.output.amount.units() - PAYMENT - FEE;
                signed_spend(
                    &[(*outpoint, utxo.output, &owner)],
                    vec![
                        TxOut {
                            amount: Amount::from_units(PAYMENT),
                            owner: to.pubkey_hash(),
                        },
                        TxOut {
                            amount: Amount::from_units(change),
                            owner: owner.pubkey_hash(),
                        },
                    ],
                )
            })
            .collect();
        let block = chain.build_block(miner.pubkey_hash(), spends);
        chain.apply(block.clone());
        blocks.push(block);
    }
    (chain, blocks)
}

/// `n` empty regtest blocks on genesis mined to key(1).
pub fn prefix(n: usize) -> TestChain {
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..n {
        chain.mine_empty(key(1).pubkey_hash());
    }
    chain
}

impl NodeProcess {
    /// Starts a node and waits until its P2P listener is bound; returns it
    /// with the listening address.
    pub fn start_p2p(data_dir: &Path, extra: &[&str]) -> (NodeProcess, std::net::SocketAddr) {
        let mut node = NodeProcess::start(data_dir, extra);
        let line = node.wait_for("p2p listening", Duration::from_secs(30));
        let addr = log_field(&line, "addr")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        (node, addr)
    }

    /// Waits until the node logs a connected block at `height` or above and
    /// returns the hash it logged for the highest such block so far.
    pub fn wait_for_height(&mut self, height: u32, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if let Some(hash) = self
                .log
                .iter()
                .rev()
                .filter(|l| l.contains("block connected"))
                .find(|l| {
                    log_field(l, "height").and_then(|h| h.parse::<u32>().ok()) >= Some(height)
                })
                .and_then(|l| log_field(l, "hash"))
            {
                return hash.to_string();
            }
            self.fail_if_exited();
            if Instant::now() > deadline {
                panic!(
                    "height {height} not reached within {timeout:?}; last lines:\n{}",
                    self.log
                        .iter()
                        .rev()
                        .take(30)
                        .rev()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics with the log if the node has exited.
    pub fn fail_if_exited(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            self.drain();
            panic!("node exited early with {status}:\n{}", self.log.join("\n"));
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("reap node");
        self.drain();
        assert!(
            status.success(),
            "node exited with {status}:\n{}",
            self.log.join("\n")
        );
        self.log
    }
}

/// The tip record of a stopped node's data dir.
pub fn stored_tip(data_dir: &Path) -> chaincore::store::schema::ChainTipRecord {
    let (store, _) = chaincore::store::Store::open_existing(
        data_dir,
        &chaincore::store::StoreOptions::default(),
    )
    .expect("open stopped node's store");
    store.tip().expect("read tip").expect("tip exists")
}

/// Writes `blocks` (after genesis) to a block file in `dir`.
pub fn block_file(dir: &Path, name: &str, blocks: &[Block]) -> std::path::PathBuf {
    let path = dir.join(name);
    chaincore::chain::block_file::write_blocks(std::fs::File::create(&path).unwrap(), blocks)
        .unwrap();
    path
}

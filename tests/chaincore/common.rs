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
            .args(["node", "--network", "regtest", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("CHAINCORE_LOG", "info")
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
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
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

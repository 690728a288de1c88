//! Helpers shared by the integration tests: running the `chaincore` binary
//! and building chains to feed it.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use chaincore::consensus::amount::Amount;
use chaincore::consensus::block::Block;
use chaincore::consensus::keys::PrivateKey;
use chaincore::consensus::params::Network;
use chaincore::consensus::transaction::TxOut;
use chaincore::testkit::process::Node;
use chaincore::testkit::{key, signed_spend, TestChain};

pub use chaincore::testkit::process::log_field;

pub fn chaincore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chaincore"))
}

/// `chaincore node` processes of this build.
pub struct NodeProcess;

impl NodeProcess {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Node {
        Node::start(Path::new(env!("CARGO_BIN_EXE_chaincore")), data_dir, extra)
    }

    pub fn start_p2p(data_dir: &Path, extra: &[&str]) -> (Node, std::net::SocketAddr) {
        Node::start_p2p(Path::new(env!("CARGO_BIN_EXE_chaincore")), data_dir, extra)
    }
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

/// Held by the tests whose assertions are about responsiveness (a ping or a
/// REST answer within a bound) and by the heaviest test, which saturates
/// both cores for a minute: they never overlap, so a bound measures the
/// node, not the rest of the suite running beside it.
pub static LOAD_SENSITIVE: Mutex<()> = Mutex::new(());

/// Takes [`LOAD_SENSITIVE`] (a test that panicked while holding it does
/// not poison the others).
pub fn load_sensitive() -> std::sync::MutexGuard<'static, ()> {
    LOAD_SENSITIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads from `stream` until it is closed or a read waits `within`:
/// whether the other end closed it (EOF or reset) in time.
pub fn closed_within(stream: &mut std::net::TcpStream, within: std::time::Duration) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

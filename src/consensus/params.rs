//! Network parameters for `main`, `test` and `regtest`, and their genesis blocks.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use primitive_types::U256;

use super::address::PubKeyHash;
use super::amount::Amount;
use super::block::{Block, BlockHeader, BLOCK_VERSION};
use super::hash::{hash160, BlockHash};
use super::pow::target_from_compact;
use super::transaction::{Transaction, TxOut};

/// The networks this software knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    Main,
    Test,
    Regtest,
}

impl Network {
    pub const ALL: [Network; 3] = [Network::Main, Network::Test, Network::Regtest];

    pub fn params(self) -> &'static ChainParams {
        match self {
            Network::Main => &MAIN,
            Network::Test => &TEST,
            Network::Regtest => &REGTEST,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Network::Main => "main",
            Network::Test => "test",
            Network::Regtest => "regtest",
        }
    }

    /// The network whose frames start with `magic`.
    pub fn from_magic(magic: [u8; 4]) -> Option<Network> {
        Network::ALL.into_iter().find(|n| n.params().magic == magic)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown network {0:?}: expected main, test or regtest")]
pub struct UnknownNetwork(pub String);

impl FromStr for Network {
    type Err = UnknownNetwork;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Network::ALL
            .into_iter()
            .find(|n| n.name() == s)
            .ok_or_else(|| UnknownNetwork(s.to_string()))
    }
}

/// Everything consensus and networking need to know about one network.
#[derive(Debug)]
pub struct ChainParams {
    pub network: Network,
    /// First four bytes of every P2P frame; tells networks apart on the wire.
    pub magic: [u8; 4],
    pub default_p2p_port: u16,
    pub default_api_port: u16,
    /// First byte of a Base58Check address payload.
    pub address_version: u8,
    /// The easiest target allowed, in compact form.
    pub pow_limit_bits: u32,
    pub genesis_time: u32,
    pub genesis_bits: u32,
    pub genesis_nonce: u32,
    /// Reward of the first block, halved every `halving_interval` blocks.
    pub initial_subsidy: Amount,
    pub halving_interval: u32,
    /// Confirmations (blocks including its own) before a coinbase output can
    /// be spent: a coinbase at height h is spendable in blocks >= h + maturity.
    pub coinbase_maturity: u32,
    /// The block time the difficulty adjustment aims for.
    pub target_spacing_secs: u32,
    /// Blocks per difficulty period.
    pub retarget_interval: u32,
    /// The least total work a chain must show before the node indexes its
    /// headers or downloads its blocks (Bitcoin Core's `nMinimumChainWork`).
    /// Raised at each release to the work of the best chain known then, so a
    /// new node cannot be fed a long low-work chain while it syncs; zero
    /// until a network has a history worth protecting. Operators may
    /// override it with `--minimum-chain-work`.
    pub minimum_chain_work: U256,
    /// Most a single retarget may make the target harder or easier.
    pub max_retarget_factor: u32,
    /// Regtest keeps its minimal difficulty forever.
    pub no_retargeting: bool,
    /// How far ahead of the local clock a block's time may be.
    pub max_future_block_time_secs: u32,
}

impl ChainParams {
    /// The easiest target allowed.
    pub fn pow_limit(&self) -> U256 {
        target_from_compact(self.pow_limit_bits).expect("network pow limit bits are valid")
    }

    /// The genesis block. Its coinbase pays the initial subsidy to the hash of
    /// a phrase, a key nobody has.
    pub fn genesis_block(&self) -> Block {
        let coinbase = Transaction::coinbase(
            0,
            0,
            vec![TxOut {
                amount: self.initial_subsidy,
                owner: PubKeyHash(hash160(GENESIS_PHRASE)),
            }],
        );
        let merkle_root = coinbase.txid();
        Block {
            header: BlockHeader {
                version: BLOCK_VERSION,
                prev_hash: BlockHash::ZERO,
                merkle_root,
                time: self.genesis_time,
                bits: self.genesis_bits,
                nonce: self.genesis_nonce,
            },
            transactions: vec![coinbase],
        }
    }

    /// The genesis block hash, computed once per network.
    pub fn genesis_hash(&self) -> BlockHash {
        static HASHES: [OnceLock<BlockHash>; 3] =
            [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        let slot = match self.network {
            Network::Main => &HASHES[0],
            Network::Test => &HASHES[1],
            Network::Regtest => &HASHES[2],
        };
        *slot.get_or_init(|| self.genesis_block().hash())
    }
}

/// What the genesis coinbase pays to (hashed), and why ChainCore exists.
pub const GENESIS_PHRASE: &[u8] = b"ChainCore genesis: every node holds the same ledger";

const COIN_50: Amount = Amount::from_coins(50);

static MAIN: ChainParams = ChainParams {
    network: Network::Main,
    magic: [0xc4, 0xc0, 0x12, 0xe1],
    default_p2p_port: 7333,
    default_api_port: 7332,
    address_version: 0x00,
    pow_limit_bits: 0x1e0f_ffff,
    genesis_time: 1_763_683_200,
    genesis_bits: 0x1e0f_ffff,
    genesis_nonce: 1_768_829,
    initial_subsidy: COIN_50,
    halving_interval: 210_000,
    coinbase_maturity: 100,
    target_spacing_secs: 10,
    retarget_interval: 10,
    minimum_chain_work: U256::zero(),
    max_retarget_factor: 4,
    no_retargeting: false,
    max_future_block_time_secs: 10 * 60,
};

static TEST: ChainParams = ChainParams {
    network: Network::Test,
    magic: [0xc4, 0xc0, 0x7e, 0x57],
    default_p2p_port: 17333,
    default_api_port: 17332,
    address_version: 0x6f,
    pow_limit_bits: 0x1e0f_ffff,
    genesis_time: 1_767_225_600,
    genesis_bits: 0x1e0f_ffff,
    genesis_nonce: 129_793,
    initial_subsidy: COIN_50,
    halving_interval: 210_000,
    coinbase_maturity: 100,
    target_spacing_secs: 10,
    retarget_interval: 10,
    minimum_chain_work: U256::zero(),
    max_retarget_factor: 4,
    no_retargeting: false,
    max_future_block_time_secs: 10 * 60,
};

static REGTEST: ChainParams = ChainParams {
    network: Network::Regtest,
    magic: [0xc4, 0xc0, 0xde, 0x7e],
    default_p2p_port: 27333,
    default_api_port: 27332,
    address_version: 0x3c,
    // Half of all hashes meet this target: blocks are mined in microseconds.
    pow_limit_bits: 0x207f_ffff,
    genesis_time: 1_767_225_600,
    genesis_bits: 0x207f_ffff,
    genesis_nonce: 1,
    initial_subsidy: COIN_50,
    halving_interval: 150,
    coinbase_maturity: 10,
    target_spacing_secs: 10,
    retarget_interval: 10,
    minimum_chain_work: U256::zero(),
    max_retarget_factor: 4,
    no_retargeting: true,
    max_future_block_time_secs: 10 * 60,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::validation::check_block;

    /// The genesis hashes, as published in the README and the protocol spec.
    const GENESIS_HASHES: [(Network, &str); 3] = [
        (
            Network::Main,
            "00000d29a3111a5cfc69feb81bbb4465eb1935b14bc82a867add713e35a17dbb",
        ),
        (
            Network::Test,
            "00000db87063502b03f6a5725777b0845196f39d5b0c25ecce7df131ba083842",
        ),
        (
            Network::Regtest,
            "663c508d107b7fdd56bc67d066c43f0c455b4adef88ff9933e8ab34e2d77ba50",
        ),
    ];

    #[test]
    fn genesis_blocks_are_recomputed_and_valid() {
        for (network, expected) in GENESIS_HASHES {
            let params = network.params();
            let block = params.genesis_block();
            assert_eq!(block.hash().to_string(), expected, "{network} genesis hash");
            assert_eq!(params.genesis_hash(), block.hash());
            assert_eq!(block.header.merkle_root, block.transactions[0].txid());
            check_block(&block, params).unwrap_or_else(|e| panic!("{network} genesis: {e}"));
        }
    }

    #[test]
    fn networks_are_distinct_on_the_wire_and_in_addresses() {
        for a in Network::ALL {
            assert_eq!(Network::from_magic(a.params().magic), Some(a));
            assert_eq!(a.name().parse::<Network>().unwrap(), a);
            for b in Network::ALL.into_iter().filter(|b| *b != a) {
                assert_ne!(a.params().magic, b.params().magic);
                assert_ne!(a.params().address_version, b.params().address_version);
                assert_ne!(a.params().genesis_hash(), b.params().genesis_hash());
                assert_ne!(a.params().default_p2p_port, b.params().default_p2p_port);
            }
        }
    }
}

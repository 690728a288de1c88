//! Builders of valid chains for tests and benchmarks: keys, signed spends and
//! solved regtest blocks. Not used by the node itself.

use std::collections::HashMap;

use crate::consensus::address::PubKeyHash;
use crate::consensus::amount::Amount;
use crate::consensus::block::Block;
use crate::consensus::keys::PrivateKey;
use crate::consensus::params::{ChainParams, Network};
use crate::consensus::pow::{median_time_past, next_work_required};
use crate::consensus::transaction::{OutPoint, Transaction, TxIn, TxOut, TX_VERSION};
use crate::consensus::validation::{BlockContext, Utxo};
use crate::mining::{assemble_block, solve_block, BlockTemplateHeader};

/// A deterministic key: the scalar is `seed` repeated (seed must be nonzero).
pub fn key(seed: u8) -> PrivateKey {
    PrivateKey::from_bytes(&[seed; 32]).expect("a repeated nonzero byte is a valid scalar")
}

/// A transaction spending `inputs` (each with the output it spends and the key
/// that owns it) to `outputs`, fully signed.
pub fn signed_spend(inputs: &[(OutPoint, TxOut, &PrivateKey)], outputs: Vec<TxOut>) -> Transaction {
    let mut tx = Transaction {
        version: TX_VERSION,
        inputs: inputs
            .iter()
            .map(|(prevout, _, _)| TxIn::Spend {
                prevout: *prevout,
                pubkey: [0u8; 33],
                signature: [0u8; 64],
            })
            .collect(),
        outputs,
        lock_time: 0,
    };
    let spent: Vec<TxOut> = inputs.iter().map(|(_, spent, _)| *spent).collect();
    let keys: Vec<&PrivateKey> = inputs.iter().map(|(_, _, key)| *key).collect();
    tx.sign_inputs(&spent, &keys);
    tx
}

/// An in-memory chain of solved blocks with its UTXO set, for building test
/// blocks that pass contextual validation.
#[derive(Clone)]
pub struct TestChain {
    pub params: &'static ChainParams,
    pub blocks: Vec<Block>,
    pub utxos: HashMap<OutPoint, Utxo>,
}

impl TestChain {
    /// A chain holding only the genesis block of `network`.
    pub fn new(network: Network) -> TestChain {
        let params = network.params();
        let genesis = params.genesis_block();
        let mut chain = TestChain {
            params,
            blocks: Vec::new(),
            utxos: HashMap::new(),
        };
        chain.apply(genesis);
        chain
    }

    pub fn tip(&self) -> &Block {
        self.blocks.last().expect("a test chain always has genesis")
    }

    pub fn height(&self) -> u32 {
        self.blocks.len() as u32 - 1
    }

    /// The context the next block is validated in; `now` is far enough
    /// ahead that any time the builder picks is accepted.
    pub fn next_context(&self) -> BlockContext {
        let height = self.height() + 1;
        let times: Vec<u32> = self
            .blocks
            .iter()
            .rev()
            .take(crate::consensus::limits::MEDIAN_TIME_SPAN)
            .map(|b| b.header.time)
            .collect();
        BlockContext {
            height,
            expected_bits: next_work_required(self.params, height, self.tip().header.bits, |h| {
                self.blocks[h as usize].header.time
            }),
            median_time_past: median_time_past(&times),
            now: self.tip().header.time + 3600,
        }
    }

    /// An unsolved-then-solved block on the tip paying `payout`, with `txs`
    /// and the fees they carry.
    pub fn build_block(&self, payout: PubKeyHash, txs: Vec<Transaction>) -> Block {
        let ctx = self.next_context();
        let fees = txs
            .iter()
            .map(|tx| self.fee_of(tx))
            .fold(Amount::ZERO, |a, f| {
                a.checked_add(f).expect("fees in range")
            });
        let mut block = assemble_block(
            self.params,
            BlockTemplateHeader {
                prev_hash: self.tip().hash(),
                height: ctx.height,
                time: self.tip().header.time + self.params.target_spacing_secs,
                bits: ctx.expected_bits,
            },
            payout,
            0,
            fees,
            txs,
        );
        solve_block(&mut block);
        block
    }

    fn fee_of(&self, tx: &Transaction) -> Amount {
        let inputs = tx
            .inputs
            .iter()
            .filter_map(|i| self.utxos.get(&i.prevout()))
            .map(|u| u.output.amount);
        Amount::checked_sum(inputs)
            .and_then(|i| i.checked_sub(tx.total_output()?))
            .unwrap_or(Amount::ZERO)
    }

    /// Appends a block (assumed valid) and updates the UTXO set.
    pub fn apply(&mut self, block: Block) {
        let height = self.blocks.len() as u32;
        for (index, tx) in block.transactions.iter().enumerate() {
            if index > 0 {
                for input in &tx.inputs {
                    self.utxos.remove(&input.prevout());
                }
            }
            let txid = tx.txid();
            for (vout, output) in tx.outputs.iter().enumerate() {
                self.utxos.insert(
                    OutPoint::new(txid, vout as u32),
                    Utxo {
                        output: *output,
                        height,
                        is_coinbase: index == 0,
                    },
                );
            }
        }
        self.blocks.push(block);
    }

    /// Mines an empty block to `payout` and appends it.
    pub fn mine_empty(&mut self, payout: PubKeyHash) -> &Block {
        let block = self.build_block(payout, Vec::new());
        self.apply(block);
        self.tip()
    }

    /// Spendable outputs owned by `owner` at the next height, oldest first.
    pub fn spendable(&self, owner: PubKeyHash) -> Vec<(OutPoint, Utxo)> {
        let next = self.height() + 1;
        let mut found: Vec<_> = self
            .utxos
            .iter()
            .filter(|(_, u)| u.output.owner == owner)
            .filter(|(_, u)| !u.is_coinbase || next >= u.height + self.params.coinbase_maturity)
            .map(|(o, u)| (*o, *u))
            .collect();
        found.sort_by_key(|(o, u)| (u.height, *o));
        found
    }
}

/// Base units each generated payment sends, and each generated fee.
const BUSY_PAYMENT: u64 = 1_000;
const BUSY_FEE: u64 = 100;

/// A regtest chain of `maturity + 2` setup blocks followed by `busy_blocks`
/// blocks of `txs_per_block` signed one-input, two-output transactions each:
/// lane i spends lane i's change from the previous block, pays a small
/// amount to a fresh address (`payee`) and keeps the change. Signing runs in
/// parallel on rayon's pool.
pub fn busy_chain(busy_blocks: usize, txs_per_block: usize) -> TestChain {
    use rayon::prelude::*;
    let owner = key(1);
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..=chain.params.coinbase_maturity {
        chain.mine_empty(owner.pubkey_hash());
    }
    let coinbase = chain.blocks[1].transactions[0].clone();
    let lane_value = (coinbase.outputs[0].amount.units() - BUSY_FEE) / txs_per_block as u64;
    let fan_out = signed_spend(
        &[(
            OutPoint::new(coinbase.txid(), 0),
            coinbase.outputs[0],
            &owner,
        )],
        vec![
            TxOut {
                amount: Amount::from_units(lane_value),
                owner: owner.pubkey_hash(),
            };
            txs_per_block
        ],
    );
    let mut lanes: Vec<(OutPoint, TxOut)> = (0..txs_per_block)
        .map(|i| (OutPoint::new(fan_out.txid(), i as u32), fan_out.outputs[i]))
        .collect();
    let block = chain.build_block(owner.pubkey_hash(), vec![fan_out]);
    chain.apply(block);
    for b in 0..busy_blocks {
        let txs: Vec<Transaction> = lanes
            .par_iter()
            .enumerate()
            .map(|(i, (outpoint, spent))| {
                let change = spent.amount.units() - BUSY_PAYMENT - BUSY_FEE;
                signed_spend(
                    &[(*outpoint, *spent, &owner)],
                    vec![
                        TxOut {
                            amount: Amount::from_units(BUSY_PAYMENT),
                            owner: payee((b * txs_per_block + i) as u64),
                        },
                        TxOut {
                            amount: Amount::from_units(change),
                            owner: owner.pubkey_hash(),
                        },
                    ],
                )
            })
            .collect();
        lanes = txs
            .iter()
            .map(|tx| (OutPoint::new(tx.txid(), 1), tx.outputs[1]))
            .collect();
        let block = chain.build_block(owner.pubkey_hash(), txs);
        chain.apply(block);
    }
    chain
}

/// A deterministic address hash nobody holds the key of, number `n`.
pub fn payee(n: u64) -> PubKeyHash {
    PubKeyHash(crate::consensus::hash::hash160(&n.to_le_bytes()))
}

/// A regtest chain whose UTXO set holds `utxos` outputs of 1 000 units,
/// output `i` owned by `owner_of(i)`: key(1)'s first mature coinbase funds
/// transactions of 2 000 outputs each, 16 to a block.
pub fn fan_out_chain(utxos: usize, owner_of: impl Fn(usize) -> PubKeyHash + Sync) -> TestChain {
    use rayon::prelude::*;
    const OUTPUTS_PER_TX: usize = 2_000;
    const OUTPUT_VALUE: u64 = 1_000;
    let owner = key(1);
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..=chain.params.coinbase_maturity {
        chain.mine_empty(owner.pubkey_hash());
    }
    let funders = utxos.div_ceil(OUTPUTS_PER_TX);
    let coinbase = chain.blocks[1].transactions[0].clone();
    let funder_value = (OUTPUTS_PER_TX as u64 + 1) * OUTPUT_VALUE;
    let mut change = coinbase.outputs[0].amount.units() - funder_value * funders as u64;
    change -= 1_000;
    let mut outputs = vec![
        TxOut {
            amount: Amount::from_units(funder_value),
            owner: owner.pubkey_hash()
        };
        funders
    ];
    outputs.push(TxOut {
        amount: Amount::from_units(change),
        owner: owner.pubkey_hash(),
    });
    let funding = signed_spend(
        &[(
            OutPoint::new(coinbase.txid(), 0),
            coinbase.outputs[0],
            &owner,
        )],
        outputs,
    );
    let block = chain.build_block(owner.pubkey_hash(), vec![funding.clone()]);
    chain.apply(block);
    let txs: Vec<Transaction> = (0..funders)
        .into_par_iter()
        .map(|f| {
            let outputs = (0..OUTPUTS_PER_TX.min(utxos - f * OUTPUTS_PER_TX))
                .map(|i| TxOut {
                    amount: Amount::from_units(OUTPUT_VALUE),
                    owner: owner_of(f * OUTPUTS_PER_TX + i),
                })
                .collect();
            signed_spend(
                &[(
                    OutPoint::new(funding.txid(), f as u32),
                    funding.outputs[f],
                    &owner,
                )],
                outputs,
            )
        })
        .collect();
    // About 17 fan-out transactions (56 KB each) fit in a block.
    for chunk in txs.chunks(16) {
        let block = chain.build_block(owner.pubkey_hash(), chunk.to_vec());
        chain.apply(block);
    }
    chain
}

/// Outputs of the single transaction in `big_block_chain`'s last block:
/// as many as fit in a block beside the header, the coinbase and the
/// spend's input, with room to spare.
pub const BIG_BLOCK_OUTPUTS: usize =
    (crate::consensus::limits::MAX_BLOCK_SIZE - 4_000) / crate::consensus::limits::OUTPUT_LEN;

/// A regtest chain whose tip is a block of almost `MAX_BLOCK_SIZE` bytes:
/// `coinbase_maturity + 1` empty blocks mined to key(1), then one block
/// with one transaction spending the first coinbase into
/// `BIG_BLOCK_OUTPUTS` outputs of 1 000 units (the first takes the change).
pub fn big_block_chain() -> TestChain {
    const OUTPUT_VALUE: u64 = 1_000;
    const FEE: u64 = 10_000;
    let owner = key(1);
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..=chain.params.coinbase_maturity {
        chain.mine_empty(owner.pubkey_hash());
    }
    let coinbase = chain.blocks[1].transactions[0].clone();
    let mut outputs = vec![
        TxOut {
            amount: Amount::from_units(OUTPUT_VALUE),
            owner: owner.pubkey_hash(),
        };
        BIG_BLOCK_OUTPUTS
    ];
    outputs[0].amount = Amount::from_units(
        coinbase.outputs[0].amount.units() - OUTPUT_VALUE * (BIG_BLOCK_OUTPUTS as u64 - 1) - FEE,
    );
    let spend = signed_spend(
        &[(
            OutPoint::new(coinbase.txid(), 0),
            coinbase.outputs[0],
            &owner,
        )],
        outputs,
    );
    let block = chain.build_block(owner.pubkey_hash(), vec![spend]);
    chain.apply(block);
    chain
}

#[cfg(feature = "node")]
pub mod peer;
pub mod process;

/// A regtest chain in `dir`, without fsync per block (tests and benchmarks).
#[cfg(feature = "node")]
pub fn regtest_chain(dir: &std::path::Path) -> crate::chain::Chain {
    crate::chain::Chain::open(
        dir,
        Network::Regtest,
        crate::chain::ChainOptions {
            sync_writes: false,
            ..crate::chain::ChainOptions::default()
        },
    )
    .expect("open a regtest chain")
}

/// `count` solved regtest headers building on `parent` (whose time is
/// `parent_time`), `spacing` seconds apart. `branch` goes into the merkle
/// root so that different branches never share a hash. Headers only: no
/// block bodies exist for them.
pub fn header_chain(
    parent: crate::consensus::hash::BlockHash,
    parent_time: u32,
    count: usize,
    spacing: u32,
    branch: u8,
) -> Vec<crate::consensus::block::BlockHeader> {
    let params = Network::Regtest.params();
    let target =
        crate::consensus::pow::target_from_compact(params.pow_limit_bits).expect("valid bits");
    let mut headers = Vec::with_capacity(count);
    let (mut prev, mut time) = (parent, parent_time);
    for _ in 0..count {
        time += spacing;
        let mut header = crate::consensus::block::BlockHeader {
            version: crate::consensus::block::BLOCK_VERSION,
            prev_hash: prev,
            merkle_root: crate::consensus::hash::Hash256([branch; 32]),
            time,
            bits: params.pow_limit_bits,
            nonce: 0,
        };
        assert!(crate::mining::grind_nonce(
            &mut header,
            &target,
            0,
            u32::MAX
        ));
        prev = header.hash();
        headers.push(header);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::limits::MAX_BLOCK_SIZE;
    use crate::encoding::Encode;

    #[test]
    fn big_block_chain_ends_in_a_valid_block_of_almost_the_size_limit() {
        let chain = big_block_chain();
        let big = chain.tip();
        let size = big.encoded_len();
        assert!(size <= MAX_BLOCK_SIZE, "{size} bytes");
        assert!(size > MAX_BLOCK_SIZE - 5_000, "{size} bytes");
        crate::consensus::validation::check_block(big, chain.params).unwrap();
        assert_eq!(big.transactions[1].outputs.len(), BIG_BLOCK_OUTPUTS);
    }
}

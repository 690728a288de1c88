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
    for (index, (_, spent, key)) in inputs.iter().enumerate() {
        tx.sign_input(index, spent, key);
    }
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

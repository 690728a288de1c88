//! Block assembly and nonce search. Pure functions: the multi-core miner and
//! the node's block producer build on them.

use primitive_types::U256;

use crate::consensus::address::PubKeyHash;
use crate::consensus::amount::Amount;
use crate::consensus::block::{Block, BlockHeader, BLOCK_VERSION};
use crate::consensus::hash::BlockHash;
use crate::consensus::merkle::merkle_root;
use crate::consensus::params::ChainParams;
use crate::consensus::pow::{block_subsidy, meets_target, target_from_compact};
use crate::consensus::transaction::{Transaction, TxOut};

/// What a new block needs to know about its parent and its own place.
#[derive(Debug, Clone, Copy)]
pub struct BlockTemplateHeader {
    pub prev_hash: BlockHash,
    pub height: u32,
    pub time: u32,
    pub bits: u32,
}

/// Builds an unsolved block: a coinbase paying subsidy plus `fees` to
/// `payout`, then `transactions` in the given order.
pub fn assemble_block(
    params: &ChainParams,
    template: BlockTemplateHeader,
    payout: PubKeyHash,
    extra_nonce: u64,
    fees: Amount,
    transactions: Vec<Transaction>,
) -> Block {
    let reward = block_subsidy(params, template.height)
        .checked_add(fees)
        .expect("subsidy plus valid fees stays within the money range");
    let coinbase = Transaction::coinbase(
        template.height,
        extra_nonce,
        vec![TxOut {
            amount: reward,
            owner: payout,
        }],
    );
    let mut all = Vec::with_capacity(transactions.len() + 1);
    all.push(coinbase);
    all.extend(transactions);
    let (root, _) = merkle_root(&all.iter().map(Transaction::txid).collect::<Vec<_>>());
    Block {
        header: BlockHeader {
            version: BLOCK_VERSION,
            prev_hash: template.prev_hash,
            merkle_root: root,
            time: template.time,
            bits: template.bits,
            nonce: 0,
        },
        transactions: all,
    }
}

/// Tries nonces `start..start + count` on `header`; on success leaves the
/// winning nonce in the header and returns true.
pub fn grind_nonce(header: &mut BlockHeader, target: &U256, start: u32, count: u32) -> bool {
    let mut bytes = header.to_array();
    for nonce in start..start.saturating_add(count) {
        bytes[76..80].copy_from_slice(&nonce.to_le_bytes());
        if meets_target(&crate::consensus::hash::sha256d(&bytes), target) {
            header.nonce = nonce;
            return true;
        }
    }
    false
}

/// Solves `block` by trying every nonce, then bumping the time by a second
/// (which changes the header) when the nonce space runs out. Meant for easy
/// targets (regtest, tests); real mining uses the multi-core miner.
pub fn solve_block(block: &mut Block) {
    let target = target_from_compact(block.header.bits).expect("template bits are valid");
    while !grind_nonce(&mut block.header, &target, 0, u32::MAX) {
        block.header.time += 1;
    }
}

/// Gives `block` a new header to search once its nonce space is exhausted:
/// bumps the coinbase's extra nonce and recomputes the merkle root.
pub fn roll_extra_nonce(block: &mut Block) {
    use crate::consensus::transaction::TxIn;
    let coinbase = block
        .transactions
        .first_mut()
        .expect("a template has a coinbase");
    match coinbase.inputs.as_mut_slice() {
        [TxIn::Coinbase { extra_nonce, .. }] => *extra_nonce = extra_nonce.wrapping_add(1),
        _ => panic!("the first transaction of a template is a coinbase"),
    }
    block.header.merkle_root = merkle_root(&block.txids()).0;
    block.header.nonce = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::params::Network;
    use crate::testkit::{payee, TestChain};

    #[test]
    fn rolling_the_extra_nonce_changes_the_coinbase_and_commits_to_it() {
        let chain = TestChain::new(Network::Regtest);
        let mut block = chain.build_block(payee(1), vec![]);
        let (before_root, before_txid) = (block.header.merkle_root, block.transactions[0].txid());
        roll_extra_nonce(&mut block);
        assert_ne!(block.transactions[0].txid(), before_txid);
        assert_ne!(block.header.merkle_root, before_root);
        assert_eq!(block.header.merkle_root, merkle_root(&block.txids()).0);
        assert_eq!(
            block.transactions[0].coinbase_height(),
            Some(chain.height() + 1)
        );
    }
}

//! One test per validation rule: a valid block passes, and each violation is
//! rejected with that rule's error.

use super::*;
use crate::consensus::amount::MAX_MONEY;
use crate::consensus::block::Block;
use crate::consensus::hash::sha256d;
use crate::consensus::keys::PrivateKey;
use crate::consensus::merkle::merkle_root;
use crate::consensus::params::Network;
use crate::consensus::transaction::TX_VERSION;
use crate::mining::solve_block;
use crate::testkit::{key, signed_spend, TestChain};

/// A regtest chain where key(1) has mature coinbase outputs to spend.
fn funded_chain() -> (TestChain, PrivateKey) {
    let owner = key(1);
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..12 {
        chain.mine_empty(owner.pubkey_hash());
    }
    (chain, owner)
}

fn pay(to: &PrivateKey, units: u64) -> TxOut {
    TxOut {
        amount: Amount::from_units(units),
        owner: to.pubkey_hash(),
    }
}

/// A signed transaction spending the oldest spendable output of `from`,
/// paying `units` to key(2) and leaving the rest as fee.
fn spend_oldest(chain: &TestChain, from: &PrivateKey, units: u64) -> Transaction {
    let (outpoint, utxo) = chain.spendable(from.pubkey_hash())[0];
    signed_spend(&[(outpoint, utxo.output, from)], vec![pay(&key(2), units)])
}

/// Recomputes the merkle root and re-solves the header after a test edit.
fn reseal(mut block: Block) -> Block {
    block.header.merkle_root = merkle_root(&block.txids()).0;
    solve_block(&mut block);
    block
}

fn validate(chain: &TestChain, block: &Block) -> Result<BlockSpends, BlockError> {
    check_block(block, chain.params)?;
    check_block_contextual(
        block,
        &chain.next_context(),
        chain.params,
        &chain.utxos,
        SignatureChecks::On,
    )
}

fn tx_error(result: Result<BlockSpends, BlockError>) -> TxError {
    match result {
        Err(BlockError::InvalidTransaction { error, .. }) => error,
        other => panic!("expected an invalid transaction, got {other:?}"),
    }
}

#[test]
fn valid_block_with_spends_passes_and_reports_undo_data() {
    let (chain, owner) = funded_chain();
    let tx = spend_oldest(&chain, &owner, 10 * 100_000_000);
    let (outpoint, utxo) = chain.spendable(owner.pubkey_hash())[0];
    let block = chain.build_block(owner.pubkey_hash(), vec![tx]);
    let spends = validate(&chain, &block).expect("valid block");
    assert_eq!(spends.spent, vec![(outpoint, utxo)]);
    assert_eq!(spends.fees, Amount::from_coins(40));
}

#[test]
fn spending_an_output_created_earlier_in_the_block_is_valid() {
    let (chain, owner) = funded_chain();
    let first = spend_oldest(&chain, &owner, 30 * 100_000_000);
    let second = signed_spend(
        &[(OutPoint::new(first.txid(), 0), first.outputs[0], &key(2))],
        vec![pay(&key(3), 29 * 100_000_000)],
    );
    let block = chain.build_block(owner.pubkey_hash(), vec![first, second]);
    assert!(validate(&chain, &block).is_ok());
}

#[test]
fn output_spent_twice_in_a_block_is_rejected() {
    let (chain, owner) = funded_chain();
    let a = spend_oldest(&chain, &owner, 1_000);
    let b = spend_oldest(&chain, &owner, 2_000);
    let block = chain.build_block(owner.pubkey_hash(), vec![a, b]);
    assert!(matches!(
        tx_error(validate(&chain, &block)),
        TxError::MissingOrSpentInput { .. }
    ));
}

#[test]
fn unknown_input_is_rejected() {
    let (chain, owner) = funded_chain();
    let missing = OutPoint::new(sha256d(b"nowhere"), 0);
    let tx = signed_spend(&[(missing, pay(&owner, 5), &owner)], vec![pay(&owner, 1)]);
    let block = chain.build_block(owner.pubkey_hash(), vec![tx]);
    assert_eq!(
        tx_error(validate(&chain, &block)),
        TxError::MissingOrSpentInput { outpoint: missing }
    );
}

#[test]
fn immature_coinbase_spend_is_rejected() {
    let (chain, owner) = funded_chain();
    // The newest coinbase (height 12) matures at height 22; the next block is 13.
    let tip = chain.tip();
    let coinbase = &tip.transactions[0];
    let outpoint = OutPoint::new(coinbase.txid(), 0);
    let tx = signed_spend(
        &[(outpoint, coinbase.outputs[0], &owner)],
        vec![pay(&owner, 1)],
    );
    let block = chain.build_block(owner.pubkey_hash(), vec![tx]);
    assert_eq!(
        tx_error(validate(&chain, &block)),
        TxError::ImmatureCoinbase {
            outpoint,
            coinbase_height: 12,
            spend_height: 13,
            maturity: 10
        }
    );
}

#[test]
fn signature_by_a_key_that_does_not_own_the_output_is_rejected() {
    let (chain, owner) = funded_chain();
    let thief = key(9);
    let (outpoint, utxo) = chain.spendable(owner.pubkey_hash())[0];
    let tx = signed_spend(&[(outpoint, utxo.output, &thief)], vec![pay(&thief, 1_000)]);
    let block = chain.build_block(owner.pubkey_hash(), vec![tx]);
    assert_eq!(
        tx_error(validate(&chain, &block)),
        TxError::WrongOwner {
            index: 0,
            owner: owner.pubkey_hash(),
            actual: thief.pubkey_hash()
        }
    );
}

#[test]
fn owner_key_with_a_forged_signature_is_rejected() {
    let (chain, owner) = funded_chain();
    let mut tx = spend_oldest(&chain, &owner, 1_000);
    // Re-point the payment after signing: the signature no longer matches.
    tx.outputs[0].owner = key(9).pubkey_hash();
    let block = chain.build_block(owner.pubkey_hash(), vec![tx]);
    assert_eq!(
        tx_error(validate(&chain, &block)),
        TxError::BadSignature {
            index: 0,
            reason: SignatureError::Mismatch
        }
    );
}

#[test]
fn signer_told_a_wrong_amount_for_another_input_signs_nothing_valid() {
    let (chain, owner) = funded_chain();
    let coins = chain.spendable(owner.pubkey_hash());
    let (first, second) = (coins[0], coins[1]);
    let mut tx = signed_spend(
        &[
            (first.0, first.1.output, &owner),
            (second.0, second.1.output, &owner),
        ],
        vec![pay(&key(2), 1_000)],
    );
    // Input 0 is signed by a device that was told input 1 spends 1 unit.
    let mut told = [first.1.output, second.1.output];
    told[1].amount = Amount::from_units(1);
    let mut misled = tx.clone();
    misled.sign_inputs(&told, &[&owner, &owner]);
    tx.inputs[0] = misled.inputs[0].clone();
    let block = chain.build_block(owner.pubkey_hash(), vec![tx]);
    assert_eq!(
        tx_error(validate(&chain, &block)),
        TxError::BadSignature {
            index: 0,
            reason: SignatureError::Mismatch
        }
    );
}

#[test]
fn outputs_above_inputs_are_rejected() {
    let (chain, owner) = funded_chain();
    let tx = spend_oldest(&chain, &owner, 50 * 100_000_000 + 1);
    let block = chain.build_block(owner.pubkey_hash(), vec![tx]);
    assert_eq!(
        tx_error(validate(&chain, &block)),
        TxError::InputsBelowOutputs {
            inputs: 50 * 100_000_000,
            outputs: 50 * 100_000_000 + 1
        }
    );
}

#[test]
fn coinbase_claiming_more_than_subsidy_and_fees_is_rejected() {
    let (chain, owner) = funded_chain();
    let mut block = chain.build_block(owner.pubkey_hash(), vec![]);
    block.transactions[0].outputs[0].amount = Amount::from_units(50 * 100_000_000 + 1);
    let block = reseal(block);
    assert_eq!(
        validate(&chain, &block).unwrap_err(),
        BlockError::CoinbaseTooLarge {
            claimed: 50 * 100_000_000 + 1,
            allowed: 50 * 100_000_000
        }
    );
}

#[test]
fn coinbase_with_the_wrong_height_is_rejected() {
    let (chain, owner) = funded_chain();
    let mut block = chain.build_block(owner.pubkey_hash(), vec![]);
    block.transactions[0].inputs[0] = TxIn::Coinbase {
        height: 5,
        extra_nonce: 0,
    };
    let block = reseal(block);
    assert_eq!(
        validate(&chain, &block).unwrap_err(),
        BlockError::BadCoinbaseHeight {
            expected: 13,
            found: 5
        }
    );
}

#[test]
fn non_final_transaction_is_rejected() {
    let (chain, owner) = funded_chain();
    let (outpoint, utxo) = chain.spendable(owner.pubkey_hash())[0];
    let mut tx = signed_spend(&[(outpoint, utxo.output, &owner)], vec![pay(&owner, 1)]);
    tx.lock_time = 13; // final only in blocks above height 13
    tx.sign_inputs(&[utxo.output], &[&owner]);
    let block = chain.build_block(owner.pubkey_hash(), vec![tx.clone()]);
    assert_eq!(
        tx_error(validate(&chain, &block)),
        TxError::NotFinal { lock_time: 13 }
    );
    tx.lock_time = 12;
    tx.sign_inputs(&[utxo.output], &[&owner]);
    let block = chain.build_block(owner.pubkey_hash(), vec![tx]);
    assert!(validate(&chain, &block).is_ok());
}

#[test]
fn wrong_difficulty_bits_are_rejected() {
    let chain = TestChain::new(Network::Regtest);
    let mut block = chain.build_block(key(1).pubkey_hash(), vec![]);
    block.header.bits = 0x2007_ffff; // harder than required, still a valid target
    let block = reseal(block);
    assert_eq!(
        validate(&chain, &block).unwrap_err(),
        BlockError::BadBits {
            expected: 0x207f_ffff,
            found: 0x2007_ffff
        }
    );
}

#[test]
fn time_not_after_median_time_past_is_rejected() {
    let (chain, owner) = funded_chain();
    let mut block = chain.build_block(owner.pubkey_hash(), vec![]);
    let mtp = chain.next_context().median_time_past;
    block.header.time = mtp;
    let block = reseal(block);
    assert_eq!(
        validate(&chain, &block).unwrap_err(),
        BlockError::TimeTooOld {
            time: mtp,
            median_time_past: mtp
        }
    );
}

#[test]
fn time_too_far_in_the_future_is_rejected() {
    let chain = TestChain::new(Network::Regtest);
    let mut block = chain.build_block(key(1).pubkey_hash(), vec![]);
    let ctx = chain.next_context();
    let max = ctx.now + chain.params.max_future_block_time_secs;
    block.header.time = max + 1;
    let block = reseal(block);
    assert_eq!(
        validate(&chain, &block).unwrap_err(),
        BlockError::TimeTooNew { time: max + 1, max }
    );
}

#[test]
fn hash_above_target_is_rejected() {
    let chain = TestChain::new(Network::Regtest);
    let mut block = chain.build_block(key(1).pubkey_hash(), vec![]);
    let target = crate::consensus::pow::target_from_compact(block.header.bits).unwrap();
    while crate::consensus::pow::meets_target(&block.hash(), &target) {
        block.header.nonce = block.header.nonce.wrapping_add(1);
    }
    assert!(matches!(
        check_block(&block, chain.params),
        Err(BlockError::HighHash { .. })
    ));
}

#[test]
fn unusable_or_too_easy_bits_are_rejected() {
    let chain = TestChain::new(Network::Main);
    let mut block = chain.tip().clone();
    block.header.bits = 0x0480_0001;
    assert!(matches!(
        check_header(&block.header, chain.params),
        Err(BlockError::BadBitsEncoding(CompactTargetError::Negative(_)))
    ));
    block.header.bits = Network::Regtest.params().pow_limit_bits;
    assert_eq!(
        check_header(&block.header, chain.params),
        Err(BlockError::BitsAboveLimit { bits: 0x207f_ffff })
    );
}

#[test]
fn block_without_transactions_is_rejected() {
    let chain = TestChain::new(Network::Regtest);
    let mut block = chain.build_block(key(1).pubkey_hash(), vec![]);
    block.transactions.clear();
    let block = reseal(block);
    assert_eq!(
        check_block(&block, chain.params),
        Err(BlockError::NoTransactions)
    );
}

#[test]
fn oversized_block_is_rejected() {
    let (chain, owner) = funded_chain();
    // Many outputs in one transaction push the block past the size limit.
    let (outpoint, utxo) = chain.spendable(owner.pubkey_hash())[0];
    let outputs = vec![pay(&owner, 1); MAX_BLOCK_SIZE / 28 + 1];
    let tx = signed_spend(&[(outpoint, utxo.output, &owner)], outputs);
    let block = chain.build_block(owner.pubkey_hash(), vec![tx]);
    assert!(matches!(
        check_block(&block, chain.params),
        Err(BlockError::TooLarge { .. })
    ));
}

#[test]
fn first_transaction_must_be_a_coinbase() {
    let (chain, owner) = funded_chain();
    let mut block = chain.build_block(owner.pubkey_hash(), vec![spend_oldest(&chain, &owner, 5)]);
    block.transactions.swap(0, 1);
    let block = reseal(block);
    assert_eq!(
        check_block(&block, chain.params),
        Err(BlockError::FirstNotCoinbase)
    );
}

#[test]
fn second_coinbase_is_rejected() {
    let chain = TestChain::new(Network::Regtest);
    let mut block = chain.build_block(key(1).pubkey_hash(), vec![]);
    let extra = Transaction::coinbase(1, 7, vec![pay(&key(1), 1)]);
    block.transactions.push(extra);
    let block = reseal(block);
    assert_eq!(
        check_block(&block, chain.params),
        Err(BlockError::ExtraCoinbase { index: 1 })
    );
}

#[test]
fn wrong_merkle_root_is_rejected() {
    let chain = TestChain::new(Network::Regtest);
    let mut block = chain.build_block(key(1).pubkey_hash(), vec![]);
    let computed = block.header.merkle_root;
    block.header.merkle_root = sha256d(b"wrong");
    solve_block(&mut block);
    assert_eq!(
        check_block(&block, chain.params),
        Err(BlockError::BadMerkleRoot {
            header: sha256d(b"wrong"),
            computed
        })
    );
}

#[test]
fn mutated_merkle_tree_is_rejected() {
    let (chain, owner) = funded_chain();
    let a = spend_oldest(&chain, &owner, 5);
    let (outpoint, utxo) = chain.spendable(owner.pubkey_hash())[1];
    let b = signed_spend(&[(outpoint, utxo.output, &owner)], vec![pay(&owner, 5)]);
    // Leaves [coinbase, a, b, b]: identical siblings, the CVE-2012-2459 shape
    // whose root equals that of [coinbase, a, b]. It is flagged as mutated
    // before txid uniqueness is looked at.
    let block = reseal(chain.build_block(owner.pubkey_hash(), vec![a, b.clone(), b]));
    assert_eq!(
        check_block(&block, chain.params),
        Err(BlockError::MutatedMerkle)
    );
}

#[test]
fn duplicate_transaction_in_different_positions_is_rejected() {
    let (chain, owner) = funded_chain();
    let a = spend_oldest(&chain, &owner, 5);
    let (outpoint, utxo) = chain.spendable(owner.pubkey_hash())[1];
    let b = signed_spend(&[(outpoint, utxo.output, &owner)], vec![pay(&owner, 5)]);
    // [coinbase, a, b, a]: no identical siblings, but `a` appears twice.
    let block = reseal(chain.build_block(owner.pubkey_hash(), vec![a.clone(), b, a.clone()]));
    assert_eq!(
        check_block(&block, chain.params),
        Err(BlockError::DuplicateTransaction { txid: a.txid() })
    );
}

#[test]
fn invalid_transaction_inside_a_block_names_its_index() {
    let (chain, owner) = funded_chain();
    let mut tx = spend_oldest(&chain, &owner, 5);
    tx.outputs.clear();
    let block = reseal(chain.build_block(owner.pubkey_hash(), vec![tx.clone()]));
    assert_eq!(
        check_block(&block, chain.params),
        Err(BlockError::InvalidTransaction {
            index: 1,
            txid: tx.txid(),
            error: TxError::NoOutputs
        })
    );
}

fn plain_tx(inputs: Vec<TxIn>, outputs: Vec<TxOut>) -> Transaction {
    Transaction {
        version: TX_VERSION,
        inputs,
        outputs,
        lock_time: 0,
    }
}

fn dummy_spend(n: u8) -> TxIn {
    TxIn::Spend {
        prevout: OutPoint::new(sha256d(&[n]), 0),
        pubkey: [2u8; 33],
        signature: [0u8; 64],
    }
}

#[test]
fn transaction_without_inputs_is_rejected() {
    let tx = plain_tx(vec![], vec![pay(&key(1), 1)]);
    assert_eq!(check_transaction(&tx), Err(TxError::NoInputs));
}

#[test]
fn transaction_without_outputs_is_rejected() {
    let tx = plain_tx(vec![dummy_spend(1)], vec![]);
    assert_eq!(check_transaction(&tx), Err(TxError::NoOutputs));
}

#[test]
fn oversized_transaction_is_rejected() {
    let inputs = (0..=(MAX_TX_SIZE / 133) as u32)
        .map(|i| TxIn::Spend {
            prevout: OutPoint::new(sha256d(&i.to_le_bytes()), 0),
            pubkey: [2u8; 33],
            signature: [0u8; 64],
        })
        .collect();
    let tx = plain_tx(inputs, vec![pay(&key(1), 1)]);
    assert!(matches!(
        check_transaction(&tx),
        Err(TxError::TooLarge { .. })
    ));
}

#[test]
fn output_above_max_money_is_rejected() {
    let tx = plain_tx(vec![dummy_spend(1)], vec![pay(&key(1), MAX_MONEY + 1)]);
    assert_eq!(
        check_transaction(&tx),
        Err(TxError::OutputOutOfRange {
            index: 0,
            amount: MAX_MONEY + 1
        })
    );
}

#[test]
fn outputs_summing_above_max_money_are_rejected() {
    let tx = plain_tx(
        vec![dummy_spend(1)],
        vec![pay(&key(1), MAX_MONEY), pay(&key(1), 1)],
    );
    assert_eq!(check_transaction(&tx), Err(TxError::TotalOutputOutOfRange));
}

#[test]
fn duplicate_input_is_rejected() {
    let tx = plain_tx(vec![dummy_spend(1), dummy_spend(1)], vec![pay(&key(1), 1)]);
    assert_eq!(
        check_transaction(&tx),
        Err(TxError::DuplicateInput {
            outpoint: OutPoint::new(sha256d(&[1]), 0)
        })
    );
}

#[test]
fn coinbase_input_beside_other_inputs_is_rejected() {
    let coinbase_input = TxIn::Coinbase {
        height: 1,
        extra_nonce: 0,
    };
    let tx = plain_tx(vec![dummy_spend(1), coinbase_input], vec![pay(&key(1), 1)]);
    assert_eq!(
        check_transaction(&tx),
        Err(TxError::UnexpectedCoinbaseInput { index: 1 })
    );
}

#[test]
fn spend_of_the_null_outpoint_is_rejected() {
    let input = TxIn::Spend {
        prevout: OutPoint::NULL,
        pubkey: [2u8; 33],
        signature: [0u8; 64],
    };
    let tx = plain_tx(vec![input], vec![pay(&key(1), 1)]);
    assert_eq!(
        check_transaction(&tx),
        Err(TxError::NullPrevout { index: 0 })
    );
}

#[test]
fn coinbase_cannot_be_checked_as_a_spend() {
    let params = Network::Regtest.params();
    let tx = Transaction::coinbase(1, 0, vec![pay(&key(1), 1)]);
    assert_eq!(
        check_tx_spends(&tx, &[], 1, params),
        Err(TxError::UnexpectedCoinbase)
    );
}

fn rich_utxo(owner: &PrivateKey) -> Utxo {
    Utxo {
        output: TxOut {
            amount: Amount::MAX,
            owner: owner.pubkey_hash(),
        },
        height: 0,
        is_coinbase: false,
    }
}

#[test]
fn inputs_summing_above_max_money_are_rejected() {
    let params = Network::Regtest.params();
    let owner = key(1);
    let tx = plain_tx(
        vec![dummy_spend(1), dummy_spend(2)]
            .into_iter()
            .map(|i| match i {
                TxIn::Spend {
                    prevout, signature, ..
                } => TxIn::Spend {
                    prevout,
                    pubkey: owner.public_key(),
                    signature,
                },
                other => other,
            })
            .collect(),
        vec![pay(&owner, 1)],
    );
    let spent = [rich_utxo(&owner), rich_utxo(&owner)];
    assert_eq!(
        check_tx_spends(&tx, &spent, 1, params),
        Err(TxError::InputsOutOfRange)
    );
}

#[test]
fn fees_summing_above_max_money_are_rejected() {
    let (chain, owner) = funded_chain();
    let mut view = chain.utxos.clone();
    let a = OutPoint::new(sha256d(b"rich a"), 0);
    let b = OutPoint::new(sha256d(b"rich b"), 0);
    view.insert(a, rich_utxo(&owner));
    view.insert(b, rich_utxo(&owner));
    let tx_a = signed_spend(
        &[(a, rich_utxo(&owner).output, &owner)],
        vec![pay(&owner, 1)],
    );
    let tx_b = signed_spend(
        &[(b, rich_utxo(&owner).output, &owner)],
        vec![pay(&owner, 1)],
    );
    let block = reseal(chain.build_block(owner.pubkey_hash(), vec![tx_a, tx_b]));
    check_block(&block, chain.params).unwrap();
    assert_eq!(
        check_block_contextual(
            &block,
            &chain.next_context(),
            chain.params,
            &view,
            SignatureChecks::On
        ),
        Err(BlockError::FeesOutOfRange)
    );
}

struct FailingView;

impl UtxoView for FailingView {
    fn utxo(&self, _: &OutPoint) -> Result<Option<Utxo>, UtxoViewError> {
        Err(UtxoViewError("disk on fire".into()))
    }
}

#[test]
fn utxo_lookup_failure_is_not_a_consensus_failure() {
    let (chain, owner) = funded_chain();
    let block = chain.build_block(owner.pubkey_hash(), vec![spend_oldest(&chain, &owner, 5)]);
    let err = check_block_contextual(
        &block,
        &chain.next_context(),
        chain.params,
        &FailingView,
        SignatureChecks::On,
    )
    .unwrap_err();
    assert_eq!(
        err,
        BlockError::UtxoView(UtxoViewError("disk on fire".into()))
    );
    assert!(!err.is_consensus_failure());
}

#[test]
fn signature_checks_off_skips_only_signatures() {
    let (chain, owner) = funded_chain();
    let mut tx = spend_oldest(&chain, &owner, 1_000);
    tx.outputs[0].owner = key(9).pubkey_hash();
    let block = chain.build_block(owner.pubkey_hash(), vec![tx]);
    assert!(check_block_contextual(
        &block,
        &chain.next_context(),
        chain.params,
        &chain.utxos,
        SignatureChecks::Off
    )
    .is_ok());
}

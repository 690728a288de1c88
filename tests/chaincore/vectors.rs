//! The committed test vectors in `tests/data/vectors.json` are recomputed
//! from scratch: a signed transaction and a block with their exact bytes,
//! txid, sighash, merkle root and block hash. Set
//! `CHAINCORE_UPDATE_VECTORS=1` to rewrite the file after a deliberate format
//! change (and update the protocol spec with it).

use chaincore::consensus::amount::Amount;
use chaincore::consensus::block::Block;
use chaincore::consensus::hash::sha256d;
use chaincore::consensus::params::Network;
use chaincore::consensus::transaction::{sighash, OutPoint, Transaction, TxOut};
use chaincore::consensus::validation::{check_block, check_block_contextual, SignatureChecks};
use chaincore::encoding::{Decode, Encode};
use chaincore::testkit::{key, signed_spend, TestChain};
use serde_json::{json, Value};

const VECTORS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vectors.json");

/// Regtest: 11 blocks mined to key(1); block 12 carries a transaction that
/// spends block 1's coinbase, paying 10 CC to key(2), 39.99 CC change back to
/// key(1) and a 0.01 CC fee.
fn build() -> (TestChain, Transaction, Block) {
    let alice = key(1);
    let bob = key(2);
    let mut chain = TestChain::new(Network::Regtest);
    for _ in 0..11 {
        chain.mine_empty(alice.pubkey_hash());
    }
    let coinbase = &chain.blocks[1].transactions[0];
    let outpoint = OutPoint::new(coinbase.txid(), 0);
    let spent = coinbase.outputs[0];
    let tx = signed_spend(
        &[(outpoint, spent, &alice)],
        vec![
            TxOut {
                amount: Amount::from_coins(10),
                owner: bob.pubkey_hash(),
            },
            TxOut {
                amount: "39.99".parse().unwrap(),
                owner: alice.pubkey_hash(),
            },
        ],
    );
    let block = chain.build_block(alice.pubkey_hash(), vec![tx.clone()]);
    (chain, tx, block)
}

/// The bytes the sighash commitment hashes, laid out by hand from the spec
/// (section 4) rather than by `Transaction::sighash_commitment`, so the
/// vector checks the spec's text against the code.
fn commitment_preimage(tx: &Transaction, spent: &[TxOut]) -> Vec<u8> {
    let mut bytes = tx.version.to_le_bytes().to_vec();
    bytes.push(u8::try_from(tx.inputs.len()).expect("a small example"));
    for input in &tx.inputs {
        bytes.extend_from_slice(&input.prevout().to_bytes());
    }
    bytes.push(u8::try_from(tx.outputs.len()).expect("a small example"));
    for output in &tx.outputs {
        bytes.extend_from_slice(&output.amount.units().to_le_bytes());
        bytes.extend_from_slice(&output.owner.0);
    }
    bytes.extend_from_slice(&tx.lock_time.to_le_bytes());
    for output in spent {
        bytes.extend_from_slice(&output.amount.units().to_le_bytes());
        bytes.extend_from_slice(&output.owner.0);
    }
    bytes
}

fn compute() -> Value {
    let (chain, tx, block) = build();
    let spent = chain.blocks[1].transactions[0].outputs[0];
    let commitment = tx.sighash_commitment(&[spent]);
    let preimage = commitment_preimage(&tx, &[spent]);
    assert_eq!(
        sha256d(&preimage),
        commitment,
        "spec section 4 and the code disagree"
    );
    let input0_sighash = sha256d(&[&b"ChainCore/sighash/v2"[..], &commitment.0, &[0; 4]].concat());
    assert_eq!(
        sighash(&commitment, 0),
        input0_sighash,
        "spec section 4 and the code disagree"
    );
    json!({
        "network": "regtest",
        "transaction": {
            "description": "spends the coinbase of regtest block 1 (key 0x01 repeated) to key 0x02 repeated: 10 CC, change 39.99 CC, fee 0.01 CC",
            "hex": hex::encode(tx.to_bytes()),
            "txid": tx.txid().to_string(),
            "sighash_commitment_preimage": hex::encode(&preimage),
            "sighash_commitment": hex::encode(commitment.0),
            "input0_sighash": hex::encode(input0_sighash.0),
            "spent_amount": spent.amount.units(),
            "spent_owner": hex::encode(spent.owner.0),
            "signer_pubkey": hex::encode(key(1).public_key()),
        },
        "block": {
            "description": "regtest block 12: coinbase to key 0x01 repeated plus the transaction above",
            "height": 12,
            "hex": hex::encode(block.to_bytes()),
            "header_hex": hex::encode(block.header.to_array()),
            "hash": block.hash().to_string(),
            "merkle_root": hex::encode(block.header.merkle_root.0),
            "txids": block.txids().iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        }
    })
}

#[test]
fn vectors_match_the_committed_file() {
    let computed = compute();
    if std::env::var_os("CHAINCORE_UPDATE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&computed).unwrap() + "\n";
        std::fs::write(VECTORS_PATH, text).unwrap();
    }
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(VECTORS_PATH).expect("tests/data/vectors.json exists"),
    )
    .unwrap();
    assert_eq!(
        computed, committed,
        "encoding changed: see this module's docs"
    );
}

#[test]
fn committed_vectors_decode_validate_and_reencode() {
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(VECTORS_PATH).unwrap()).unwrap();
    let tx_bytes = hex::decode(committed["transaction"]["hex"].as_str().unwrap()).unwrap();
    let tx = Transaction::from_bytes(&tx_bytes).unwrap();
    assert_eq!(tx.to_bytes(), tx_bytes);
    assert_eq!(
        tx.txid().to_string(),
        committed["transaction"]["txid"].as_str().unwrap()
    );

    let block_bytes = hex::decode(committed["block"]["hex"].as_str().unwrap()).unwrap();
    let block = Block::from_bytes(&block_bytes).unwrap();
    assert_eq!(block.to_bytes(), block_bytes);
    assert_eq!(block.transactions[1], tx);
    assert_eq!(
        block.hash().to_string(),
        committed["block"]["hash"].as_str().unwrap()
    );

    let (chain, _, _) = build();
    check_block(&block, chain.params).unwrap();
    let spends = check_block_contextual(
        &block,
        &chain.next_context(),
        chain.params,
        &chain.utxos,
        SignatureChecks::On,
    )
    .unwrap();
    assert_eq!(spends.fees, "0.01".parse().unwrap());
}

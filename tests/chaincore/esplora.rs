//! BDK's `esplora-client` (a real esplora client none of us wrote) against
//! live nodes: every call that does not need Bitcoin's raw transaction
//! encoding. A main-network node answers the calls that take a Bitcoin
//! address (ChainCore's main-network addresses are Bitcoin's
//! pay-to-public-key-hash addresses; the client parses no other network's
//! version byte); a regtest node, whose coinbases mature in 10 blocks,
//! answers those about spends and pending payments, by script.
//!
//! What cannot work, and is not called: `get_tx`, `get_tx_no_opt` and
//! `get_block_by_hash` (`/tx/:txid/raw`, `/block/:hash/raw` answer
//! ChainCore's encoding, not Bitcoin's), `broadcast` (`POST /tx` takes
//! ChainCore's encoding) and `submit_package` (no package relay).

use std::str::FromStr;
use std::time::Duration;

use chaincore::consensus::address::PubKeyHash;
use chaincore::consensus::amount::Amount;
use chaincore::consensus::params::Network;
use chaincore::consensus::transaction::{OutPoint, TxOut};
use chaincore::encoding::Encode;
use chaincore::testkit::process::{http, Node};
use chaincore::testkit::{key, signed_spend, TestChain};
use esplora_client::{BlockHash, BlockingClient, Builder, ScriptBuf, Txid};

use crate::common::{block_file, NodeProcess};

/// Blocks mined on the main network: each takes about a million hashes.
const MAIN_BLOCKS: usize = 4;

fn client(api: std::net::SocketAddr) -> BlockingClient {
    Builder::new(&format!("http://{api}"))
        .timeout(Duration::from_secs(30))
        .build_blocking()
}

fn bitcoin_txid(txid: &chaincore::consensus::hash::Hash256) -> Txid {
    Txid::from_str(&txid.to_string()).unwrap()
}

fn bitcoin_block_hash(hash: &chaincore::consensus::hash::Hash256) -> BlockHash {
    BlockHash::from_str(&hash.to_string()).unwrap()
}

fn script_of(owner: &PubKeyHash) -> ScriptBuf {
    ScriptBuf::from_hex(&format!("76a914{}88ac", hex::encode(owner.0))).unwrap()
}

fn import(dir: &std::path::Path, chain: &TestChain, network: &str) -> Node {
    let file = block_file(dir, "chain.dat", &chain.blocks[1..]);
    let mut node = NodeProcess::start(
        &dir.join("node"),
        &[
            "--network",
            network,
            "--connect-only",
            "--import",
            file.to_str().unwrap(),
        ],
    );
    node.wait_for("import done", Duration::from_secs(120));
    node
}

#[test]
fn bdk_esplora_client_reads_a_main_network_node() {
    let miner = key(1);
    let mut chain = TestChain::new(Network::Main);
    for _ in 0..MAIN_BLOCKS {
        chain.mine_empty(miner.pubkey_hash());
    }
    let dir = tempfile::tempdir().unwrap();
    let mut node = import(dir.path(), &chain, "main");
    let esplora = client(node.api_addr());
    let tip = &chain.blocks[MAIN_BLOCKS];
    let tip_hash = bitcoin_block_hash(&tip.hash());
    let address = esplora_client::Address::from_str(&miner.address(Network::Main).to_string())
        .expect("a main-network ChainCore address is a Bitcoin address")
        .assume_checked();
    assert_eq!(address.script_pubkey(), script_of(&miner.pubkey_hash()));

    // The chain and its blocks.
    assert_eq!(esplora.get_height().unwrap(), MAIN_BLOCKS as u32);
    assert_eq!(esplora.get_tip_hash().unwrap(), tip_hash);
    for (height, block) in chain.blocks.iter().enumerate() {
        assert_eq!(
            esplora.get_block_hash(height as u32).unwrap(),
            bitcoin_block_hash(&block.hash())
        );
    }
    // The client hashes the header itself: it is Bitcoin's.
    let header = esplora.get_header_by_hash(&tip_hash).unwrap();
    assert_eq!(header.block_hash(), tip_hash);
    assert_eq!(
        header.merkle_root.to_string(),
        tip.header.merkle_root.to_string()
    );
    let status = esplora.get_block_status(&tip_hash).unwrap();
    assert!(status.in_best_chain);
    assert_eq!(status.height, Some(MAIN_BLOCKS as u32));
    assert_eq!(status.next_best, None);
    let below = bitcoin_block_hash(&chain.blocks[MAIN_BLOCKS - 1].hash());
    assert_eq!(
        esplora.get_block_status(&below).unwrap().next_best,
        Some(tip_hash)
    );

    let info = esplora.get_block_info(&tip_hash).unwrap();
    assert_eq!(info.id, tip_hash);
    assert_eq!(info.height, MAIN_BLOCKS as u32);
    assert_eq!(info.tx_count, 1);
    assert_eq!(info.size, tip.encoded_len());
    assert_eq!(info.weight.to_wu(), 4 * tip.encoded_len() as u64);
    assert_eq!(info.previousblockhash, Some(below));
    assert_eq!(info.bits, header.bits);
    assert_eq!(info.nonce, header.nonce);
    assert_eq!(info.timestamp, u64::from(tip.header.time));
    // Bitcoin Core's arithmetic and the client's may differ in the last bit.
    let difficulty = header.difficulty_float();
    assert!((info.difficulty - difficulty).abs() <= difficulty * 1e-12);
    let mut times: Vec<u32> = chain.blocks.iter().map(|b| b.header.time).collect();
    times.sort_unstable();
    assert_eq!(info.mediantime, u64::from(times[times.len() / 2]));
    let infos = esplora.get_block_infos(None).unwrap();
    assert_eq!(infos.len(), MAIN_BLOCKS + 1);
    assert_eq!(infos[0], info);
    assert_eq!(infos.last().unwrap().previousblockhash, None);
    #[allow(deprecated)]
    let heights: Vec<u32> = esplora
        .get_blocks(Some(2))
        .unwrap()
        .iter()
        .map(|s| s.time.height)
        .collect();
    assert_eq!(heights, vec![2, 1, 0]);

    // The tip's coinbase.
    let coinbase = tip.transactions[0].txid();
    let coinbase_id = bitcoin_txid(&coinbase);
    assert_eq!(
        esplora.get_block_txids(&tip_hash).unwrap(),
        vec![coinbase_id]
    );
    assert_eq!(
        esplora.get_txid_at_block_index(&tip_hash, 0).unwrap(),
        Some(coinbase_id)
    );
    assert_eq!(esplora.get_txid_at_block_index(&tip_hash, 1).unwrap(), None);
    let txs = esplora.get_block_txs(&tip_hash, None).unwrap();
    assert_eq!(txs.len(), 1);
    let tx = esplora
        .get_tx_info(&coinbase_id)
        .unwrap()
        .expect("the coinbase");
    assert_eq!(txs[0], tx);
    assert_eq!(tx.txid, coinbase_id);
    assert!(tx.vin[0].is_coinbase && tx.vin[0].prevout.is_none());
    assert_eq!(tx.fee.to_sat(), 0);
    assert_eq!(tx.vout[0].scriptpubkey, address.script_pubkey());
    assert_eq!(
        tx.vout[0].value.to_sat(),
        tip.transactions[0].outputs[0].amount.units()
    );
    assert_eq!(tx.status.block_hash, Some(tip_hash));
    assert_eq!(tx.status.block_height, Some(MAIN_BLOCKS as u32));
    assert_eq!(tx.status.block_time, Some(u64::from(tip.header.time)));
    assert_eq!(esplora.get_tx_status(&coinbase_id).unwrap(), tx.status);
    let outspends = esplora.get_tx_outspends(&coinbase_id).unwrap();
    assert_eq!(outspends.len(), 1);
    assert!(!outspends[0].spent);
    assert!(
        !esplora
            .get_output_status(&coinbase_id, 0)
            .unwrap()
            .unwrap()
            .spent
    );
    let proof = esplora.get_merkle_proof(&coinbase_id).unwrap().unwrap();
    assert_eq!((proof.block_height, proof.pos), (MAIN_BLOCKS as u32, 0));
    let merkle_block = esplora.get_merkle_block(&coinbase_id).unwrap().unwrap();
    assert_eq!(merkle_block.header.block_hash(), tip_hash);

    // The miner's address.
    let reward: u64 = chain.blocks[1..]
        .iter()
        .map(|b| b.transactions[0].outputs[0].amount.units())
        .sum();
    let stats = esplora.get_address_stats(&address).unwrap();
    assert_eq!(stats.address, address);
    assert_eq!(stats.chain_stats.funded_txo_count, MAIN_BLOCKS as u32);
    assert_eq!(stats.chain_stats.funded_txo_sum.to_sat(), reward);
    assert_eq!(stats.chain_stats.tx_count, MAIN_BLOCKS as u32);
    assert_eq!(stats.mempool_stats.tx_count, 0);
    let script_stats = esplora
        .get_scripthash_stats(&address.script_pubkey())
        .unwrap();
    assert_eq!(script_stats.chain_stats, stats.chain_stats);
    let history = esplora.get_address_txs(&address, None).unwrap();
    let expected: Vec<Txid> = chain.blocks[1..]
        .iter()
        .rev()
        .map(|b| bitcoin_txid(&b.transactions[0].txid()))
        .collect();
    assert_eq!(history.iter().map(|t| t.txid).collect::<Vec<_>>(), expected);
    assert!(esplora
        .get_address_txs(&address, Some(expected[MAIN_BLOCKS - 1]))
        .unwrap()
        .is_empty());
    assert_eq!(
        esplora
            .get_address_txs(&address, Some(expected[1]))
            .unwrap()
            .iter()
            .map(|t| t.txid)
            .collect::<Vec<_>>(),
        expected[2..]
    );
    assert_eq!(
        esplora
            .get_scripthash_txs(&address.script_pubkey(), None)
            .unwrap(),
        history
    );
    let utxos = esplora.get_address_utxos(&address).unwrap();
    assert_eq!(utxos.len(), MAIN_BLOCKS);
    assert_eq!(utxos.iter().map(|u| u.value.to_sat()).sum::<u64>(), reward);
    assert!(utxos.iter().all(|u| u.status.confirmed
        && u.status.block_hash.is_some()
        && u.status.block_time.is_some()));
    assert_eq!(
        esplora
            .get_scripthash_utxos(&address.script_pubkey())
            .unwrap(),
        utxos
    );
    assert!(esplora
        .get_mempool_address_txs(&address)
        .unwrap()
        .is_empty());

    // An empty pool.
    let mempool = esplora.get_mempool_stats().unwrap();
    assert_eq!((mempool.count, mempool.vsize), (0, 0));
    assert!(esplora.get_mempool_txids().unwrap().is_empty());
    assert!(esplora.get_mempool_recent_txs().unwrap().is_empty());
    assert!(!esplora.get_fee_estimates().unwrap().is_empty());
}

#[test]
fn bdk_esplora_client_reads_spends_and_pending_payments_by_script() {
    let owner = key(1);
    let payee = key(2);
    let base = crate::common::prefix(60);
    // 30 spends in one block (31 transactions: two pages of a block's
    // transactions), then single spends: key(2) ends with 34 confirmed
    // payments, more than a page of its history.
    let (chain, busy) = crate::common::chain_with_spends(&base, 1, 30, &payee, &key(9));
    let (chain, _) = crate::common::chain_with_spends(&chain, 4, 1, &payee, &key(9));
    let dir = tempfile::tempdir().unwrap();
    let mut node = import(dir.path(), &chain, "regtest");
    let api = node.api_addr();
    let esplora = client(api);

    // A pending payment to key(2), spending a mature coin of key(1).
    let (outpoint, utxo) = chain.spendable(owner.pubkey_hash())[0];
    let pending = signed_spend(
        &[(outpoint, utxo.output, &owner)],
        vec![TxOut {
            amount: Amount::from_units(utxo.output.amount.units() - 5_000),
            owner: payee.pubkey_hash(),
        }],
    );
    let (status, body) = http(api, "POST", "/tx", &hex::encode(pending.to_bytes()));
    assert_eq!(status, 200, "{body}");
    let pending_id = bitcoin_txid(&pending.txid());

    // A block of 31 transactions: two pages, and a proof of one inside it.
    let busy_block = &busy[0];
    let busy_hash = bitcoin_block_hash(&busy_block.hash());
    let first = esplora.get_block_txs(&busy_hash, None).unwrap();
    let second = esplora.get_block_txs(&busy_hash, Some(25)).unwrap();
    assert_eq!((first.len(), second.len()), (25, 6));
    let all_ids: Vec<Txid> = first.iter().chain(&second).map(|t| t.txid).collect();
    assert_eq!(esplora.get_block_txids(&busy_hash).unwrap(), all_ids);
    let spend = &busy_block.transactions[17];
    let spend_id = bitcoin_txid(&spend.txid());
    assert_eq!(all_ids[17], spend_id);
    let merkle_block = esplora.get_merkle_block(&spend_id).unwrap().unwrap();
    let (mut matches, mut indexes) = (Vec::new(), Vec::new());
    // The client checks the tree's root against the header's.
    merkle_block
        .extract_matches(&mut matches, &mut indexes)
        .expect("a valid partial merkle tree with the header's root");
    assert_eq!(merkle_block.header.block_hash(), busy_hash);
    assert_eq!((matches, indexes), (vec![spend_id], vec![17]));
    let proof = esplora.get_merkle_proof(&spend_id).unwrap().unwrap();
    assert_eq!(proof.pos, 17);
    assert_eq!(proof.merkle.len(), 5);

    // A confirmed spend: what it spent, its fee, and who spent that.
    let info = esplora.get_tx_info(&spend_id).unwrap().unwrap();
    let spent = chain_output(&base, &spend.inputs[0].prevout());
    let prevout = info.vin[0]
        .prevout
        .as_ref()
        .expect("a spend shows what it spent");
    assert_eq!(prevout.value.to_sat(), spent.amount.units());
    assert_eq!(prevout.scriptpubkey, script_of(&owner.pubkey_hash()));
    let outputs: u64 = spend.outputs.iter().map(|o| o.amount.units()).sum();
    assert_eq!(info.fee.to_sat(), spent.amount.units() - outputs);
    assert_eq!(info.weight.to_wu(), 4 * spend.encoded_len() as u64);
    assert!(!info.vin[0].is_coinbase);
    assert_eq!(info.vin[0].sequence.0, u32::MAX);
    let funding = bitcoin_txid(&spend.inputs[0].prevout().txid);
    let outspend = esplora
        .get_output_status(&funding, u64::from(spend.inputs[0].prevout().vout))
        .unwrap()
        .unwrap();
    assert!(outspend.spent);
    assert_eq!(outspend.txid, Some(spend_id));
    assert_eq!(outspend.vin, Some(0));
    assert_eq!(outspend.status.unwrap().block_hash, Some(busy_hash));
    // The pending payment spends a confirmed output: unconfirmed spend.
    let pending_spend = esplora
        .get_output_status(&bitcoin_txid(&outpoint.txid), u64::from(outpoint.vout))
        .unwrap()
        .unwrap();
    assert_eq!(pending_spend.txid, Some(pending_id));
    assert!(!pending_spend.status.unwrap().confirmed);
    let outspends = esplora.get_tx_outspends(&spend_id).unwrap();
    assert_eq!(outspends.len(), spend.outputs.len());

    // key(2) by script: 34 confirmed payments and one pending.
    let script = script_of(&payee.pubkey_hash());
    let stats = esplora.get_scripthash_stats(&script).unwrap();
    assert_eq!(stats.chain_stats.tx_count, 34);
    assert_eq!(stats.mempool_stats.tx_count, 1);
    assert_eq!(
        stats.mempool_stats.funded_txo_sum.to_sat(),
        pending.outputs[0].amount.units()
    );
    let first_page = esplora.get_scripthash_txs(&script, None).unwrap();
    assert_eq!(
        first_page[0].txid, pending_id,
        "pool transactions come first"
    );
    assert!(!first_page[0].status.confirmed);
    assert_eq!(first_page.len(), 1 + 25);
    let last_seen = first_page.last().unwrap().txid;
    let rest = esplora
        .get_scripthash_txs(&script, Some(last_seen))
        .unwrap();
    assert_eq!(rest.len(), 34 - 25);
    let mut heights: Vec<u32> = first_page[1..]
        .iter()
        .chain(&rest)
        .map(|t| t.status.block_height.unwrap())
        .collect();
    assert!(heights.windows(2).all(|w| w[0] >= w[1]), "newest first");
    heights.dedup();
    assert_eq!(heights.len(), 5, "the busy block and four more");
    assert_eq!(
        esplora
            .get_mempool_scripthash_txs(&script)
            .unwrap()
            .iter()
            .map(|t| t.txid)
            .collect::<Vec<_>>(),
        vec![pending_id]
    );
    let utxos = esplora.get_scripthash_utxos(&script).unwrap();
    assert_eq!(utxos.len(), 35);
    let unconfirmed: Vec<_> = utxos.iter().filter(|u| !u.status.confirmed).collect();
    assert_eq!(unconfirmed.len(), 1);
    assert_eq!(unconfirmed[0].txid, pending_id);

    // The pool.
    let mempool = esplora.get_mempool_stats().unwrap();
    assert_eq!((mempool.count, mempool.vsize), (1, pending.encoded_len()));
    assert_eq!(esplora.get_mempool_txids().unwrap(), vec![pending_id]);
    let recent = esplora.get_mempool_recent_txs().unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].txid, pending_id);
    assert_eq!(recent[0].fee.to_sat(), 5_000);
    assert_eq!(recent[0].vsize, pending.encoded_len());
    assert_eq!(recent[0].value.to_sat(), pending.outputs[0].amount.units());
    assert!(!esplora.get_fee_estimates().unwrap().is_empty());

    // 30 pending payments to a new address: the history's first page is
    // all unconfirmed, and a wallet asking for what follows its last entry
    // (as BDK's scan does with any full page) is told there is nothing.
    let newcomer = key(7);
    for (outpoint, utxo) in chain.spendable(owner.pubkey_hash())[1..31].iter() {
        let payment = signed_spend(
            &[(*outpoint, utxo.output, &owner)],
            vec![TxOut {
                amount: Amount::from_units(utxo.output.amount.units() - 5_000),
                owner: newcomer.pubkey_hash(),
            }],
        );
        let (status, body) = http(api, "POST", "/tx", &hex::encode(payment.to_bytes()));
        assert_eq!(status, 200, "{body}");
    }
    let script = script_of(&newcomer.pubkey_hash());
    let page = esplora.get_scripthash_txs(&script, None).unwrap();
    assert_eq!(page.len(), 30);
    assert!(page.iter().all(|t| !t.status.confirmed));
    let after = esplora
        .get_scripthash_txs(&script, Some(page.last().unwrap().txid))
        .unwrap();
    assert!(after.is_empty());
    assert_eq!(esplora.get_scripthash_utxos(&script).unwrap().len(), 30);
    assert_eq!(
        esplora
            .get_scripthash_stats(&script)
            .unwrap()
            .mempool_stats
            .tx_count,
        30
    );
}

/// The output `outpoint` names in `chain`'s UTXO set.
fn chain_output(chain: &TestChain, outpoint: &OutPoint) -> TxOut {
    chain.utxos[outpoint].output
}

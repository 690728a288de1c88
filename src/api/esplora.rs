//! esplora's JSON shapes (Blockstream/esplora `API.md`) of ChainCore's
//! blocks, transactions, outputs and statuses, built from one `ChainView`.
//!
//! ChainCore's header and merkle tree are Bitcoin's, so block fields and
//! proofs are exact. A transaction is not Bitcoin's: an output names its
//! owner's HASH160 and an input carries a public key and a signature. They
//! are shown in the script form Bitcoin gives the same things, so that
//! esplora clients read them unchanged: an output's `scriptpubkey` is the
//! pay-to-public-key-hash script of its owner, an input's `scriptsig` pushes
//! its signature (64 bytes, compact, not DER) and its public key, a
//! coinbase's pushes its height and extra nonce. There are no sequence
//! numbers (every input is final: `0xffffffff`) and no witnesses.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::ApiError;
use crate::chain::ChainView;
use crate::consensus::address::{Address, PubKeyHash};
use crate::consensus::block::Block;
use crate::consensus::hash::{BlockHash, Txid};
use crate::consensus::params::Network;
use crate::consensus::transaction::{Transaction, TxIn, TxOut};
use crate::encoding::Encode;
use crate::store::schema::{p2pkh_script, status, BlockIndexEntry, TxLocation};

/// The sequence number every input shows: ChainCore has none, and every
/// input is final.
pub const FINAL_SEQUENCE: u32 = u32::MAX;

/// Bitcoin's weight units per byte of a transaction without witness data.
pub const WITNESS_SCALE_FACTOR: usize = 4;

/// Bitcoin's difficulty of a compact target: how many times harder than
/// the target `0x1d00ffff` (difficulty 1 on Bitcoin's main network) it is,
/// computed as Bitcoin Core's `GetDifficulty`.
pub fn difficulty(bits: u32) -> f64 {
    let mantissa = bits & 0x00ff_ffff;
    if mantissa == 0 {
        return 0.0;
    }
    let mut shift = (bits >> 24) & 0xff;
    let mut value = f64::from(0x0000_ffff) / f64::from(mantissa);
    while shift < 29 {
        value *= 256.0;
        shift += 1;
    }
    while shift > 29 {
        value /= 256.0;
        shift -= 1;
    }
    value
}

/// An owner's output script fields: `scriptpubkey` (hex), its assembly,
/// type and address.
fn script_fields(network: Network, owner: &PubKeyHash, out: &mut Map<String, Value>) {
    let script = p2pkh_script(owner);
    out.insert("scriptpubkey".into(), hex::encode(script).into());
    out.insert(
        "scriptpubkey_asm".into(),
        format!(
            "OP_DUP OP_HASH160 OP_PUSHBYTES_20 {} OP_EQUALVERIFY OP_CHECKSIG",
            hex::encode(owner.0)
        )
        .into(),
    );
    out.insert("scriptpubkey_type".into(), "p2pkh".into());
    out.insert(
        "scriptpubkey_address".into(),
        Address::new(network, *owner).to_string().into(),
    );
}

/// An output: its script fields and `value` in base units.
pub fn output_json(network: Network, output: &TxOut) -> Value {
    let mut out = Map::new();
    script_fields(network, &output.owner, &mut out);
    out.insert("value".into(), output.amount.units().into());
    Value::Object(out)
}

/// Pushes of `items` as script hex and assembly (each item below 76 bytes,
/// so one length byte is its push opcode).
fn pushes(items: &[&[u8]]) -> (String, String) {
    let mut script = Vec::new();
    let mut asm = Vec::new();
    for item in items {
        debug_assert!(item.len() < 76);
        script.push(item.len() as u8);
        script.extend_from_slice(item);
        asm.push(format!("OP_PUSHBYTES_{} {}", item.len(), hex::encode(item)));
    }
    (hex::encode(script), asm.join(" "))
}

/// esplora's `status` of a confirmed transaction.
pub fn confirmed_status(height: u32, block: &BlockHash, time: u32) -> Value {
    json!({ "confirmed": true, "block_height": height, "block_hash": block, "block_time": time })
}

pub fn unconfirmed_status() -> Value {
    json!({ "confirmed": false })
}

/// A transaction in esplora's shape, given the outputs its inputs spend
/// (in input order; none for a coinbase) and its `status`.
pub fn tx_json(network: Network, tx: &Transaction, spent: &[TxOut], status: Value) -> Value {
    let vin: Vec<Value> = match tx.inputs.as_slice() {
        [TxIn::Coinbase {
            height,
            extra_nonce,
        }] => {
            let (scriptsig, asm) = pushes(&[&height.to_le_bytes(), &extra_nonce.to_le_bytes()]);
            vec![json!({
                "txid": Txid::ZERO,
                "vout": u32::MAX,
                "prevout": null,
                "scriptsig": scriptsig,
                "scriptsig_asm": asm,
                "witness": [],
                "is_coinbase": true,
                "sequence": FINAL_SEQUENCE,
                // ChainCore's own: the coinbase's height and extra nonce
                // (a string: JSON numbers above 2^53 lose digits in
                // JavaScript).
                "height": height,
                "extra_nonce": extra_nonce.to_string(),
            })]
        }
        inputs => inputs
            .iter()
            .zip(spent)
            .map(|(input, prev)| {
                let prevout = input.prevout();
                let (scriptsig, asm) = match input {
                    TxIn::Spend {
                        pubkey, signature, ..
                    } => pushes(&[signature, pubkey]),
                    TxIn::Coinbase { .. } => (String::new(), String::new()),
                };
                json!({
                    "txid": prevout.txid,
                    "vout": prevout.vout,
                    "prevout": output_json(network, prev),
                    "scriptsig": scriptsig,
                    "scriptsig_asm": asm,
                    "witness": [],
                    "is_coinbase": false,
                    "sequence": FINAL_SEQUENCE,
                })
            })
            .collect(),
    };
    let vout: Vec<Value> = tx
        .outputs
        .iter()
        .map(|out| output_json(network, out))
        .collect();
    let inputs: u64 = spent.iter().map(|o| o.amount.units()).sum();
    let outputs: u64 = tx.outputs.iter().map(|o| o.amount.units()).sum();
    let size = tx.encoded_len();
    json!({
        "txid": tx.txid(),
        "version": tx.version,
        "locktime": tx.lock_time,
        "vin": vin,
        "vout": vout,
        "size": size,
        "weight": size * WITNESS_SCALE_FACTOR,
        "fee": if tx.is_coinbase() { 0 } else { inputs.saturating_sub(outputs) },
        "status": status,
    })
}

/// Median of the times of the `MEDIAN_TIME_SPAN` blocks ending at `entry`
/// (esplora's `mediantime`).
fn median_time(chain: &ChainView, entry: &BlockIndexEntry) -> Result<u32, ApiError> {
    let mut times = Vec::with_capacity(crate::consensus::limits::MEDIAN_TIME_SPAN);
    let mut entry = *entry;
    loop {
        times.push(entry.header.time);
        if entry.height == 0 || times.len() == crate::consensus::limits::MEDIAN_TIME_SPAN {
            break;
        }
        let parent = entry.header.prev_hash;
        entry = chain
            .index_entry(&parent)?
            .ok_or_else(|| ApiError::internal(format!("block {parent} is not indexed")))?;
    }
    Ok(crate::consensus::pow::median_time_past(&times))
}

/// The index entry of a block whose data the node holds and that is not
/// known invalid, or 404.
pub fn stored_block_entry(
    chain: &ChainView,
    hash: &BlockHash,
) -> Result<BlockIndexEntry, ApiError> {
    chain
        .index_entry(hash)?
        .filter(|e| e.has(status::HAVE_DATA) && !e.is_failed())
        .ok_or_else(|| ApiError::not_found(format!("block {hash} not found")))
}

/// A block in esplora's shape, plus ChainCore's `chain_work`,
/// `in_best_chain` and `confirmations`.
pub fn block_json(chain: &ChainView, hash: &BlockHash) -> Result<Value, ApiError> {
    let entry = stored_block_entry(chain, hash)?;
    let active = chain.hash_at(entry.height)? == Some(*hash);
    let header = &entry.header;
    let mut block = json!({
        "id": hash,
        "height": entry.height,
        "version": header.version,
        "timestamp": header.time,
        "tx_count": entry.tx_count,
        "size": entry.size,
        "weight": entry.size as usize * WITNESS_SCALE_FACTOR,
        "merkle_root": header.merkle_root,
        "mediantime": median_time(chain, &entry)?,
        "nonce": header.nonce,
        "bits": header.bits,
        "difficulty": difficulty(header.bits),
        "chain_work": format!("{:064x}", entry.chain_work),
        "in_best_chain": active,
        "confirmations": if active { chain.confirmations(entry.height) } else { 0 },
    });
    // As esplora's: genesis has no `previousblockhash` at all.
    if entry.height > 0 {
        block["previousblockhash"] = json!(header.prev_hash);
    }
    Ok(block)
}

/// A confirmed block with what its transactions spent: enough to answer
/// any of its transactions in esplora's shape.
pub struct ConfirmedBlock {
    pub hash: BlockHash,
    pub height: u32,
    pub block: Block,
    /// The outputs its inputs spent, in block order (its undo data).
    spent: Vec<TxOut>,
    /// Where each transaction's spent outputs start in `spent`.
    starts: Vec<usize>,
}

impl ConfirmedBlock {
    /// Loads an active block and its undo data.
    pub fn load(chain: &ChainView, hash: &BlockHash, height: u32) -> Result<Self, ApiError> {
        let block = chain
            .store()
            .block(hash)?
            .ok_or_else(|| ApiError::not_found(format!("block {hash} not found")))?;
        let spent: Vec<TxOut> = chain
            .store()
            .undo(hash)?
            .unwrap_or_default()
            .into_iter()
            .map(|(_, utxo)| utxo.output)
            .collect();
        let mut starts = Vec::with_capacity(block.transactions.len());
        let mut next = 0;
        for tx in &block.transactions {
            starts.push(next);
            if !tx.is_coinbase() {
                next += tx.inputs.len();
            }
        }
        if next != spent.len() {
            return Err(ApiError::internal(format!(
                "undo data of block {hash} does not match its inputs"
            )));
        }
        Ok(ConfirmedBlock {
            hash: *hash,
            height,
            block,
            spent,
            starts,
        })
    }

    /// The transaction at `position`, in esplora's shape.
    pub fn tx_json(&self, network: Network, position: usize) -> Value {
        let tx = &self.block.transactions[position];
        let spent = if tx.is_coinbase() {
            &[][..]
        } else {
            &self.spent[self.starts[position]..self.starts[position] + tx.inputs.len()]
        };
        tx_json(
            network,
            tx,
            spent,
            confirmed_status(self.height, &self.hash, self.block.header.time),
        )
    }
}

/// Confirmed transactions of possibly many blocks, each block loaded once.
#[derive(Default)]
pub struct ConfirmedTxs {
    blocks: HashMap<BlockHash, ConfirmedBlock>,
}

impl ConfirmedTxs {
    pub fn tx_json(&mut self, chain: &ChainView, location: &TxLocation) -> Result<Value, ApiError> {
        let block = match self.blocks.entry(location.block) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(ConfirmedBlock::load(
                chain,
                &location.block,
                location.height,
            )?),
        };
        let position = location.position as usize;
        if position >= block.block.transactions.len() {
            return Err(ApiError::internal(format!(
                "tx index points past block {}",
                location.block
            )));
        }
        Ok(block.tx_json(chain.params().network, position))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bitcoin Core's `GetDifficulty` of known targets.
    #[test]
    fn difficulty_matches_bitcoin_cores() {
        assert_eq!(difficulty(0x1d00_ffff), 1.0);
        // Block 100 000 of Bitcoin's main network.
        assert!((difficulty(0x1b04_864c) - 14_484.162_361).abs() < 1e-3);
        // Regtest's limit: 4.656542373906925e-10.
        assert!((difficulty(0x207f_ffff) - 4.656_542_373_906_925e-10).abs() < 1e-22);
        assert_eq!(difficulty(0x1d00_0000), 0.0);
    }

    #[test]
    fn a_spend_shows_its_signature_and_key_as_pushes() {
        let (script, asm) = pushes(&[&[0xaa; 64], &[0x02; 33]]);
        assert_eq!(
            script,
            format!("40{}21{}", "aa".repeat(64), "02".repeat(33))
        );
        assert_eq!(
            asm,
            format!(
                "OP_PUSHBYTES_64 {} OP_PUSHBYTES_33 {}",
                "aa".repeat(64),
                "02".repeat(33)
            )
        );
    }
}

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

use serde::ser::{Serialize, SerializeStruct, Serializer};
use serde_json::{json, Value};

use super::ApiError;
use crate::chain::ChainView;
use crate::consensus::block::Block;
use crate::consensus::hash::BlockHash;
use crate::consensus::params::Network;
use crate::consensus::transaction::{Transaction, TxIn, TxOut};
use crate::encoding::Encode;
use crate::store::schema::{p2pkh_script, status, BlockIndexEntry};

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

/// The hex of `bytes` into `out` (twice their length), as a `&str`.
fn hex_into<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a str {
    hex::encode_to_slice(bytes, out).expect("an output buffer of twice the length");
    std::str::from_utf8(out).expect("hex is ASCII")
}

/// An output in esplora's shape: its owner's script (`scriptpubkey`, its
/// assembly, type and address) and `value` in base units. Serialized
/// straight from the output, without building a JSON tree or allocating:
/// a history page can hold tens of thousands of outputs.
pub struct OutputJson<'a> {
    pub network: Network,
    pub output: &'a TxOut,
}

impl Serialize for OutputJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let owner = &self.output.owner;
        let mut script = [0u8; 50];
        let script = hex_into(&p2pkh_script(owner), &mut script);
        const ASM_HEAD: &[u8] = b"OP_DUP OP_HASH160 OP_PUSHBYTES_20 ";
        const ASM_TAIL: &[u8] = b" OP_EQUALVERIFY OP_CHECKSIG";
        let mut asm = [0u8; ASM_HEAD.len() + 40 + ASM_TAIL.len()];
        asm[..ASM_HEAD.len()].copy_from_slice(ASM_HEAD);
        hex_into(&owner.0, &mut asm[ASM_HEAD.len()..ASM_HEAD.len() + 40]);
        asm[ASM_HEAD.len() + 40..].copy_from_slice(ASM_TAIL);
        let asm = std::str::from_utf8(&asm).expect("ASCII");
        let mut payload = [0u8; 21];
        payload[0] = self.network.params().address_version;
        payload[1..].copy_from_slice(&owner.0);
        // Base58Check of 21 bytes: at most 34 characters.
        let mut address = [0u8; 40];
        let len = bs58::encode(payload)
            .with_check()
            .onto(&mut address[..])
            .map_err(serde::ser::Error::custom)?;
        let address = std::str::from_utf8(&address[..len]).expect("Base58 is ASCII");
        let mut out = serializer.serialize_struct("Output", 5)?;
        out.serialize_field("scriptpubkey", script)?;
        out.serialize_field("scriptpubkey_asm", asm)?;
        out.serialize_field("scriptpubkey_type", "p2pkh")?;
        out.serialize_field("scriptpubkey_address", address)?;
        out.serialize_field("value", &self.output.amount.units())?;
        out.end()
    }
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

/// esplora's `status` of a transaction (and of an outspend).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStatus {
    Confirmed {
        height: u32,
        block: BlockHash,
        time: u32,
    },
    Unconfirmed,
}

impl Serialize for TxStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            TxStatus::Confirmed {
                height,
                block,
                time,
            } => {
                let mut out = serializer.serialize_struct("Status", 4)?;
                out.serialize_field("confirmed", &true)?;
                out.serialize_field("block_height", height)?;
                out.serialize_field("block_hash", block)?;
                out.serialize_field("block_time", time)?;
                out.end()
            }
            TxStatus::Unconfirmed => {
                let mut out = serializer.serialize_struct("Status", 1)?;
                out.serialize_field("confirmed", &false)?;
                out.end()
            }
        }
    }
}

/// An input in esplora's shape, with the output it spends (`None` for a
/// coinbase).
struct InputJson<'a> {
    network: Network,
    input: &'a TxIn,
    spent: Option<&'a TxOut>,
}

impl Serialize for InputJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let prevout = self.input.prevout();
        let (scriptsig, asm) = match self.input {
            TxIn::Spend {
                pubkey, signature, ..
            } => pushes(&[signature, pubkey]),
            TxIn::Coinbase {
                height,
                extra_nonce,
            } => pushes(&[&height.to_le_bytes(), &extra_nonce.to_le_bytes()]),
        };
        let coinbase = matches!(self.input, TxIn::Coinbase { .. });
        let mut out = serializer.serialize_struct("Input", 10)?;
        out.serialize_field("txid", &prevout.txid)?;
        out.serialize_field("vout", &prevout.vout)?;
        out.serialize_field(
            "prevout",
            &self.spent.map(|output| OutputJson {
                network: self.network,
                output,
            }),
        )?;
        out.serialize_field("scriptsig", &scriptsig)?;
        out.serialize_field("scriptsig_asm", &asm)?;
        out.serialize_field("witness", &[(); 0])?;
        out.serialize_field("is_coinbase", &coinbase)?;
        out.serialize_field("sequence", &FINAL_SEQUENCE)?;
        if let TxIn::Coinbase {
            height,
            extra_nonce,
        } = self.input
        {
            // ChainCore's own: the coinbase's height and extra nonce (a
            // string: JSON numbers above 2^53 lose digits in JavaScript).
            out.serialize_field("height", height)?;
            out.serialize_field("extra_nonce", &extra_nonce.to_string())?;
        }
        out.end()
    }
}

/// A pool transaction copied out from under the pool's lock, to be written
/// as JSON once the lock is released: the JSON of a large transaction
/// takes milliseconds (an address per output), and relay, the protocol
/// thread and the chain task wait for the same lock. The copy is a pointer
/// and the spent outputs (28 bytes per input).
pub struct PendingTx {
    pub tx: std::sync::Arc<Transaction>,
    pub spent: Vec<TxOut>,
    pub first_seen: u32,
}

impl PendingTx {
    pub fn of(entry: &crate::mempool::MempoolEntry) -> PendingTx {
        PendingTx {
            tx: entry.tx.clone(),
            spent: entry.spent.clone(),
            first_seen: entry.time,
        }
    }

    /// Its JSON shape (status unconfirmed).
    pub fn json(&self, network: Network) -> TxJson<'_> {
        TxJson {
            network,
            tx: &self.tx,
            spent: &self.spent,
            status: TxStatus::Unconfirmed,
            first_seen: Some(self.first_seen),
        }
    }
}

/// A transaction in esplora's shape, given the outputs its inputs spend
/// (in input order; none for a coinbase), its status and, for a pool
/// transaction, when it entered the pool (ChainCore's `first_seen`).
/// Serialized straight from the transaction.
pub struct TxJson<'a> {
    pub network: Network,
    pub tx: &'a Transaction,
    pub spent: &'a [TxOut],
    pub status: TxStatus,
    pub first_seen: Option<u32>,
}

impl Serialize for TxJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Inputs<'a>(&'a TxJson<'a>);
        impl Serialize for Inputs<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let tx = self.0;
                serializer.collect_seq(tx.tx.inputs.iter().enumerate().map(|(i, input)| {
                    InputJson {
                        network: tx.network,
                        input,
                        spent: tx.spent.get(i),
                    }
                }))
            }
        }
        struct Outputs<'a>(&'a TxJson<'a>);
        impl Serialize for Outputs<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let tx = self.0;
                serializer.collect_seq(tx.tx.outputs.iter().map(|output| OutputJson {
                    network: tx.network,
                    output,
                }))
            }
        }
        let tx = self.tx;
        let inputs: u64 = self.spent.iter().map(|o| o.amount.units()).sum();
        let outputs: u64 = tx.outputs.iter().map(|o| o.amount.units()).sum();
        let fee = if tx.is_coinbase() {
            0
        } else {
            inputs.saturating_sub(outputs)
        };
        let size = tx.encoded_len();
        let mut out = serializer.serialize_struct("Transaction", 10)?;
        out.serialize_field("txid", &tx.txid())?;
        out.serialize_field("version", &tx.version)?;
        out.serialize_field("locktime", &tx.lock_time)?;
        out.serialize_field("vin", &Inputs(self))?;
        out.serialize_field("vout", &Outputs(self))?;
        out.serialize_field("size", &size)?;
        out.serialize_field("weight", &(size * WITNESS_SCALE_FACTOR))?;
        out.serialize_field("fee", &fee)?;
        out.serialize_field("status", &self.status)?;
        if let Some(first_seen) = self.first_seen {
            out.serialize_field("first_seen", &first_seen)?;
        }
        out.end()
    }
}

/// A JSON array written element by element into one buffer: a list of
/// transactions never exists as a JSON tree.
#[derive(Default)]
pub struct JsonList {
    body: Vec<u8>,
    len: usize,
}

impl JsonList {
    pub fn push(&mut self, item: &impl Serialize) -> Result<(), ApiError> {
        self.body.push(if self.len == 0 { b'[' } else { b',' });
        serde_json::to_writer(&mut self.body, item).map_err(ApiError::internal)?;
        self.len += 1;
        Ok(())
    }

    /// The array as a JSON response.
    pub fn into_response(mut self) -> axum::response::Response {
        if self.len == 0 {
            self.body.push(b'[');
        }
        self.body.push(b']');
        json_bytes(self.body)
    }
}

/// `body` (JSON) as a response.
pub fn json_bytes(body: Vec<u8>) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
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
    // As esplora's: null for genesis.
    block["previousblockhash"] = json!((entry.height > 0).then_some(header.prev_hash));
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
    pub fn tx_json(&self, network: Network, position: usize) -> TxJson<'_> {
        let tx = &self.block.transactions[position];
        let spent = if tx.is_coinbase() {
            &[][..]
        } else {
            &self.spent[self.starts[position]..self.starts[position] + tx.inputs.len()]
        };
        TxJson {
            network,
            tx,
            spent,
            status: TxStatus::Confirmed {
                height: self.height,
                block: self.hash,
                time: self.block.header.time,
            },
            first_seen: None,
        }
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

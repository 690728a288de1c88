//! The properties the fuzz targets check, as plain functions: the cargo-fuzz
//! targets in `fuzz/` call them with libFuzzer's input, and an ordinary test
//! replays the committed corpus through them, so CI checks the corpus
//! without libFuzzer. Each function panics if, and only if, a property
//! fails: no input may make a decoder panic, and whatever decodes must
//! encode back to the same bytes.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::consensus::block::Block;
use crate::consensus::params::Network;
use crate::consensus::transaction::Transaction;
use crate::encoding::{Decode, Encode};
use crate::store::schema;
use crate::wire::constants::MAX_PAYLOAD;
use crate::wire::frame::{encode_frame, FrameCodec};
use crate::wire::message::{Message, KNOWN_COMMANDS};

/// A property check over one input.
pub type FuzzTarget = fn(&[u8]);

/// The fuzz targets, by name (the names of `fuzz/fuzz_targets/*.rs`).
pub const TARGETS: [(&str, FuzzTarget); 5] = [
    ("frame_stream", frame_stream),
    ("message_payload", message_payload),
    ("transaction", transaction),
    ("block", block),
    ("store_values", store_values),
];

/// A byte stream through the frame decoder.
///
/// `data[0]` holds options: bit 0 builds frames with the right magic and
/// checksum from the rest of the input (records of a command index byte, a
/// length byte and that many payload bytes), so the fuzzer reaches the
/// payload decoders; bits 1..=4 set the size of the chunks the stream is fed
/// in (1 to 16 bytes, 0 = all at once), exercising partial reads.
pub fn frame_stream(data: &[u8]) {
    let Some((&options, rest)) = data.split_first() else {
        return;
    };
    let magic = Network::Regtest.params().magic;
    let stream: Vec<u8> = if options & 1 == 1 {
        let mut out = Vec::new();
        let mut input = rest;
        while let [command, len, tail @ ..] = input {
            let take = (*len as usize).min(tail.len());
            let command = KNOWN_COMMANDS[*command as usize % KNOWN_COMMANDS.len()];
            out.extend(encode_frame(magic, command, &tail[..take]));
            input = &tail[take..];
        }
        out.extend_from_slice(input);
        out
    } else {
        rest.to_vec()
    };
    let chunk = ((options >> 1) & 0x0f) as usize;
    let mut codec = FrameCodec::new(magic);
    codec.set_max_payload(MAX_PAYLOAD);
    let mut buf = BytesMut::new();
    let pieces: Vec<&[u8]> = if chunk == 0 {
        vec![&stream[..]]
    } else {
        stream.chunks(chunk).collect()
    };
    'feed: for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(
                        frame.payload.len() <= MAX_PAYLOAD,
                        "payload above the limit"
                    );
                    if let Ok(message) = Message::decode(&frame.command, &frame.payload) {
                        assert_eq!(message.command(), frame.command);
                        assert_eq!(
                            message.encode_payload(),
                            frame.payload,
                            "payload is not canonical"
                        );
                    }
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
        // Memory stays bounded by what the input holds (plus one header).
        assert!(
            buf.len() <= stream.len(),
            "the decoder buffered more than it was given"
        );
    }
}

/// `data[0]` picks the command; the rest is its payload.
pub fn message_payload(data: &[u8]) {
    let Some((&which, payload)) = data.split_first() else {
        return;
    };
    let command = KNOWN_COMMANDS[which as usize % KNOWN_COMMANDS.len()];
    if let Ok(message) = Message::decode(command, payload) {
        assert_eq!(
            message.encode_payload(),
            payload,
            "{command} payload is not canonical"
        );
    }
}

pub fn transaction(data: &[u8]) {
    // Passing over a transaction accepts and consumes exactly what
    // decoding it does (a block's other transactions are skipped so).
    let (mut skipping, mut decoding) = (data, data);
    let skipped = crate::consensus::transaction::skip_transaction(&mut skipping);
    let decoded = Transaction::decode_from(&mut decoding);
    assert_eq!(skipped.is_ok(), decoded.is_ok(), "skip and decode disagree");
    if let (Ok(skipped), Ok(tx)) = (skipped, &decoded) {
        assert_eq!(
            skipping.len(),
            decoding.len(),
            "skip and decode consume differently"
        );
        assert_eq!(skipped.inputs, tx.inputs.len());
        assert_eq!(skipped.is_coinbase, tx.is_coinbase());
    }
    if let Ok(tx) = Transaction::from_bytes(data) {
        assert_eq!(tx.to_bytes(), data, "transaction encoding is not canonical");
        assert_eq!(tx.encoded_len(), data.len());
        let _ = crate::consensus::validation::check_transaction(&tx);
        let _ = tx.txid();
    }
}

pub fn block(data: &[u8]) {
    if let Ok(block) = Block::from_bytes(data) {
        assert_eq!(block.to_bytes(), data, "block encoding is not canonical");
        // Each transaction read alone, or all of them in one walk, is the
        // one the whole decode has.
        let all: Vec<usize> = (0..block.transactions.len()).collect();
        let walked = crate::consensus::block::decode_block_transactions(data, &all)
            .expect("a block that decodes whole decodes in one walk")
            .expect("within the block");
        assert!(walked
            .iter()
            .zip(&block.transactions)
            .all(|(w, tx)| w.tx == *tx));
        let mut spent_before = 0;
        for (position, tx) in block.transactions.iter().enumerate() {
            let found = crate::consensus::block::decode_block_transaction(data, position)
                .expect("a block that decodes whole decodes by transaction")
                .expect("within the block");
            assert_eq!(&found.tx, tx);
            assert_eq!(found.header, block.header);
            assert_eq!(found.spent_before, spent_before);
            if !tx.is_coinbase() {
                spent_before += tx.inputs.len();
            }
        }
        let _ = crate::consensus::validation::check_block(&block, Network::Regtest.params());
    }
}

/// `data[0]` picks the stored value type; the rest is the value (or key).
pub fn store_values(data: &[u8]) {
    let Some((&which, value)) = data.split_first() else {
        return;
    };
    match which % 9 {
        0 => {
            if let Ok(entry) = schema::BlockIndexEntry::decode(value) {
                assert_eq!(entry.encode(), value);
            }
        }
        1 => {
            if let Ok(utxo) = schema::decode_utxo(value) {
                assert_eq!(schema::encode_utxo(&utxo), value);
            }
        }
        2 => {
            if let Ok(spent) = schema::decode_undo(value) {
                assert_eq!(schema::encode_undo(&spent), value);
                // Any range of rows read alone is that range of the whole.
                let (start, len) = (spent.len() / 3, spent.len() / 2);
                assert_eq!(
                    schema::decode_undo_range(value, start, len).as_deref(),
                    Ok(&spent[start..start + len])
                );
            }
        }
        3 => {
            if let Ok(stats) = schema::AddressStats::decode(value) {
                if value.first() == Some(&schema::VALUE_VERSION) {
                    // A version-1 value (u64 sums) is read and rewritten in
                    // the current version: nothing is lost on the way.
                    assert_eq!(schema::AddressStats::decode(&stats.encode()), Ok(stats));
                } else {
                    assert_eq!(stats.encode(), value);
                }
            }
        }
        4 => {
            if let Ok(location) = schema::TxLocation::decode(value) {
                assert_eq!(location.encode(), value);
            }
        }
        5 => {
            if let Ok(tip) = schema::ChainTipRecord::decode(value) {
                assert_eq!(tip.encode(), value);
            }
        }
        6 => {
            if let Ok((amount, height)) = schema::decode_address_utxo(value) {
                assert_eq!(schema::encode_address_utxo(amount, height), value);
            }
        }
        7 => {
            if let Ok((owner, outpoint)) = schema::parse_address_utxo_key(value) {
                assert_eq!(schema::address_utxo_key(&owner, &outpoint), value);
            }
        }
        _ => {
            if let Ok((owner, height, position)) = schema::parse_address_history_key(value) {
                assert_eq!(schema::address_history_key(&owner, height, position), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn corpus_dir(target: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target)
    }

    /// Every committed corpus input (seeds and regression inputs) still
    /// holds every property.
    #[test]
    fn committed_corpus_replays_without_failure() {
        for (name, target) in TARGETS {
            let dir = corpus_dir(name);
            let entries: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
                .map(|e| e.unwrap().path())
                .collect();
            assert!(!entries.is_empty(), "corpus of {name} is empty");
            for path in entries {
                let data = std::fs::read(&path).unwrap();
                let result = std::panic::catch_unwind(|| target(&data));
                assert!(result.is_ok(), "{name}: {} fails", path.display());
            }
        }
    }

    /// Writes the seed corpus from real frames and structures. Run with
    /// `CHAINCORE_WRITE_CORPUS=1 cargo test --lib write_seed_corpus`.
    #[test]
    fn write_seed_corpus() {
        if std::env::var_os("CHAINCORE_WRITE_CORPUS").is_none() {
            return;
        }
        let write = |target: &str, name: &str, bytes: &[u8]| {
            let dir = corpus_dir(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        };
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../tests/data/vectors.json")).unwrap();
        let tx = hex::decode(vectors["transaction"]["hex"].as_str().unwrap()).unwrap();
        let block = hex::decode(vectors["block"]["hex"].as_str().unwrap()).unwrap();
        write("transaction", "vector-tx", &tx);
        write(
            "transaction",
            "genesis-coinbase",
            &Network::Regtest.params().genesis_block().transactions[0].to_bytes(),
        );
        write("block", "vector-block", &block);
        write(
            "block",
            "genesis",
            &Network::Main.params().genesis_block().to_bytes(),
        );
        let genesis = Network::Regtest.params().genesis_block();
        let messages = crate::wire::tests::sample_messages();
        let magic = Network::Regtest.params().magic;
        let mut stream = vec![0u8];
        for (i, message) in messages.iter().enumerate() {
            let index = KNOWN_COMMANDS
                .iter()
                .position(|c| *c == message.command())
                .unwrap() as u8;
            let payload = message.encode_payload();
            let mut seed = vec![index];
            seed.extend_from_slice(&payload);
            write(
                "message_payload",
                &format!("{:02}-{}", i, message.command()),
                &seed,
            );
            stream.extend(encode_frame(magic, message.command(), &payload));
        }
        write("frame_stream", "all-messages", &stream);
        let mut split = stream.clone();
        split[0] = 3 << 1; // fed 3 bytes at a time
        write("frame_stream", "all-messages-3-byte-chunks", &split);
        let mut built = vec![1u8];
        for message in messages.iter().filter(|m| m.encode_payload().len() < 256) {
            let index = KNOWN_COMMANDS
                .iter()
                .position(|c| *c == message.command())
                .unwrap() as u8;
            let payload = message.encode_payload();
            built.push(index);
            built.push(payload.len() as u8);
            built.extend(payload);
        }
        write("frame_stream", "built-frames", &built);
        let header = schema::BlockIndexEntry {
            header: genesis.header,
            height: 0,
            chain_work: primitive_types::U256::from(2),
            status: schema::status::VALID,
            tx_count: 1,
            size: 200,
        };
        let mut seed = vec![0u8];
        seed.extend(header.encode());
        write("store_values", "block-index-entry", &seed);
        let utxo = crate::consensus::validation::Utxo {
            output: genesis.transactions[0].outputs[0],
            height: 0,
            is_coinbase: true,
        };
        let mut seed = vec![1u8];
        seed.extend(schema::encode_utxo(&utxo));
        write("store_values", "utxo", &seed);
        let outpoint =
            crate::consensus::transaction::OutPoint::new(genesis.transactions[0].txid(), 0);
        let mut seed = vec![2u8];
        seed.extend(schema::encode_undo(&[(outpoint, utxo)]));
        write("store_values", "undo", &seed);
        let mut seed = vec![3u8];
        seed.extend(
            schema::AddressStats {
                funded_txo_count: 2,
                funded_txo_sum: 9,
                spent_txo_count: 1,
                spent_txo_sum: 4,
                tx_count: 2,
            }
            .encode(),
        );
        write("store_values", "address-stats", &seed);
        let mut seed = vec![7u8];
        seed.extend(schema::address_utxo_key(&utxo.output.owner, &outpoint));
        write("store_values", "address-utxo-key", &seed);
    }
}

//! Received blocks whose bodies wait for a background flush
//! (`flush::Chain::store_block`): while the flush's batch holds RocksDB, a
//! received body is appended to `pending-blocks.dat` in the data dir (the
//! block file format: a u32 LE length, then the block) instead of waiting
//! behind that batch, and the block connects from memory. The file is
//! emptied once the bodies are in the store. So a kill in between loses no
//! body of a block the node reported connected: when the chain opens, each
//! block found here is accepted again as a received one would be
//! (`Chain::recover_pending`: checked against its header, stored with a
//! full index entry) before the chain connects the blocks above its
//! flushed tip.
//!
//! A torn or corrupt tail (a kill mid-append, a bad disk) ends the reading:
//! the records before it are used, the rest are fetched again from peers.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};

use super::block_file::{read_block, BlockFileError};
use super::ChainError;
use crate::consensus::block::Block;
use crate::encoding::Encode;

pub const PENDING_FILE: &str = "pending-blocks.dat";

/// The append-only file of bodies not yet in the store.
#[derive(Debug)]
pub(super) struct PendingFile {
    path: PathBuf,
    /// Open once something was appended.
    file: Option<File>,
    /// Bytes of whole records in the file.
    len: u64,
    /// Set when an append could not be undone or the file not emptied:
    /// no more appends until it is emptied (it would grow without bound,
    /// or hold a torn record before good ones).
    broken: bool,
}

impl PendingFile {
    pub fn new(data_dir: &Path) -> PendingFile {
        PendingFile {
            path: data_dir.join(PENDING_FILE),
            file: None,
            len: 0,
            broken: false,
        }
    }

    /// Whether appends are possible (see `broken`).
    pub fn usable(&self) -> bool {
        !self.broken
    }

    /// Appends one block, synced to the disk when `sync` (as the store's
    /// writes are). On failure the file is cut back to its whole records.
    pub fn append(&mut self, block: &Block, sync: bool) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(
                "the pending-blocks file could not be repaired",
            ));
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?;
                if sync {
                    // The new file's name must survive a power loss too.
                    if let Some(dir) = self.path.parent() {
                        File::open(dir)?.sync_all()?;
                    }
                }
                self.file.insert(file)
            }
        };
        // One record, encoded once, written by one call.
        let len = block.encoded_len();
        let mut record = Vec::with_capacity(4 + len);
        record.extend_from_slice(&(len as u32).to_le_bytes());
        block.encode_to(&mut record);
        let written =
            file.write_all(&record)
                .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => {
                self.len += record.len() as u64;
                Ok(())
            }
            Err(error) => {
                if file.set_len(self.len).is_err() {
                    self.broken = true;
                }
                Err(error)
            }
        }
    }

    /// Empties the file: its bodies are in the store.
    pub fn clear(&mut self) -> io::Result<()> {
        if let Some(file) = &self.file {
            if self.len > 0 || self.broken {
                if let Err(error) = file.set_len(0) {
                    self.broken = true;
                    return Err(error);
                }
            }
        }
        self.len = 0;
        self.broken = false;
        Ok(())
    }
}

/// What `Chain::recover_pending` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Bodies stored again.
    pub stored: usize,
    /// Records not stored: already stored, failed, unconnected, or a body
    /// that does not match its header.
    pub skipped: usize,
    /// Why reading stopped before the end, if it did.
    pub torn: Option<String>,
}

/// Hands each block of `data_dir`'s pending file to `accept`, in order,
/// then removes the file. Reading stops at the first record that is cut
/// short or does not decode (said in the result); a read error of the
/// file itself is an error, and the file stays.
pub(super) fn drain(
    data_dir: &Path,
    mut accept: impl FnMut(Block) -> Result<bool, ChainError>,
) -> Result<Recovered, ChainError> {
    let path = data_dir.join(PENDING_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Recovered::default()),
        Err(error) => return Err(ChainError::Pending(error)),
    };
    let mut input = BufReader::new(file);
    let mut recovered = Recovered::default();
    let mut index = 0;
    loop {
        let block = match read_block(&mut input, index) {
            Ok(Some(block)) => block,
            Ok(None) => break,
            // A read that failed, not a record cut short (`Truncated`).
            Err(BlockFileError::Io(error)) => return Err(ChainError::Pending(error)),
            Err(error) => {
                recovered.torn = Some(error.to_string());
                break;
            }
        };
        index += 1;
        if accept(block)? {
            recovered.stored += 1;
        } else {
            recovered.skipped += 1;
        }
    }
    std::fs::remove_file(&path).map_err(ChainError::Pending)?;
    Ok(recovered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_blocks_read_back_and_a_torn_tail_ends_the_reading() {
        let chain = crate::testkit::busy_chain(3, 2);
        let blocks = &chain.blocks[chain.blocks.len() - 3..];
        let dir = tempfile::tempdir().unwrap();
        let mut pending = PendingFile::new(dir.path());
        for block in blocks {
            pending.append(block, false).unwrap();
        }
        let path = dir.path().join(PENDING_FILE);
        let whole = std::fs::read(&path).unwrap();
        assert_eq!(whole.len() as u64, pending.len);
        // Cut into the last record: the two before it read back.
        std::fs::write(&path, &whole[..whole.len() - 10]).unwrap();
        let mut input = BufReader::new(File::open(&path).unwrap());
        let mut read = Vec::new();
        let error = loop {
            match read_block(&mut input, read.len()) {
                Ok(Some(block)) => read.push(block),
                Ok(None) => panic!("a torn record read as the end"),
                Err(error) => break error,
            }
        };
        assert_eq!(read, blocks[..2].to_vec());
        assert!(
            matches!(error, BlockFileError::Truncated { index: 2 }),
            "{error}"
        );
        // Two bytes of a next record's length: torn too, not the end.
        let mut two_more = whole.clone();
        two_more.extend_from_slice(&[1, 2]);
        let mut input = &two_more[..];
        for expected in blocks {
            assert_eq!(read_block(&mut input, 0).unwrap().as_ref(), Some(expected));
        }
        assert!(read_block(&mut input, 3).is_err());
        // Emptied, the file takes new records from its start.
        std::fs::write(&path, &whole).unwrap();
        pending.clear().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        pending.append(&blocks[0], false).unwrap();
        let mut input = BufReader::new(File::open(&path).unwrap());
        assert_eq!(
            read_block(&mut input, 0).unwrap().as_ref(),
            Some(&blocks[0])
        );
        assert!(read_block(&mut input, 1).unwrap().is_none());
    }
}

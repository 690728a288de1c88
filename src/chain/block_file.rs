//! Block files, for `chaincore node --import` and for tests that feed a node
//! a prepared chain: each record is a u32 LE length followed by that many
//! bytes of a consensus-encoded block.

use std::io::{self, Read, Write};

use crate::consensus::block::Block;
use crate::consensus::limits::MAX_BLOCK_SIZE;
use crate::encoding::{Decode, Encode};

#[derive(Debug, thiserror::Error)]
pub enum BlockFileError {
    #[error("reading block file: {0}")]
    Io(#[from] io::Error),
    #[error("block file record {index}: length {len} exceeds the block size limit")]
    TooLong { index: usize, len: usize },
    #[error("block file record {index}: cut short (the file ends inside it)")]
    Truncated { index: usize },
    #[error("block file record {index}: {error}")]
    Decode {
        index: usize,
        error: crate::encoding::DecodeError,
    },
}

pub fn write_blocks<'a>(
    mut out: impl Write,
    blocks: impl IntoIterator<Item = &'a Block>,
) -> io::Result<()> {
    for block in blocks {
        let bytes = block.to_bytes();
        out.write_all(&(bytes.len() as u32).to_le_bytes())?;
        out.write_all(&bytes)?;
    }
    out.flush()
}

/// Reads every block of a block file; a truncated last record is an error.
pub fn read_blocks(mut input: impl Read) -> Result<Vec<Block>, BlockFileError> {
    let mut blocks = Vec::new();
    while let Some(block) = read_block(&mut input, blocks.len())? {
        blocks.push(block);
    }
    Ok(blocks)
}

/// Reads the next record (record number `index`, for errors); `None` at
/// the end of the file. A record cut short, length included, is an error.
pub fn read_block(mut input: impl Read, index: usize) -> Result<Option<Block>, BlockFileError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match input.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(BlockFileError::Truncated { index }),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_BLOCK_SIZE {
        return Err(BlockFileError::TooLong { index, len });
    }
    let mut bytes = vec![0u8; len];
    input.read_exact(&mut bytes).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => BlockFileError::Truncated { index },
        _ => e.into(),
    })?;
    Block::from_bytes(&bytes)
        .map(Some)
        .map_err(|error| BlockFileError::Decode { index, error })
}

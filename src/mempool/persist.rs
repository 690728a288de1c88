//! Saving the pool across restarts: `mempool.dat` in the data dir holds a
//! version byte, a compact-size count, then for each transaction the time it
//! entered the pool (u32 LE) and the transaction, oldest first with every
//! parent before its children. Written to a temp file and renamed, so a
//! crash never leaves half a file; on start every transaction is validated
//! again, parents first whatever the file's order.

use std::path::Path;
use std::sync::Arc;

use super::{parents_first, Mempool};
use crate::consensus::hash::Txid;
use crate::consensus::transaction::Transaction;
use crate::consensus::validation::SignatureChecks;
use crate::encoding::{
    read_count, read_u32, read_u8, write_compact_size, Decode, DecodeError, Encode,
};

pub const MEMPOOL_FILE: &str = "mempool.dat";
const FILE_VERSION: u8 = 1;
/// Smallest encoded entry: time (4) and the smallest transaction.
const MIN_ENTRY_LEN: usize = 4 + crate::consensus::limits::MIN_TX_LEN;
/// Entries `read` allocates room for before reading them.
const PREALLOCATED_ENTRIES: usize = 4_096;

/// Held from a save's copy of the pool until its file is in place, and
/// taken before the pool's lock: two saves (the periodic one, written after
/// the pool's lock is released, and the last one at shutdown) never write
/// at once, and an older copy never lands after a newer one.
pub static SAVING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What `mempool.dat` is written from: the pool's transactions with their
/// times and txids, copied out under the pool's lock (a pointer each), so
/// the sorting, encoding and synced write of a pool of hundreds of
/// thousands of entries happen after the lock is released. Relay, the
/// protocol thread and the chain task take the same lock.
pub struct SavedPool(Vec<(u32, Txid, Arc<Transaction>)>);

impl SavedPool {
    /// The entries, and what a rebuild under way has yet to judge (the
    /// next start judges everything again).
    pub fn of(pool: &Mempool) -> SavedPool {
        SavedPool(
            pool.entries()
                .map(|e| (e.time, e.txid, e.tx.clone()))
                .chain(
                    pool.queued()
                        .map(|(time, tx)| (time, tx.txid(), Arc::new(tx.clone()))),
                )
                .collect(),
        )
    }

    /// Writes the pool, oldest first, parents before children (a child
    /// may share its parent's time, or even be older after a
    /// reorganisation returned its parent).
    pub fn write(mut self, data_dir: &Path) -> std::io::Result<usize> {
        self.0
            .sort_unstable_by_key(|(time, txid, _)| (*time, *txid));
        let entries: Vec<(u32, &Transaction)> =
            self.0.iter().map(|(time, _, tx)| (*time, &**tx)).collect();
        let entries = parents_first(entries, |(_, tx)| tx);
        let mut out = vec![FILE_VERSION];
        write_compact_size(&mut out, entries.len() as u64);
        for (time, tx) in &entries {
            out.extend_from_slice(&time.to_le_bytes());
            tx.encode_to(&mut out);
        }
        let path = data_dir.join(MEMPOOL_FILE);
        crate::files::replace_file(&path, &out, crate::files::Readers::Default)?;
        Ok(entries.len())
    }
}

/// Writes the pool (`SavedPool`) while the caller holds it, and `SAVING`
/// (taken before the pool's lock).
pub fn save(pool: &Mempool, data_dir: &Path) -> std::io::Result<usize> {
    SavedPool::of(pool).write(data_dir)
}

/// Reads a saved pool.
pub fn read(bytes: &[u8]) -> Result<Vec<(u32, Transaction)>, DecodeError> {
    let mut cursor = bytes;
    if read_u8(&mut cursor, "mempool file version")? != FILE_VERSION {
        return Err(DecodeError::Invalid {
            what: "mempool file",
            reason: "unknown version",
        });
    }
    let count = read_count(&mut cursor, "mempool entries", usize::MAX, MIN_ENTRY_LEN)?;
    // The count is only bounded by the file's length: allocate as entries
    // arrive beyond the first few thousand.
    let mut entries = Vec::with_capacity(count.min(PREALLOCATED_ENTRIES));
    for _ in 0..count {
        let time = read_u32(&mut cursor, "mempool entry time")?;
        entries.push((time, Transaction::decode_from(&mut cursor)?));
    }
    if !cursor.is_empty() {
        return Err(DecodeError::TrailingBytes {
            what: "mempool file",
            trailing: cursor.len(),
        });
    }
    Ok(entries)
}

/// Loads `mempool.dat` from `data_dir` into the pool, re-validating every
/// transaction. A missing file is an empty pool; an unreadable one is
/// reported and ignored (the pool is a cache of what peers also hold).
pub fn load(pool: &mut Mempool, chain: &dyn super::TipState, data_dir: &Path) -> (usize, usize) {
    let path = data_dir.join(MEMPOOL_FILE);
    // A file far larger than the pool it could refill is not ours to
    // read whole (the limit counts memory, which a transaction takes more
    // of than its encoding).
    let limit = (pool.max_bytes() as u64).saturating_mul(2) + (1 << 20);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.len() > limit => {
            tracing::warn!(path = %path.display(), bytes = meta.len(), limit, "ignoring a mempool file larger than the pool could hold");
            return (0, 0);
        }
        Ok(_) => {}
        Err(_) => return (0, 0),
    }
    let Ok(bytes) = std::fs::read(&path) else {
        return (0, 0);
    };
    let entries = match read(&bytes) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable mempool file");
            return (0, 0);
        }
    };
    let total = entries.len();
    let mut accepted = 0;
    pool.catch_up(chain);
    // A time ahead of the clock would never expire.
    let now = super::unix_now();
    for (time, tx) in parents_first(entries, |(_, tx)| tx) {
        if pool
            .accept_inner(chain, tx, time.min(now), SignatureChecks::On)
            .is_ok()
        {
            accepted += 1;
        }
    }
    (accepted, total)
}

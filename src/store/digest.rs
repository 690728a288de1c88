//! An order-independent digest of the UTXO set: a lattice-based homomorphic
//! hash, LtHash16 (Bellare and Micciancio's additive hash, in the form of
//! Lewi et al., "Securing Update Propagation with Homomorphic Hashing",
//! 2019: 1 024 lanes of 16 bits).
//!
//! Each UTXO's bytes (`utxo_element`) are expanded by BLAKE3's extendable
//! output to 2 048 bytes, read as 1 024 little-endian `u16` lanes; the
//! digest is the lane-wise sum, modulo 2^16, of the vectors of every UTXO.
//! Adding a UTXO adds its vector, removing one subtracts it, so a block
//! moves the digest in time proportional to its size, and two nodes with
//! the same UTXO set hold the same digest however they reached it. Finding
//! two different multisets with the same sum is a short-integer-solution
//! problem on this lattice (about 200 bits of security at these parameters,
//! per the paper); Solana's accounts hash uses the same construction
//! (SIMD-0215).
//!
//! One update costs one BLAKE3 output of 2 KiB and 1 024 additions: about a
//! sixth of the curve multiset hash (ECMH) that format 2 kept, whose map to
//! the curve needed two square roots per UTXO on average and cost about as
//! much as a signature check (`cargo bench --bench limits` prints both).
//!
//! The node publishes the digest as its fingerprint: SHA-256 of the 2 048
//! state bytes.

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::consensus::hash::Hash256;
use crate::consensus::transaction::OutPoint;
use crate::consensus::validation::Utxo;

/// Lanes of the state vector.
pub const LANES: usize = 1024;

/// Length of the stored state: `LANES` little-endian `u16`s.
pub const STATE_LEN: usize = 2 * LANES;

/// Domain separation: the BLAKE3 key-derivation context of the expansion,
/// so no other use of BLAKE3 yields the same vectors.
const CONTEXT: &str = "ChainCore 2026 utxo-set lthash16 v1";

/// Elements hashed per rayon task, each into a vector of its own that the
/// tasks then sum: one element takes under a microsecond, so a smaller
/// task costs more in splitting and summing than it spreads.
const ELEMENTS_PER_TASK: usize = 256;

/// The bytes that represent one UTXO in the digest: txid, vout (u32 LE),
/// amount (u64 LE), owner (20), height (u32 LE), coinbase flag (u8).
pub fn utxo_element(outpoint: &OutPoint, utxo: &Utxo) -> [u8; 69] {
    let mut out = [0u8; 69];
    out[..32].copy_from_slice(&outpoint.txid.0);
    out[32..36].copy_from_slice(&outpoint.vout.to_le_bytes());
    out[36..44].copy_from_slice(&utxo.output.amount.units().to_le_bytes());
    out[44..64].copy_from_slice(&utxo.output.owner.0);
    out[64..68].copy_from_slice(&utxo.height.to_le_bytes());
    out[68] = u8::from(utxo.is_coinbase);
    out
}

/// Lanes per 64-bit word: the state is held as words of four lanes, lane
/// `4k + j` in bits `16j..16j + 16` of word `k`, so that a word's
/// little-endian bytes are its four lanes' little-endian bytes, and an
/// expansion's bytes are read eight at a time.
const LANES_PER_WORD: usize = 4;
const WORDS: usize = LANES / LANES_PER_WORD;

/// Each lane's top bit within a word.
const TOP_BITS: u64 = 0x8000_8000_8000_8000;

/// Four lane-wise sums modulo 2^16 in one word: the top bits are added
/// apart so that no carry crosses into the next lane.
fn add_lanes(x: u64, y: u64) -> u64 {
    ((x & !TOP_BITS) + (y & !TOP_BITS)) ^ ((x ^ y) & TOP_BITS)
}

/// Four lane-wise differences modulo 2^16 in one word: each lane's top bit
/// is set before subtracting so that no borrow crosses into the next lane.
fn sub_lanes(x: u64, y: u64) -> u64 {
    ((x | TOP_BITS) - (y & !TOP_BITS)) ^ ((x ^ !y) & TOP_BITS)
}

/// The running multiset hash: `LANES` sums modulo 2^16, four to a word.
#[derive(Clone, PartialEq, Eq)]
pub struct UtxoDigest(Box<[u64; WORDS]>);

impl Default for UtxoDigest {
    fn default() -> Self {
        UtxoDigest(Box::new([0u64; WORDS]))
    }
}

impl std::fmt::Debug for UtxoDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UtxoDigest({})", self.fingerprint())
    }
}

/// Adds (or subtracts) one element's vector to `words`.
fn accumulate(words: &mut [u64; WORDS], element: &[u8; 69], add: bool) {
    let mut bytes = [0u8; STATE_LEN];
    blake3::Hasher::new_derive_key(CONTEXT)
        .update(element)
        .finalize_xof()
        .fill(&mut bytes);
    let vector = bytes
        .chunks_exact(8)
        .map(|eight| u64::from_le_bytes(eight.try_into().expect("8 bytes")));
    let lanes = if add { add_lanes } else { sub_lanes };
    for (word, value) in words.iter_mut().zip(vector) {
        *word = lanes(*word, value);
    }
}

fn add_words(mut a: Box<[u64; WORDS]>, b: Box<[u64; WORDS]>) -> Box<[u64; WORDS]> {
    for (x, y) in a.iter_mut().zip(b.iter()) {
        *x = add_lanes(*x, *y);
    }
    a
}

impl UtxoDigest {
    /// Adds `added` and removes `removed`, hashing in parallel on rayon's
    /// pool.
    pub fn apply<'a>(
        &mut self,
        added: impl IntoParallelIterator<Item = (&'a OutPoint, &'a Utxo)>,
        removed: impl IntoParallelIterator<Item = (&'a OutPoint, &'a Utxo)>,
    ) {
        let signed: Vec<(bool, [u8; 69])> = added
            .into_par_iter()
            .map(|(o, u)| (true, utxo_element(o, u)))
            .chain(
                removed
                    .into_par_iter()
                    .map(|(o, u)| (false, utxo_element(o, u))),
            )
            .collect();
        let sum = signed
            .par_chunks(ELEMENTS_PER_TASK)
            .map(|chunk| {
                let mut words = Box::new([0u64; WORDS]);
                for (add, element) in chunk {
                    accumulate(&mut words, element, *add);
                }
                words
            })
            .reduce(|| Box::new([0u64; WORDS]), add_words);
        for (word, change) in self.0.iter_mut().zip(sum.iter()) {
            *word = add_lanes(*word, *change);
        }
    }

    pub fn insert(&mut self, outpoint: &OutPoint, utxo: &Utxo) {
        accumulate(&mut self.0, &utxo_element(outpoint, utxo), true);
    }

    pub fn remove(&mut self, outpoint: &OutPoint, utxo: &Utxo) {
        accumulate(&mut self.0, &utxo_element(outpoint, utxo), false);
    }

    /// The stored form: the lanes, little-endian (each word's
    /// little-endian bytes are its four lanes in order).
    pub fn to_bytes(&self) -> [u8; STATE_LEN] {
        let mut out = [0u8; STATE_LEN];
        for (eight, word) in out.chunks_exact_mut(8).zip(self.0.iter()) {
            eight.copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// Reads a stored state. Every 2 048 bytes are a state, so nothing can
    /// fail here; a state that is not the UTXO set's is what `check` finds.
    pub fn from_bytes(bytes: &[u8; STATE_LEN]) -> UtxoDigest {
        let mut words = Box::new([0u64; WORDS]);
        for (word, eight) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            *word = u64::from_le_bytes(eight.try_into().expect("8 bytes"));
        }
        UtxoDigest(words)
    }

    /// The published form: SHA-256 of the stored bytes, so the value has
    /// the shape of every other hash the node shows.
    pub fn fingerprint(&self) -> Hash256 {
        Hash256(Sha256::digest(self.to_bytes()).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::address::PubKeyHash;
    use crate::consensus::amount::Amount;
    use crate::consensus::hash::sha256d;
    use crate::consensus::transaction::TxOut;

    fn item(n: u32) -> (OutPoint, Utxo) {
        (
            OutPoint::new(sha256d(&n.to_le_bytes()), n % 3),
            Utxo {
                output: TxOut {
                    amount: Amount::from_units(u64::from(n) * 1000),
                    owner: PubKeyHash([n as u8; 20]),
                },
                height: n,
                is_coinbase: n.is_multiple_of(2),
            },
        )
    }

    #[test]
    fn order_does_not_matter_and_removal_undoes_insertion() {
        // More elements than one rayon task takes, so `apply` sums several
        // partial vectors.
        let items: Vec<_> = (0..1_000).map(item).collect();
        assert!(items.len() > 3 * ELEMENTS_PER_TASK);
        let mut forward = UtxoDigest::default();
        for (o, u) in &items {
            forward.insert(o, u);
        }
        let mut backward = UtxoDigest::default();
        for (o, u) in items.iter().rev() {
            backward.insert(o, u);
        }
        assert_eq!(forward.to_bytes(), backward.to_bytes());

        let mut batched = UtxoDigest::default();
        batched.apply(items.par_iter().map(|(o, u)| (o, u)), Vec::new());
        assert_eq!(batched, forward);

        // One block that spends the first 600 and creates 400 new: the same
        // as a set that only ever held what is left.
        let created: Vec<_> = (1_000..1_400).map(item).collect();
        let mut moved = batched.clone();
        moved.apply(
            created.par_iter().map(|(o, u)| (o, u)),
            items[..600].par_iter().map(|(o, u)| (o, u)),
        );
        let mut rest = UtxoDigest::default();
        for (o, u) in items[600..].iter().chain(&created) {
            rest.insert(o, u);
        }
        assert_eq!(moved, rest);
        // And the block undone, as a disconnection does.
        moved.apply(
            items[..600].par_iter().map(|(o, u)| (o, u)),
            created.par_iter().map(|(o, u)| (o, u)),
        );
        assert_eq!(moved, forward);

        for (o, u) in &items {
            forward.remove(o, u);
        }
        assert_eq!(forward, UtxoDigest::default());
        assert_eq!(forward.to_bytes(), [0u8; STATE_LEN]);
    }

    /// The digest of a fixed set, written down: any change to the
    /// construction (element bytes, context, lane order, fingerprint)
    /// changes it, and every node's published digest with it.
    #[test]
    fn a_known_set_has_a_known_fingerprint() {
        let mut digest = UtxoDigest::default();
        for n in 0..3 {
            let (o, u) = item(n);
            digest.insert(&o, &u);
        }
        assert_eq!(
            digest.fingerprint().to_string(),
            "59cc84eda9d712dd617fa0ff5a4594057bfc6efcd015fcb1cc0a987a4370ca4a"
        );
    }

    #[test]
    fn a_multiset_counts_each_copy() {
        // Adding the same element twice is not adding it once: the lanes
        // are sums, not exclusive ors.
        let (o, u) = item(3);
        let mut once = UtxoDigest::default();
        once.insert(&o, &u);
        let mut twice = once.clone();
        twice.insert(&o, &u);
        assert_ne!(once, twice);
        twice.remove(&o, &u);
        assert_eq!(once, twice);
    }

    #[test]
    fn any_field_change_changes_the_digest() {
        let (o, u) = item(5);
        let mut base = UtxoDigest::default();
        base.insert(&o, &u);
        type Change = Box<dyn Fn(&mut OutPoint, &mut Utxo)>;
        let changes: [Change; 6] = [
            Box::new(|o, _| o.txid.0[0] ^= 1),
            Box::new(|o, _| o.vout += 1),
            Box::new(|_, u| u.output.amount = Amount::from_units(u.output.amount.units() + 1)),
            Box::new(|_, u| u.output.owner.0[19] ^= 1),
            Box::new(|_, u| u.height += 1),
            Box::new(|_, u| u.is_coinbase = !u.is_coinbase),
        ];
        for (i, change) in changes.iter().enumerate() {
            let (mut o2, mut u2) = (o, u);
            change(&mut o2, &mut u2);
            let mut changed = UtxoDigest::default();
            changed.insert(&o2, &u2);
            assert_ne!(base, changed, "change {i}");
        }
    }

    #[test]
    fn the_expansion_is_blake3_derive_key_over_the_element() {
        // The definition, written out once more: an independent reading of
        // the state of a one-element set.
        let (o, u) = item(7);
        let mut set = UtxoDigest::default();
        set.insert(&o, &u);
        let mut expected = [0u8; STATE_LEN];
        let mut hasher = blake3::Hasher::new_derive_key("ChainCore 2026 utxo-set lthash16 v1");
        hasher.update(&utxo_element(&o, &u));
        hasher.finalize_xof().fill(&mut expected);
        assert_eq!(set.to_bytes(), expected);
        assert_eq!(set.fingerprint(), Hash256(Sha256::digest(expected).into()));
    }

    proptest::proptest! {
        /// Four lanes to a word add and subtract as four separate `u16`s,
        /// wrapping, with no carry or borrow crossing between lanes.
        #[test]
        fn a_word_adds_and_subtracts_as_four_lanes(x: u64, y: u64) {
            let lanes = |w: u64| -> [u16; 4] { std::array::from_fn(|j| (w >> (16 * j)) as u16) };
            let (a, b) = (lanes(x), lanes(y));
            let sum: [u16; 4] = std::array::from_fn(|j| a[j].wrapping_add(b[j]));
            let difference: [u16; 4] = std::array::from_fn(|j| a[j].wrapping_sub(b[j]));
            proptest::prop_assert_eq!(lanes(add_lanes(x, y)), sum);
            proptest::prop_assert_eq!(lanes(sub_lanes(x, y)), difference);
        }
    }

    #[test]
    fn lanes_at_their_limits_wrap_alone() {
        // Every lane carries or borrows out of its top bit at once.
        let all = u64::MAX;
        assert_eq!(add_lanes(all, 0x0001_0001_0001_0001), 0);
        assert_eq!(sub_lanes(0, 0x0001_0001_0001_0001), all);
        assert_eq!(
            add_lanes(0x8000_7fff_ffff_0000, 0x8000_0001_0001_ffff),
            0x0000_8000_0000_ffff
        );
        assert_eq!(
            sub_lanes(0x0000_8000_0000_ffff, 0x8000_0001_0001_ffff),
            0x8000_7fff_ffff_0000
        );
    }

    #[test]
    fn stored_bytes_round_trip() {
        let mut digest = UtxoDigest::default();
        for n in 0..10 {
            let (o, u) = item(n);
            digest.insert(&o, &u);
        }
        assert_eq!(UtxoDigest::from_bytes(&digest.to_bytes()), digest);
        assert_eq!(
            UtxoDigest::from_bytes(&[0u8; STATE_LEN]),
            UtxoDigest::default()
        );
    }
}

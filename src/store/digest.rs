//! An order-independent digest of the UTXO set: a multiset hash on secp256k1
//! (ECMH). Each UTXO maps to a curve point by try-and-increment (as in the
//! ECMH proposal for Bitcoin's UTXO set): for counter = 0, 1, ... take
//! `h = SHA-256(tag || element || counter)`; if `h` is the x coordinate of a
//! curve point, the point is the one whose y parity is the low bit of
//! `SHA-256(tag || h)`. About half of all x values are on the curve, so two
//! square roots are needed on average (RFC 9380's constant-time map costs
//! about four times as much, and UTXOs are public data). The digest is the
//! sum of the points of all UTXOs. Adding and removing are point addition and subtraction, so a
//! block updates it in time proportional to its size, and two nodes with the
//! same UTXO set hold the same digest however they reached it.

use k256::elliptic_curve::group::GroupEncoding;
#[cfg(test)]
use k256::elliptic_curve::point::DecompressPoint;
use k256::elliptic_curve::sec1::FromEncodedPoint;
#[cfg(test)]
use k256::elliptic_curve::subtle::Choice;
use k256::{AffinePoint, ProjectivePoint};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::consensus::hash::Hash256;
use crate::consensus::transaction::OutPoint;
use crate::consensus::validation::Utxo;

/// Domain separation tag of the map to the curve.
const TAG: &[u8] = b"ChainCore/utxo-ecmh/v1";

/// Length of a stored digest: a compressed point, or 33 zero bytes for the
/// empty set (the point at infinity).
pub const DIGEST_LEN: usize = 33;

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

/// The candidate x coordinates of an element, with their y parity, in the
/// order try-and-increment tries them.
fn candidates(element: [u8; 69]) -> impl Iterator<Item = ([u8; 32], u8)> {
    (0u32..).map(move |counter| {
        let x: [u8; 32] = Sha256::new()
            .chain_update(TAG)
            .chain_update(element)
            .chain_update(counter.to_le_bytes())
            .finalize()
            .into();
        let parity = Sha256::new().chain_update(TAG).chain_update(x).finalize()[31] & 1;
        (x, parity)
    })
}

/// The curve point of a UTXO. The square root that decompression needs is
/// the expensive step, and libsecp256k1 does it about 1.6 times as fast as
/// k256 (`cargo bench --bench limits`); the point then moves to k256 in
/// uncompressed form (an on-curve check, no square root) for the sums.
fn point_of(outpoint: &OutPoint, utxo: &Utxo) -> ProjectivePoint {
    for (x, parity) in candidates(utxo_element(outpoint, utxo)) {
        let mut compressed = [0x02 | parity; 33];
        compressed[1..].copy_from_slice(&x);
        if let Ok(point) = secp256k1::PublicKey::from_byte_array_compressed(compressed) {
            let uncompressed = point.serialize_uncompressed();
            let encoded = k256::EncodedPoint::from_bytes(uncompressed)
                .expect("65 bytes with the uncompressed tag");
            let affine: Option<AffinePoint> = AffinePoint::from_encoded_point(&encoded).into();
            return affine.expect("libsecp256k1's point is on the curve").into();
        }
    }
    unreachable!("a point is found long before the counter wraps")
}

/// The same map with k256 alone: the reference the fast path is tested
/// against.
#[cfg(test)]
fn point_of_k256(outpoint: &OutPoint, utxo: &Utxo) -> ProjectivePoint {
    for (x, parity) in candidates(utxo_element(outpoint, utxo)) {
        let point: Option<AffinePoint> =
            AffinePoint::decompress(&x.into(), Choice::from(parity)).into();
        if let Some(point) = point {
            return point.into();
        }
    }
    unreachable!("a point is found long before the counter wraps")
}

/// The running multiset hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtxoDigest(ProjectivePoint);

impl Default for UtxoDigest {
    fn default() -> Self {
        UtxoDigest(ProjectivePoint::IDENTITY)
    }
}

impl UtxoDigest {
    /// Adds `added` and removes `removed`, hashing to the curve in parallel.
    pub fn apply<'a>(
        &mut self,
        added: impl IntoParallelIterator<Item = (&'a OutPoint, &'a Utxo)>,
        removed: impl IntoParallelIterator<Item = (&'a OutPoint, &'a Utxo)>,
    ) {
        let sum = |items: Vec<ProjectivePoint>| {
            items
                .into_par_iter()
                .reduce(|| ProjectivePoint::IDENTITY, |a, b| a + b)
        };
        let plus = sum(added.into_par_iter().map(|(o, u)| point_of(o, u)).collect());
        let minus = sum(removed
            .into_par_iter()
            .map(|(o, u)| point_of(o, u))
            .collect());
        self.0 = self.0 + plus - minus;
    }

    pub fn insert(&mut self, outpoint: &OutPoint, utxo: &Utxo) {
        self.0 += point_of(outpoint, utxo);
    }

    pub fn remove(&mut self, outpoint: &OutPoint, utxo: &Utxo) {
        self.0 -= point_of(outpoint, utxo);
    }

    pub fn to_bytes(&self) -> [u8; DIGEST_LEN] {
        if self.0 == ProjectivePoint::IDENTITY {
            return [0u8; DIGEST_LEN];
        }
        let mut out = [0u8; DIGEST_LEN];
        out.copy_from_slice(&self.0.to_affine().to_bytes());
        out
    }

    /// Reads a stored digest; `None` if the bytes are not a point.
    pub fn from_bytes(bytes: &[u8; DIGEST_LEN]) -> Option<UtxoDigest> {
        if *bytes == [0u8; DIGEST_LEN] {
            return Some(UtxoDigest::default());
        }
        let point: Option<k256::AffinePoint> = k256::AffinePoint::from_bytes(bytes.into()).into();
        point.map(|p| UtxoDigest(p.into()))
    }

    /// The published form: SHA-256 of the 33 stored bytes, so the value has
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
        let items: Vec<_> = (0..20).map(item).collect();
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

        for (o, u) in &items {
            forward.remove(o, u);
        }
        assert_eq!(forward, UtxoDigest::default());
        assert_eq!(forward.to_bytes(), [0u8; DIGEST_LEN]);
    }

    #[test]
    fn libsecp256k1_decompression_gives_k256_points() {
        for n in 0..2_000 {
            let (o, u) = item(n);
            assert_eq!(point_of(&o, &u), point_of_k256(&o, &u), "element {n}");
        }
    }

    #[test]
    fn any_field_change_changes_the_digest() {
        let (o, u) = item(5);
        let mut base = UtxoDigest::default();
        base.insert(&o, &u);
        let mut other = u;
        other.height += 1;
        let mut changed = UtxoDigest::default();
        changed.insert(&o, &other);
        assert_ne!(base, changed);
    }

    #[test]
    fn stored_bytes_round_trip() {
        let mut digest = UtxoDigest::default();
        let (o, u) = item(9);
        digest.insert(&o, &u);
        assert_eq!(UtxoDigest::from_bytes(&digest.to_bytes()), Some(digest));
        assert_eq!(
            UtxoDigest::from_bytes(&[0u8; DIGEST_LEN]),
            Some(UtxoDigest::default())
        );
        assert_eq!(UtxoDigest::from_bytes(&[0xffu8; DIGEST_LEN]), None);
    }
}

//! secp256k1 keys and low-S ECDSA signatures over 32-byte digests.
//!
//! Consensus verifies with libsecp256k1 (the `secp256k1` crate): signature
//! checks are what limits catch-up, and it verifies about 4x as many per
//! second as the pure-Rust k256 (`cargo bench --profile dev --bench limits`
//! prints both). Keys and signing stay with k256: the wallet signs a few
//! inputs per payment, and both libraries sign the same RFC 6979 bytes.
//! `verify_signature_k256` keeps the same rules on k256 as the reference
//! that the differential test and the `limits` benchmark compare against.

use std::sync::OnceLock;

use k256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use k256::ecdsa::{Signature, SigningKey, VerifyingKey};

use super::address::{Address, PubKeyHash};
use super::params::Network;

/// Length of a SEC1 compressed public key.
pub const PUBKEY_LEN: usize = 33;
/// Length of a compact `r || s` signature.
pub const SIGNATURE_LEN: usize = 64;

/// Why a signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("public key is not a valid compressed secp256k1 point")]
    InvalidPublicKey,
    #[error("signature is not a valid (r, s) pair")]
    Malformed,
    #[error("signature has a high S value; only low-S signatures are valid")]
    HighS,
    #[error("signature does not match the public key and message")]
    Mismatch,
}

/// A secp256k1 private key.
#[derive(Clone)]
pub struct PrivateKey(SigningKey);

impl PrivateKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> PrivateKey {
        PrivateKey(SigningKey::random(&mut rand::rngs::OsRng))
    }

    /// A key from its 32-byte big-endian scalar; `None` if out of range.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<PrivateKey> {
        SigningKey::from_bytes(bytes.into()).ok().map(PrivateKey)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes().into()
    }

    /// The compressed SEC1 public key.
    pub fn public_key(&self) -> [u8; PUBKEY_LEN] {
        let point = self.0.verifying_key().to_encoded_point(true);
        let mut out = [0u8; PUBKEY_LEN];
        out.copy_from_slice(point.as_bytes());
        out
    }

    pub fn pubkey_hash(&self) -> PubKeyHash {
        PubKeyHash::of_pubkey(&self.public_key())
    }

    pub fn address(&self, network: Network) -> Address {
        Address::new(network, self.pubkey_hash())
    }

    /// Deterministic (RFC 6979) low-S signature over a 32-byte digest.
    pub fn sign_digest(&self, digest: &[u8; 32]) -> [u8; SIGNATURE_LEN] {
        let signature: Signature = self
            .0
            .sign_prehash(digest)
            .expect("signing a 32-byte prehash with a valid key cannot fail");
        let signature = signature.normalize_s().unwrap_or(signature);
        signature.to_bytes().into()
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

/// A signature verifier: `verify_signature` for consensus, or the k256
/// reference `verify_signature_k256` (same rules, same verdicts).
pub type SignatureVerifier =
    fn(&[u8; PUBKEY_LEN], &[u8; SIGNATURE_LEN], &[u8; 32]) -> Result<(), SignatureError>;

/// The order n of the secp256k1 group, big-endian: `r` and `s` must lie in
/// [1, n - 1] for a signature to be well formed.
const CURVE_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41,
];

/// floor(n / 2), big-endian: an `s` above it is high, and only the low form
/// of each signature is valid (so a relayed transaction cannot be malleated).
const HALF_CURVE_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
];

/// The one libsecp256k1 context, made on first use and shared by every
/// thread (verification never mutates it).
fn verification_context() -> &'static secp256k1::Secp256k1<secp256k1::VerifyOnly> {
    static CONTEXT: OnceLock<secp256k1::Secp256k1<secp256k1::VerifyOnly>> = OnceLock::new();
    CONTEXT.get_or_init(secp256k1::Secp256k1::verification_only)
}

/// Checks `r || s` against the curve order: each in [1, n - 1]
/// (`Malformed`), and `s` at most n / 2 (`HighS`). Big-endian byte order is
/// numeric order, so comparing the arrays compares the numbers.
fn check_scalars(signature: &[u8; SIGNATURE_LEN]) -> Result<(), SignatureError> {
    let (r, s) = signature.split_at(32);
    let in_range = |x: &[u8]| x != [0u8; 32] && x < CURVE_ORDER.as_slice();
    if !in_range(r) || !in_range(s) {
        return Err(SignatureError::Malformed);
    }
    if s > HALF_CURVE_ORDER.as_slice() {
        return Err(SignatureError::HighS);
    }
    Ok(())
}

/// Verifies a compact low-S signature over `digest` by `pubkey`, with
/// libsecp256k1. The public key must be compressed and on the curve; `r` and
/// `s` must be in [1, n - 1] and `s` at most n / 2. Errors are checked in
/// that order, as `verify_signature_k256` does.
pub fn verify_signature(
    pubkey: &[u8; PUBKEY_LEN],
    signature: &[u8; SIGNATURE_LEN],
    digest: &[u8; 32],
) -> Result<(), SignatureError> {
    if pubkey[0] != 0x02 && pubkey[0] != 0x03 {
        return Err(SignatureError::InvalidPublicKey);
    }
    let key = secp256k1::PublicKey::from_byte_array_compressed(*pubkey)
        .map_err(|_| SignatureError::InvalidPublicKey)?;
    check_scalars(signature)?;
    let signature = secp256k1::ecdsa::Signature::from_compact(signature)
        .map_err(|_| SignatureError::Malformed)?;
    verification_context()
        .verify_ecdsa(secp256k1::Message::from_digest(*digest), &signature, &key)
        .map_err(|_| SignatureError::Mismatch)
}

/// The same rules as `verify_signature`, with the pure-Rust k256: the
/// reference the differential test holds libsecp256k1 to, and the figure the
/// `limits` benchmark prints beside it. Not used by the node.
pub fn verify_signature_k256(
    pubkey: &[u8; PUBKEY_LEN],
    signature: &[u8; SIGNATURE_LEN],
    digest: &[u8; 32],
) -> Result<(), SignatureError> {
    if pubkey[0] != 0x02 && pubkey[0] != 0x03 {
        return Err(SignatureError::InvalidPublicKey);
    }
    let key =
        VerifyingKey::from_sec1_bytes(pubkey).map_err(|_| SignatureError::InvalidPublicKey)?;
    let signature = Signature::from_slice(signature).map_err(|_| SignatureError::Malformed)?;
    if signature.normalize_s().is_some() {
        return Err(SignatureError::HighS);
    }
    key.verify_prehash(digest, &signature)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> PrivateKey {
        PrivateKey::from_bytes(&[byte; 32]).unwrap()
    }

    #[test]
    fn signature_verifies_and_rejects_other_messages_and_keys() {
        let signer = key(1);
        let digest = [42u8; 32];
        let signature = signer.sign_digest(&digest);
        assert_eq!(
            verify_signature(&signer.public_key(), &signature, &digest),
            Ok(())
        );
        assert_eq!(
            verify_signature(&signer.public_key(), &signature, &[43u8; 32]),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&key(2).public_key(), &signature, &digest),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn high_s_signature_is_rejected() {
        let signer = key(3);
        let digest = [7u8; 32];
        let low = Signature::from_slice(&signer.sign_digest(&digest)).unwrap();
        // Negating s gives the other, equally valid, high-S form.
        let (r, s) = low.split_scalars();
        let high = Signature::from_scalars(r, -*s).unwrap();
        let high_bytes: [u8; 64] = high.to_bytes().into();
        assert_eq!(
            verify_signature(&signer.public_key(), &high_bytes, &digest),
            Err(SignatureError::HighS)
        );
    }

    #[test]
    fn malformed_keys_and_signatures_are_rejected() {
        let signer = key(4);
        let digest = [1u8; 32];
        let signature = signer.sign_digest(&digest);
        let mut uncompressed_tag = signer.public_key();
        uncompressed_tag[0] = 0x04;
        assert_eq!(
            verify_signature(&uncompressed_tag, &signature, &digest),
            Err(SignatureError::InvalidPublicKey)
        );
        assert_eq!(
            verify_signature(&signer.public_key(), &[0u8; 64], &digest),
            Err(SignatureError::Malformed)
        );
    }

    /// Runs both verifiers and fails, naming the input, unless they agree.
    fn same_verdict(
        pubkey: &[u8; PUBKEY_LEN],
        signature: &[u8; SIGNATURE_LEN],
        digest: &[u8; 32],
    ) -> Result<(), SignatureError> {
        let libsecp256k1 = verify_signature(pubkey, signature, digest);
        let k256 = verify_signature_k256(pubkey, signature, digest);
        assert_eq!(
            libsecp256k1,
            k256,
            "pubkey {} signature {} digest {}",
            hex::encode(pubkey),
            hex::encode(signature),
            hex::encode(digest)
        );
        libsecp256k1
    }

    /// `r` or `s` values at the edges of the rules: 0, 1, n / 2, n / 2 + 1,
    /// n - 1, n and 2^256 - 1.
    fn edge_scalars() -> Vec<[u8; 32]> {
        let mut one = [0u8; 32];
        one[31] = 1;
        let mut above_half = HALF_CURVE_ORDER;
        above_half[31] += 1;
        let mut order_minus_one = CURVE_ORDER;
        order_minus_one[31] -= 1;
        vec![
            [0u8; 32],
            one,
            HALF_CURVE_ORDER,
            above_half,
            order_minus_one,
            CURVE_ORDER,
            [0xffu8; 32],
        ]
    }

    #[test]
    fn libsecp256k1_and_k256_give_the_same_verdict() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5ec9_256c);
        let mut seen: Vec<Result<(), SignatureError>> = Vec::new();
        let mut tally = |verdict| {
            if !seen.contains(&verdict) {
                seen.push(verdict);
            }
        };
        for _ in 0..1_000 {
            let signer = loop {
                if let Some(key) = PrivateKey::from_bytes(&rng.gen()) {
                    break key;
                }
            };
            let pubkey = signer.public_key();
            let digest: [u8; 32] = rng.gen();
            let signature = signer.sign_digest(&digest);
            tally(same_verdict(&pubkey, &signature, &digest));
            tally(same_verdict(&pubkey, &signature, &rng.gen()));

            let low = Signature::from_slice(&signature).unwrap();
            let (r, s) = low.split_scalars();
            let high: [u8; 64] = Signature::from_scalars(r, -*s).unwrap().to_bytes().into();
            tally(same_verdict(&pubkey, &high, &digest));

            let mut flipped = signature;
            flipped[rng.gen_range(0..SIGNATURE_LEN)] ^= 1 << rng.gen_range(0..8);
            tally(same_verdict(&pubkey, &flipped, &digest));
            let mut random_signature = [0u8; SIGNATURE_LEN];
            rng.fill(&mut random_signature[..]);
            tally(same_verdict(&pubkey, &random_signature, &digest));

            let mut other_x = pubkey;
            other_x[rng.gen_range(1..PUBKEY_LEN)] ^= 1 << rng.gen_range(0..8);
            tally(same_verdict(&other_x, &signature, &digest));
            let mut other_parity = pubkey;
            other_parity[0] ^= 0x01;
            tally(same_verdict(&other_parity, &signature, &digest));
            let mut other_tag = pubkey;
            other_tag[0] = rng.gen();
            tally(same_verdict(&other_tag, &signature, &digest));
            let mut random_key = [0u8; PUBKEY_LEN];
            rng.fill(&mut random_key[..]);
            random_key[0] = 0x02 | (random_key[0] & 1);
            tally(same_verdict(&random_key, &signature, &digest));
        }
        let signer = key(9);
        let digest = [5u8; 32];
        let signature = signer.sign_digest(&digest);
        for edge in edge_scalars() {
            let mut edge_r = signature;
            edge_r[..32].copy_from_slice(&edge);
            tally(same_verdict(&signer.public_key(), &edge_r, &digest));
            let mut edge_s = signature;
            edge_s[32..].copy_from_slice(&edge);
            tally(same_verdict(&signer.public_key(), &edge_s, &digest));
            let mut edge_x = signer.public_key();
            edge_x[1..].copy_from_slice(&edge);
            tally(same_verdict(&edge_x, &signature, &digest));
        }
        let mut field_prime = [0xffu8; PUBKEY_LEN];
        field_prime[0] = 0x02;
        field_prime[28] = 0xfe;
        field_prime[29..].copy_from_slice(&[0xff, 0xff, 0xfc, 0x2f]);
        tally(same_verdict(&field_prime, &signature, &digest));

        for verdict in [
            Ok(()),
            Err(SignatureError::InvalidPublicKey),
            Err(SignatureError::Malformed),
            Err(SignatureError::HighS),
            Err(SignatureError::Mismatch),
        ] {
            assert!(
                seen.contains(&verdict),
                "no input reached {verdict:?}, only {seen:?}"
            );
        }
    }

    #[test]
    fn libsecp256k1_signs_and_derives_the_same_bytes_as_k256() {
        use rand::{Rng, SeedableRng};
        let context = secp256k1::Secp256k1::signing_only();
        let mut rng = rand::rngs::StdRng::seed_from_u64(6979);
        for _ in 0..200 {
            let signer = loop {
                if let Some(key) = PrivateKey::from_bytes(&rng.gen()) {
                    break key;
                }
            };
            let secret = secp256k1::SecretKey::from_byte_array(signer.to_bytes()).unwrap();
            assert_eq!(
                secp256k1::PublicKey::from_secret_key(&context, &secret).serialize(),
                signer.public_key()
            );
            let digest: [u8; 32] = rng.gen();
            let signature = context.sign_ecdsa(secp256k1::Message::from_digest(digest), &secret);
            assert_eq!(signature.serialize_compact(), signer.sign_digest(&digest));
        }
    }

    #[test]
    fn private_key_round_trips() {
        let k = PrivateKey::generate();
        let again = PrivateKey::from_bytes(&k.to_bytes()).unwrap();
        assert_eq!(k.public_key(), again.public_key());
        assert!(PrivateKey::from_bytes(&[0u8; 32]).is_none());
    }
}

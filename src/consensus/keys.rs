//! secp256k1 keys and low-S ECDSA signatures over 32-byte digests.

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

/// Verifies a compact low-S signature over `digest` by `pubkey`.
pub fn verify_signature(
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

    #[test]
    fn private_key_round_trips() {
        let k = PrivateKey::generate();
        let again = PrivateKey::from_bytes(&k.to_bytes()).unwrap();
        assert_eq!(k.public_key(), again.public_key());
        assert!(PrivateKey::from_bytes(&[0u8; 32]).is_none());
    }
}

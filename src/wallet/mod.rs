//! The wallet: one key in a file of its own, optionally encrypted with a
//! passphrase, and the spend planning that turns a payment into a signed
//! transaction. Talking to a node is the command line's job
//! (`cli/wallet.rs`); everything here is pure or touches only the file.
//!
//! The file is JSON, written once with mode 0600 and never overwritten:
//!
//! ```json
//! { "chaincore_wallet": 1, "network": "regtest", "address": "...",
//!   "key": { "kind": "plain", "secret": "HEX" } }
//! ```
//!
//! or, encrypted, `"key": { "kind": "encrypted", "kdf": "argon2id",
//! "m_cost_kib", "t_cost", "p_cost", "salt", "cipher": "chacha20poly1305",
//! "nonce", "ciphertext" }`. The address stays readable, so watching a
//! wallet (balance, history) never needs the passphrase; the ciphertext is
//! bound to the network and address as associated data.

pub mod spend;

use std::io::Write;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use serde::{Deserialize, Serialize};

use crate::consensus::address::Address;
use crate::consensus::keys::PrivateKey;
use crate::consensus::params::Network;

/// Version of the wallet file format.
pub const WALLET_FORMAT: u32 = 1;
/// Argon2id cost: OWASP's recommended minimum (19 MiB, 2 passes, 1 lane).
pub const KDF_MEMORY_KIB: u32 = 19 * 1024;
pub const KDF_PASSES: u32 = 2;
pub const KDF_LANES: u32 = 1;
/// The most a wallet file may ask its key derivation for: eight times
/// today's memory, passes and lanes. A file asking more is taken as
/// corrupt, not run (a damaged digit could otherwise ask for 256 GiB).
pub const MAX_KDF_MEMORY_KIB: u32 = 8 * KDF_MEMORY_KIB;
pub const MAX_KDF_PASSES: u32 = 8 * KDF_PASSES;
pub const MAX_KDF_LANES: u32 = 8;
/// Bytes of random salt for the key derivation.
pub const SALT_LEN: usize = 16;
/// ChaCha20-Poly1305 nonce length.
pub const NONCE_LEN: usize = 12;
/// Largest wallet file read (a real one is well under 1 KiB).
pub const MAX_WALLET_FILE_BYTES: u64 = 64 * 1024;

/// Why a wallet file cannot be made or used.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error("wallet file {0} already exists: refusing to overwrite it (move it away or pick another --wallet)")]
    Exists(String),
    #[error("wallet file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("no wallet file at {0}: make one with `chaincore wallet new --network NETWORK --wallet {0}`, or pass --wallet")]
    NotFound(String),
    #[error(
        "directory {0} does not exist or cannot be read: make it first (mkdir -m 700), or pick another --wallet"
    )]
    NoDirectory(String),
    #[error("wallet file {path} is not a ChainCore wallet: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("wrong passphrase for wallet {0} (or the file was altered)")]
    WrongPassphrase(String),
    #[error("wallet {0} is encrypted: a passphrase is needed")]
    PassphraseNeeded(String),
    #[error("the passphrase must not be empty")]
    EmptyPassphrase,
    #[error("wallet file {path} may be read by other users (mode {mode:o}): make it private with `chmod 600 {path}`")]
    NotPrivate { path: String, mode: u32 },
}

/// The stored key, in the clear or sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum StoredKey {
    Plain {
        secret: String,
    },
    Encrypted {
        kdf: String,
        m_cost_kib: u32,
        t_cost: u32,
        p_cost: u32,
        salt: String,
        cipher: String,
        nonce: String,
        ciphertext: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WalletFile {
    chaincore_wallet: u32,
    network: String,
    address: String,
    key: StoredKey,
}

/// A wallet as read from its file; the key is unlocked on demand.
#[derive(Debug, Clone)]
pub struct Wallet {
    path: String,
    network: Network,
    address: Address,
    key: StoredKey,
}

impl Wallet {
    /// Makes a new key for `network` and writes it to `path` (mode 0600,
    /// never over an existing file), sealed with `passphrase` if given.
    pub fn create(
        path: &Path,
        network: Network,
        passphrase: Option<&str>,
    ) -> Result<Wallet, WalletError> {
        let key = PrivateKey::generate();
        let address = key.address(network);
        let stored = match passphrase {
            None => StoredKey::Plain {
                secret: hex::encode(key.to_bytes()),
            },
            Some(passphrase) => seal(&key, passphrase, &binding(network, &address))?,
        };
        let file = WalletFile {
            chaincore_wallet: WALLET_FORMAT,
            network: network.name().to_string(),
            address: address.to_string(),
            key: stored.clone(),
        };
        let text = serde_json::to_string_pretty(&file).expect("a wallet file serializes");
        write_new_private(path, text.as_bytes())?;
        Ok(Wallet {
            path: path.display().to_string(),
            network,
            address,
            key: stored,
        })
    }

    /// Reads a wallet file, checking its format, network and address.
    pub fn open(path: &Path) -> Result<Wallet, WalletError> {
        let shown = path.display().to_string();
        let io = |source| WalletError::Io {
            path: shown.clone(),
            source,
        };
        let corrupt = |reason: String| WalletError::Corrupt {
            path: shown.clone(),
            reason,
        };
        let metadata = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => WalletError::NotFound(shown.clone()),
            _ => io(e),
        })?;
        // As ssh with its keys: a key file of the user's own that others
        // may read is refused, not used (the wallet is written 0600; a copy
        // or an editor may not be). A file someone else owns (a secret
        // mounted by root, a group-readable deployment) is the owner's to
        // protect, and a chmod is not the user's to run.
        #[cfg(unix)]
        {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let mode = metadata.permissions().mode() & 0o777;
            // SAFETY: geteuid has no preconditions and cannot fail.
            let own = metadata.uid() == unsafe { libc::geteuid() };
            if own && mode & 0o077 != 0 {
                return Err(WalletError::NotPrivate { path: shown, mode });
            }
        }
        let len = metadata.len();
        if len > MAX_WALLET_FILE_BYTES {
            return Err(corrupt(format!("{len} bytes is far too large")));
        }
        let text = std::fs::read(path).map_err(io)?;
        let file: WalletFile = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        if file.chaincore_wallet != WALLET_FORMAT {
            return Err(corrupt(format!(
                "format {} (this build reads {WALLET_FORMAT})",
                file.chaincore_wallet
            )));
        }
        let network: Network = file
            .network
            .parse()
            .map_err(|e: crate::consensus::params::UnknownNetwork| corrupt(e.to_string()))?;
        let address = Address::parse(&file.address, network).map_err(|e| corrupt(e.to_string()))?;
        let wallet = Wallet {
            path: shown,
            network,
            address,
            key: file.key,
        };
        if let StoredKey::Plain { .. } = wallet.key {
            wallet.unlock(None)?;
        }
        Ok(wallet)
    }

    pub fn network(&self) -> Network {
        self.network
    }

    pub fn address(&self) -> Address {
        self.address
    }

    pub fn is_encrypted(&self) -> bool {
        matches!(self.key, StoredKey::Encrypted { .. })
    }

    /// The private key, decrypted with `passphrase` if the file is sealed.
    /// Fails if the key does not belong to the recorded address.
    pub fn unlock(&self, passphrase: Option<&str>) -> Result<PrivateKey, WalletError> {
        let corrupt = |reason: &str| WalletError::Corrupt {
            path: self.path.clone(),
            reason: reason.to_string(),
        };
        let secret: Vec<u8> = match &self.key {
            StoredKey::Plain { secret } => {
                hex::decode(secret).map_err(|_| corrupt("the key is not hex"))?
            }
            StoredKey::Encrypted {
                kdf,
                m_cost_kib,
                t_cost,
                p_cost,
                salt,
                cipher,
                nonce,
                ciphertext,
            } => {
                if kdf != "argon2id" || cipher != "chacha20poly1305" {
                    return Err(corrupt("unknown key derivation or cipher"));
                }
                if *m_cost_kib > MAX_KDF_MEMORY_KIB
                    || *t_cost > MAX_KDF_PASSES
                    || *p_cost > MAX_KDF_LANES
                {
                    return Err(corrupt(
                        "the key derivation asks for more memory, passes or lanes than any wallet uses",
                    ));
                }
                let passphrase =
                    passphrase.ok_or_else(|| WalletError::PassphraseNeeded(self.path.clone()))?;
                let salt = hex::decode(salt).map_err(|_| corrupt("the salt is not hex"))?;
                let nonce = hex::decode(nonce).map_err(|_| corrupt("the nonce is not hex"))?;
                let sealed =
                    hex::decode(ciphertext).map_err(|_| corrupt("the ciphertext is not hex"))?;
                if nonce.len() != NONCE_LEN {
                    return Err(corrupt("the nonce has the wrong length"));
                }
                let key = derive_key(passphrase, &salt, *m_cost_kib, *t_cost, *p_cost)
                    .map_err(|e| corrupt(&e))?;
                ChaCha20Poly1305::new(&key.into())
                    .decrypt(
                        nonce.as_slice().into(),
                        Payload {
                            msg: &sealed,
                            aad: &binding(self.network, &self.address),
                        },
                    )
                    .map_err(|_| WalletError::WrongPassphrase(self.path.clone()))?
            }
        };
        let bytes: [u8; 32] = secret
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("the key is not 32 bytes"))?;
        let key = PrivateKey::from_bytes(&bytes).ok_or_else(|| corrupt("the key is not valid"))?;
        if key.address(self.network) != self.address {
            return Err(corrupt("the key does not belong to the recorded address"));
        }
        Ok(key)
    }
}

/// What the ciphertext is bound to.
fn binding(network: Network, address: &Address) -> Vec<u8> {
    format!("chaincore-wallet:{}:{address}", network.name()).into_bytes()
}

fn derive_key(
    passphrase: &str,
    salt: &[u8],
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
) -> Result<[u8; 32], String> {
    let params =
        argon2::Params::new(m_cost_kib, t_cost, p_cost, Some(32)).map_err(|e| e.to_string())?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = [0u8; 32];
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut key)
        .map_err(|e| e.to_string())?;
    Ok(key)
}

fn seal(key: &PrivateKey, passphrase: &str, aad: &[u8]) -> Result<StoredKey, WalletError> {
    if passphrase.is_empty() {
        return Err(WalletError::EmptyPassphrase);
    }
    let salt: [u8; SALT_LEN] = rand::random();
    let nonce: [u8; NONCE_LEN] = rand::random();
    let sealing_key = derive_key(passphrase, &salt, KDF_MEMORY_KIB, KDF_PASSES, KDF_LANES)
        .expect("the built-in KDF parameters are valid");
    let ciphertext = ChaCha20Poly1305::new(&sealing_key.into())
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: &key.to_bytes(),
                aad,
            },
        )
        .expect("encrypting 32 bytes cannot fail");
    Ok(StoredKey::Encrypted {
        kdf: "argon2id".into(),
        m_cost_kib: KDF_MEMORY_KIB,
        t_cost: KDF_PASSES,
        p_cost: KDF_LANES,
        salt: hex::encode(salt),
        cipher: "chacha20poly1305".into(),
        nonce: hex::encode(nonce),
        ciphertext: hex::encode(ciphertext),
    })
}

/// Writes `bytes` to a new file readable by its owner only. The bytes go
/// to a temporary file beside it (0600), synced, which is then linked to
/// `path` (refused if `path` exists) and removed, and the directory is
/// synced: a crash leaves no wallet or the whole one, never a torn key,
/// and a wallet is never overwritten. A temporary file a crash left (it
/// holds a key no wallet file names) is removed first. On a filesystem
/// without hard links (FAT, some network mounts) the file is written in
/// place, as new, and synced.
fn write_new_private(path: &Path, bytes: &[u8]) -> Result<(), WalletError> {
    let shown = path.display().to_string();
    let io = |source| WalletError::Io {
        path: shown.clone(),
        source,
    };
    if path.exists() {
        return Err(WalletError::Exists(shown));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(WalletError::NoDirectory(dir.display().to_string()));
    }
    let name = path
        .file_name()
        .map_or_else(|| "wallet".into(), |n| n.to_string_lossy().into_owned());
    let temporary = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&temporary);
    let write_new = |target: &Path| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(target).and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
    };
    let linked = write_new(&temporary).and_then(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    let exists = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::AlreadyExists => WalletError::Exists(shown.clone()),
        _ => io(e),
    };
    match linked {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::Unsupported
            ) || e.raw_os_error() == Some(libc::EPERM) =>
        {
            write_new(path).map_err(exists)?;
        }
        Err(e) => return Err(exists(e)),
    }
    // The wallet is there whatever happens now: a directory that cannot be
    // synced is worth a warning, not a failure after the fact.
    #[cfg(unix)]
    if let Err(e) = std::fs::File::open(&dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not sync the wallet's directory");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a wallet file by hand, as private as the node writes them.
    fn write_private(path: &Path, text: impl AsRef<[u8]>) {
        std::fs::write(path, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_wallet_others_may_read_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.json");
        Wallet::create(&path, Network::Regtest, None).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Wallet::open(&path).unwrap_err();
        assert!(matches!(error, WalletError::NotPrivate { mode: 0o644, .. }));
        assert!(error.to_string().contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Wallet::open(&path).is_ok());
    }

    #[test]
    fn a_key_derivation_asking_too_much_is_corrupt_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.json");
        Wallet::create(&path, Network::Regtest, Some("pw")).unwrap();
        let mut file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        file["key"]["m_cost_kib"] = (u64::from(MAX_KDF_MEMORY_KIB) * 1024).into();
        let altered = dir.path().join("altered.json");
        write_private(&altered, file.to_string());
        assert!(matches!(
            Wallet::open(&altered).unwrap().unlock(Some("pw")),
            Err(WalletError::Corrupt { .. })
        ));
    }

    #[test]
    fn creating_a_wallet_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.json");
        Wallet::create(&path, Network::Regtest, None).unwrap();
        assert!(Wallet::create(&path, Network::Regtest, None).is_err());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["w.json".to_string()]);
    }

    #[test]
    fn a_plain_wallet_round_trips_with_mode_0600_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.json");
        let made = Wallet::create(&path, Network::Regtest, None).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let opened = Wallet::open(&path).unwrap();
        assert_eq!(opened.address(), made.address());
        assert_eq!(opened.network(), Network::Regtest);
        assert!(!opened.is_encrypted());
        let key = opened.unlock(None).unwrap();
        assert_eq!(key.address(Network::Regtest), made.address());
        let before = std::fs::read(&path).unwrap();
        assert!(matches!(
            Wallet::create(&path, Network::Regtest, None),
            Err(WalletError::Exists(_))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn an_encrypted_wallet_needs_the_right_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.json");
        let made = Wallet::create(&path, Network::Test, Some("correct horse")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let key = made.unlock(Some("correct horse")).unwrap();
        assert!(!text.contains(&hex::encode(key.to_bytes())));
        let opened = Wallet::open(&path).unwrap();
        assert!(opened.is_encrypted());
        assert_eq!(opened.address(), made.address());
        assert!(matches!(
            opened.unlock(None),
            Err(WalletError::PassphraseNeeded(_))
        ));
        assert!(matches!(
            opened.unlock(Some("wrong")),
            Err(WalletError::WrongPassphrase(_))
        ));
        assert_eq!(
            opened.unlock(Some("correct horse")).unwrap().to_bytes(),
            key.to_bytes()
        );
        assert!(matches!(
            Wallet::create(&dir.path().join("e.json"), Network::Test, Some("")),
            Err(WalletError::EmptyPassphrase)
        ));
    }

    #[test]
    fn altered_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.json");
        Wallet::create(&path, Network::Regtest, None).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let other = PrivateKey::generate().address(Network::Regtest).to_string();
        let mut file: serde_json::Value = serde_json::from_str(&text).unwrap();
        // Another address than the key's.
        file["address"] = other.into();
        let swapped = dir.path().join("swapped.json");
        write_private(&swapped, file.to_string());
        assert!(matches!(
            Wallet::open(&swapped),
            Err(WalletError::Corrupt { .. })
        ));
        // Not JSON, and an unknown network.
        let garbage = dir.path().join("garbage.json");
        write_private(&garbage, "\x00\x01not json");
        assert!(matches!(
            Wallet::open(&garbage),
            Err(WalletError::Corrupt { .. })
        ));
        let mut file: serde_json::Value = serde_json::from_str(&text).unwrap();
        file["network"] = "mars".into();
        write_private(&garbage, file.to_string());
        assert!(matches!(
            Wallet::open(&garbage),
            Err(WalletError::Corrupt { .. })
        ));
        // A sealed key moved to another address's file fails to decrypt.
        let sealed_path = dir.path().join("sealed.json");
        Wallet::create(&sealed_path, Network::Regtest, Some("pw")).unwrap();
        let mut sealed: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&sealed_path).unwrap()).unwrap();
        sealed["address"] =
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["address"].clone();
        write_private(&sealed_path, sealed.to_string());
        assert!(matches!(
            Wallet::open(&sealed_path).unwrap().unlock(Some("pw")),
            Err(WalletError::WrongPassphrase(_))
        ));
    }
}

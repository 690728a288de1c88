//! Files the node rewrites whole (the address book, the saved mempool).

use std::io::Write;
use std::path::Path;

/// Who may read a file written by `replace_file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// Its owner only (0600): it holds a secret.
    Owner,
    /// As the process's umask allows.
    Default,
}

/// Replaces `path` with `bytes`: written to `path` + `.tmp` beside it,
/// synced, renamed over `path`, and the directory synced, so a crash or a
/// power loss leaves the old file or the new one, never an empty or torn
/// one.
pub fn replace_file(path: &Path, bytes: &[u8], readers: Readers) -> std::io::Result<()> {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    let temporary = std::path::PathBuf::from(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if readers == Readers::Owner {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    let mut file = options.open(&temporary)?;
    // A file left from an older release (or another umask) keeps its mode
    // when opened: set it.
    #[cfg(unix)]
    if readers == Readers::Owner {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    // The new file is in place: a directory that cannot be synced is worth
    // a warning, not a failed save.
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not sync a directory");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_holds_the_new_bytes_and_a_private_one_is_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("book.json");
        std::fs::write(&path, b"old").unwrap();
        // A leftover temporary file readable by all is made private too.
        std::fs::write(dir.path().join("book.json.tmp"), b"torn").unwrap();
        replace_file(&path, b"new", Readers::Owner).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!dir.path().join("book.json.tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}

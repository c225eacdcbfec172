//! Files only the gateway's user can read.
//!
//! The data directory holds every app's key-value data, twins and buffered
//! telemetry; a TLS key or an MQTT password lets anyone act as the gateway.
//! So the gateway creates everything owner-only (`0700` directories, `0600`
//! files: [`restrict_new_files`] sets the process's umask to `077` before
//! anything is created, which covers SQLite's journal files and wasmtime's
//! cache too), and refuses to start, naming the file and the fix, when a
//! secret it is given is open to other users, as ssh refuses an unprotected
//! private key.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// The permission bits that give a group or other users any access.
const SHARED_BITS: u32 = 0o077;

/// From now on, files and directories this process creates are its user's
/// alone.
pub fn restrict_new_files() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(SHARED_BITS));
}

/// Refuse `path` (a secret, or a directory of secrets) if its group or
/// other users have any access to it. `what` names it in the error:
/// "the TLS key", "the data directory".
pub fn check_private(path: &Path, what: &str) -> Result<(), String> {
    let metadata =
        std::fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & SHARED_BITS == 0 {
        return Ok(());
    }
    let fix = if metadata.is_dir() { "700" } else { "600" };
    Err(format!(
        "{what} {} is open to other users (mode {mode:04o}); make it the gateway user's alone: chmod {fix} {}",
        path.display(),
        path.display()
    ))
}

/// Make a directory this process created owner-only, whatever the umask was
/// when it was made.
pub fn make_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Whether the effective user is root (who may do anything a gateway's own
/// user may).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The effective user id of this process.
pub fn uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_open_to_others_is_refused_with_its_mode_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("client.key");
        std::fs::write(&key, "secret").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let error = check_private(&key, "the TLS key").unwrap_err();
        assert!(error.starts_with("the TLS key "), "{error}");
        assert!(
            error.contains("(mode 0640)")
                && error.ends_with(&format!("chmod 600 {}", key.display())),
            "{error}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(check_private(&key, "the TLS key"), Ok(()));

        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let error = check_private(dir.path(), "the data directory").unwrap_err();
        assert!(
            error.ends_with(&format!("chmod 700 {}", dir.path().display())),
            "{error}"
        );
        assert!(
            check_private(&dir.path().join("missing"), "the key")
                .unwrap_err()
                .contains("No such file")
        );
    }
}

//! The files TLS reads: where libpq's defaults are, and the checks it makes on them.

use std::path::{Path, PathBuf};

use crate::Error;

/// The user's home directory, where libpq looks for `.postgresql/`.
fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// `~/.postgresql/<name>`, libpq's default place for TLS files.
pub(super) fn default_file(name: &str) -> Option<PathBuf> {
    home_dir().map(|home| home.join(".postgresql").join(name))
}

/// Reads a whole file; the error names `what` and the path.
pub(super) fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| {
        Error::config(format!(
            "could not read {what} file \"{}\": {e}",
            path.display()
        ))
    })
}

/// libpq refuses a private key file that others can read: u=rw (0600) or less, or u=rw,g=r (0640) when owned
/// by root.
pub(super) fn check_key_permissions(path: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path).map_err(|e| {
            Error::config(format!(
                "could not read private key file \"{}\": {e}",
                path.display()
            ))
        })?;
        let mode = metadata.mode();
        let allowed = if metadata.uid() == 0 { 0o037 } else { 0o077 };
        if mode & allowed != 0 {
            return Err(Error::config(format!(
                "private key file \"{}\" has group or world access; file must have permissions u=rw (0600) \
                 or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root",
                path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

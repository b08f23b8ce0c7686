//! `sslkeylogfile` (libpq 18): the secrets of each TLS session, appended to a file in the NSS key log format
//! (`<label> <client random> <secret>`, hex) that Wireshark reads to decrypt a capture. For debugging only:
//! nothing is written unless the keyword is set.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;

use rustls::KeyLog;

use crate::Error;

/// The open key log file, shared by every session of one `connect`.
#[derive(Debug)]
pub(super) struct KeyLogFile {
    file: Mutex<File>,
}

impl KeyLogFile {
    /// Opens `path` for appending, creating it readable by its owner only (as libpq creates it).
    pub(super) fn open(path: &Path) -> Result<KeyLogFile, Error> {
        let mut options = OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(path).map_err(|e| {
            Error::config(format!(
                "could not open SSL key logging file \"{}\": {e}",
                path.display()
            ))
        })?;
        Ok(KeyLogFile {
            file: Mutex::new(file),
        })
    }
}

impl KeyLog for KeyLogFile {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        let mut line =
            String::with_capacity(label.len() + 2 * (client_random.len() + secret.len()) + 3);
        line.push_str(label);
        line.push(' ');
        hex(&mut line, client_random);
        line.push(' ');
        hex(&mut line, secret);
        line.push('\n');
        // One write per line, so lines of concurrent sessions do not interleave. A failed write loses a line
        // of a debugging aid; the session goes on, as in libpq.
        let written = match self.file.lock() {
            Ok(mut file) => file.write_all(line.as_bytes()),
            Err(poisoned) => poisoned.into_inner().write_all(line.as_bytes()),
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "could not write to the SSL key logging file");
        }
    }

    fn will_log(&self, _label: &str) -> bool {
        true
    }
}

fn hex(out: &mut String, bytes: &[u8]) {
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
}

// Natively only: the test writes to the temp dir, which a WASI test run has not preopened.
#[cfg(all(test, not(target_os = "wasi")))]
mod tests {
    use super::*;

    /// Lines in the NSS format, appended; the file is created 0600.
    #[test]
    fn appends_nss_lines() {
        let path = std::env::temp_dir().join(format!("wasi-pg-keylog-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = KeyLogFile::open(&path).unwrap();
        log.log("CLIENT_RANDOM", &[0x00, 0xab], &[0xff]);
        log.log("SERVER_TRAFFIC_SECRET_0", &[1], &[2, 3]);
        drop(log);
        KeyLogFile::open(&path)
            .unwrap()
            .log("EXPORTER_SECRET", &[4], &[5]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "CLIENT_RANDOM 00ab ff\nSERVER_TRAFFIC_SECRET_0 01 0203\nEXPORTER_SECRET 04 05\n"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_file(&path).unwrap();
    }
}

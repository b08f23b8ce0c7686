//! Password file (`.pgpass`) matching, as libpq does it.
//!
//! Reading the file (and checking its permissions) is the connection code's job; this only matches lines.

use super::DEFAULT_SOCKET_DIR;

/// Finds the password for a connection in the contents of a password file.
///
/// Each line is `hostname:port:database:username:password`; a field that is exactly `*` matches anything,
/// `\:` and `\\` stand for `:` and `\`, lines starting with `#` are comments, and the first matching line wins.
/// `host` is the host name, else the `hostaddr`, of the attempt; like libpq, an empty host and the default
/// socket directory are looked up as `localhost`, other socket directories by their path. Without a database
/// or user name nothing matches, as in libpq.
pub(crate) fn passfile_lookup(
    contents: &str,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    if dbname.is_empty() || user.is_empty() {
        return None;
    }
    let host = if host.is_empty() || host == DEFAULT_SOCKET_DIR {
        "localhost"
    } else {
        host
    };
    // libpq compares the port as text, so `05432` in the file does not match 5432.
    let port = port.to_string();
    contents.split('\n').find_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let rest = match_field(line, host)?;
        let rest = match_field(rest, &port)?;
        let rest = match_field(rest, dbname)?;
        let password = match_field(rest, user)?;
        Some(unescape_password(password))
    })
}

/// Matches the first field of `line` against `token`; returns the text after the field's `:` on a match.
fn match_field<'a>(line: &'a str, token: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let bytes = line.as_bytes();
    let mut token = token.as_bytes().iter();
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes[i] == b'\\';
        if escaped {
            i += 1;
        }
        let byte = bytes.get(i).copied();
        let Some(expected) = token.clone().next() else {
            // The whole token matched: the field must end here with an unescaped `:`.
            return (byte == Some(b':') && !escaped).then(|| &line[i + 1..]);
        };
        if byte != Some(*expected) {
            return None;
        }
        token.next();
        i += 1;
    }
    None
}

/// The password field: up to the next unescaped `:` (later fields are ignored), with escapes removed.
fn unescape_password(field: &str) -> String {
    let mut password = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            // A trailing lone backslash stays, as in libpq.
            '\\' => password.push(chars.next().unwrap_or('\\')),
            c => password.push(c),
        }
    }
    password
}

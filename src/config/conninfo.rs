//! Splitting a connection string into keyword/value pairs: libpq's `key=value` form and its
//! `postgresql://` URIs.
//!
//! Nothing here knows what a keyword means; [`super::settings`] checks and stores the values. The parsers
//! follow libpq's `conninfo_parse` and `conninfo_uri_parse_options`, including their quirks (for example,
//! `host= port=5` sets `host` to `port=5`), so a string means here what it means to `psql`.
//!
//! A password must never reach an error message. Besides never quoting password values, the parsers mark
//! a pair as `redact` when a malformed string may have spilled part of a password into it (an unquoted
//! password with a space, or a URI password with an unencoded `/` or `@`).

use crate::Error;

/// One `keyword = value` setting, in the order given.
pub(super) struct Pair {
    /// The keyword as written (not yet checked).
    pub(super) key: String,
    /// The value; URI percent-decoding may produce bytes that are not UTF-8, which only a password may keep.
    pub(super) value: Vec<u8>,
    /// The key and value may hold part of a password and must not be quoted in error messages.
    pub(super) redact: bool,
}

/// The length of the URI prefix (`postgresql://` or `postgres://`) `s` starts with, if any.
pub(super) fn uri_prefix_len(s: &str) -> Option<usize> {
    ["postgresql://", "postgres://"]
        .into_iter()
        .find(|prefix| s.starts_with(prefix))
        .map(str::len)
}

/// Whitespace as C's `isspace` sees it in the C locale, which is what libpq uses.
pub(super) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Parses libpq's `key = value ...` form.
pub(super) fn parse_keyword_value(s: &str) -> Result<Vec<Pair>, Error> {
    let b = s.as_bytes();
    let mut pairs = Vec::new();
    let mut i = 0;
    // Set after an unquoted password: a space in it makes the rest of the password look like a keyword.
    let mut after_bare_secret = false;
    loop {
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        if i == b.len() {
            return Ok(pairs);
        }
        let key_start = i;
        while i < b.len() && b[i] != b'=' && !is_space(b[i]) {
            i += 1;
        }
        // Both ends are at ASCII bytes or at the ends of `s`, so this slice is on char boundaries.
        let key = &s[key_start..i];
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return Err(if after_bare_secret || !is_plain_word(key) {
                Error::config(format!(
                    "missing \"=\" after the word at position {} in the connection string \
                     (not shown, it may be part of a password: quote values that contain spaces)",
                    key_start + 1
                ))
            } else {
                Error::config(format!(
                    "missing \"=\" after {key:?} in the connection string"
                ))
            });
        }
        i += 1;
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        let mut value = Vec::new();
        let quoted = b.get(i) == Some(&b'\'');
        if quoted {
            i += 1;
            loop {
                match b.get(i) {
                    None => {
                        return Err(Error::config(
                            "unterminated quoted string in the connection string",
                        ));
                    }
                    Some(b'\\') => {
                        if let Some(&escaped) = b.get(i + 1) {
                            value.push(escaped);
                        }
                        i += 2;
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(&other) => {
                        value.push(other);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(&byte) = b.get(i) {
                i += 1;
                if is_space(byte) {
                    break;
                }
                if byte == b'\\' {
                    if let Some(&escaped) = b.get(i) {
                        value.push(escaped);
                        i += 1;
                    }
                } else {
                    value.push(byte);
                }
            }
        }
        pairs.push(Pair {
            key: key.to_string(),
            value,
            redact: after_bare_secret,
        });
        after_bare_secret = !quoted && is_secret(key);
    }
}

/// Parses a `postgresql://[user[:password]@][host][:port][,...][/dbname][?key=value&...]` URI; `prefix_len`
/// is the length of its scheme prefix.
pub(super) fn parse_uri(s: &str, prefix_len: usize) -> Result<Vec<Pair>, Error> {
    let b = s.as_bytes();
    let mut pairs = Vec::new();
    let start = prefix_len;

    // User info ends at the first `@`, unless a `/` comes first (then there is none).
    let mut p = start;
    while p < b.len() && b[p] != b'@' && b[p] != b'/' {
        p += 1;
    }
    if b.get(p) == Some(&b'@') {
        let userinfo = &s[start..p];
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (userinfo, None),
        };
        if !user.is_empty() {
            pairs.push(Pair::new(
                "user",
                percent_decode(user, "the user name", false)?,
                false,
            ));
        }
        if let Some(password) = password
            && !password.is_empty()
        {
            pairs.push(Pair::new(
                "password",
                percent_decode(password, "the password", true)?,
                false,
            ));
        }
        p += 1;
    } else {
        p = start;
    }
    // Another `@` means a password with an unencoded `@` or `/` may have been split into the parts below.
    let redact = s[p..].contains('@');

    let mut hosts = String::new();
    let mut ports = String::new();
    let mut terminator;
    loop {
        let host_start;
        let host_end;
        if b.get(p) == Some(&b'[') {
            p += 1;
            host_start = p;
            while p < b.len() && b[p] != b']' {
                p += 1;
            }
            if p == b.len() {
                return Err(Error::config(
                    "end of string reached when looking for matching \"]\" in IPv6 host address in URI",
                ));
            }
            if p == host_start {
                return Err(Error::config("IPv6 host address may not be empty in URI"));
            }
            host_end = p;
            p += 1;
            if p < b.len() && !matches!(b[p], b':' | b'/' | b'?' | b',') {
                let unexpected = s[p..].chars().next().unwrap_or_default();
                return Err(Error::config(format!(
                    "unexpected character {unexpected:?} at position {} in URI (expected \":\" or \"/\")",
                    p + 1
                )));
            }
        } else {
            host_start = p;
            while p < b.len() && !matches!(b[p], b':' | b'/' | b'?' | b',') {
                p += 1;
            }
            host_end = p;
        }
        hosts.push_str(&s[host_start..host_end]);
        terminator = b.get(p).copied();
        if terminator == Some(b':') {
            p += 1;
            let port_start = p;
            while p < b.len() && !matches!(b[p], b'/' | b'?' | b',') {
                p += 1;
            }
            ports.push_str(&s[port_start..p]);
            terminator = b.get(p).copied();
        }
        if terminator != Some(b',') {
            break;
        }
        p += 1;
        hosts.push(',');
        ports.push(',');
    }
    // Host and port lists are decoded as a whole, as libpq does: `%2C` separates hosts like `,` does.
    if !hosts.is_empty() {
        pairs.push(Pair::new(
            "host",
            percent_decode(&hosts, "the host", redact)?,
            redact,
        ));
    }
    if !ports.is_empty() {
        pairs.push(Pair::new(
            "port",
            percent_decode(&ports, "the port", redact)?,
            redact,
        ));
    }

    if let Some(t) = terminator
        && t != b'?'
    {
        p += 1;
        let dbname_start = p;
        while p < b.len() && b[p] != b'?' {
            p += 1;
        }
        terminator = b.get(p).copied();
        let dbname = &s[dbname_start..p];
        // An empty dbname stays unset, so PGDATABASE still applies.
        if !dbname.is_empty() {
            pairs.push(Pair::new(
                "dbname",
                percent_decode(dbname, "the database name", redact)?,
                redact,
            ));
        }
    }
    if terminator.is_some() {
        parse_query(&s[p + 1..], &mut pairs)?;
    }
    Ok(pairs)
}

/// Parses the `key=value&...` query of a URI.
fn parse_query(query: &str, pairs: &mut Vec<Pair>) -> Result<(), Error> {
    let mut after_secret = false;
    let mut rest = query;
    while !rest.is_empty() {
        let (segment, next) = rest.split_once('&').unwrap_or((rest, ""));
        rest = next;
        // A password with an unencoded `&` continues in the next segment.
        let redact = after_secret;
        let shown = |raw: &str| {
            if redact {
                "(not shown, it may be part of a password: percent-encode special characters)"
                    .to_string()
            } else {
                format!("{raw:?}")
            }
        };
        let Some((raw_key, raw_value)) = segment.split_once('=') else {
            return Err(Error::config(format!(
                "missing key/value separator \"=\" in URI query parameter {}",
                shown(segment)
            )));
        };
        if raw_value.contains('=') {
            return Err(Error::config(format!(
                "extra key/value separator \"=\" in URI query parameter {}",
                shown(raw_key)
            )));
        }
        let key = percent_decode(raw_key, "a query parameter name", redact)?;
        let key = String::from_utf8(key).map_err(|_| {
            Error::config(format!(
                "URI query parameter {} is not valid UTF-8",
                shown(raw_key)
            ))
        })?;
        let secret = redact || is_secret(&key);
        let value = percent_decode(
            raw_value,
            &format!("the value of query parameter {key:?}"),
            secret,
        )?;
        after_secret = is_secret(&key);
        // JDBC spells sslmode=require as ssl=true; libpq accepts that for compatibility.
        if key == "ssl" && value == b"true" {
            pairs.push(Pair::new("sslmode", b"require".to_vec(), false));
        } else {
            pairs.push(Pair { key, value, redact });
        }
    }
    Ok(())
}

impl Pair {
    fn new(key: &str, value: Vec<u8>, redact: bool) -> Pair {
        Pair {
            key: key.to_string(),
            value,
            redact,
        }
    }
}

/// Decodes `%XX` escapes. `what` names the component for errors; `secret` keeps its text out of them.
fn percent_decode(component: &str, what: &str, secret: bool) -> Result<Vec<u8>, Error> {
    let shown = || {
        if secret {
            String::new()
        } else {
            format!(": {component:?}")
        }
    };
    let b = component.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let hi = b.get(i + 1).and_then(|&d| hex_digit(d));
        let lo = b.get(i + 2).and_then(|&d| hex_digit(d));
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(Error::config(format!(
                "invalid percent-encoded token in {what} of the URI{}",
                shown()
            )));
        };
        let byte = (hi << 4) | lo;
        if byte == 0 {
            return Err(Error::config(format!(
                "forbidden value %00 in {what} of the URI{}",
                shown()
            )));
        }
        out.push(byte);
        i += 3;
    }
    Ok(out)
}

fn hex_digit(d: u8) -> Option<u8> {
    char::from(d)
        .to_digit(16)
        .and_then(|v| u8::try_from(v).ok())
}

/// Whether `word` looks like a keyword, so quoting it in an error cannot expose anything else.
fn is_plain_word(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether the keyword's value is a secret that must never be shown.
pub(super) fn is_secret(key: &str) -> bool {
    matches!(
        key,
        "password"
            | "sslpassword"
            | "scram_client_key"
            | "scram_server_key"
            | "oauth_client_secret"
    )
}

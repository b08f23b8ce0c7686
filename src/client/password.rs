//! Changing a role's password without sending it: libpq's `PQchangePassword`, psql's `\password`.

use tracing::Instrument;

use super::Client;
use super::identifier::quote_identifier;
use super::simple_query::SimpleQueryStream;
use crate::Error;
use crate::client::telemetry::{Pending, Work};

impl Client {
    /// Sets the password of `role` to `new_password`, as libpq's `PQchangePassword` and psql's `\password` do:
    /// the password is hashed here into a SCRAM-SHA-256 verifier (a random salt, 4096 iterations, SASLprep as
    /// the server applies it), and only `ALTER ROLE "role" PASSWORD '<verifier>'` is sent. The plaintext never
    /// leaves the client, so it cannot reach the server's statement log or `pg_stat_activity`.
    ///
    /// The server checks the privileges as for any `ALTER ROLE`: a role may change its own password, a
    /// superuser or a role with `CREATEROLE` anyone's. Unlike libpq, which follows the server's
    /// `password_encryption`, the verifier is always SCRAM-SHA-256 (MD5 passwords are deprecated since
    /// PostgreSQL 18). The statement is left out of `tracing` spans even with statement tracing on.
    ///
    /// ```no_run
    /// # async fn run(client: &wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
    /// client.change_password("app", "a new secret").await?;
    /// # Ok(()) }
    /// ```
    pub async fn change_password(&self, role: &str, new_password: &str) -> Result<(), Error> {
        let sql = alter_role_password(role, new_password)?;
        // No statement on the span (Work::Other): the verifier is not the password, but it allows an offline
        // guess.
        let traced = self.telemetry("change_password", Work::Other);
        let span = traced.span().clone();
        let request = async {
            self.before_request().await?;
            self.start_simple(&sql)
        }
        .instrument(span)
        .await;
        match request {
            Ok(request) => SimpleQueryStream::new(request, Pending::new(traced))
                .finish()
                .await
                .map(drop),
            Err(e) => {
                traced.end(Some(&e));
                Err(e)
            }
        }
    }
}

/// The statement that sets `role`'s password to a fresh SCRAM-SHA-256 verifier of `password`.
fn alter_role_password(role: &str, password: &str) -> Result<String, Error> {
    if password.contains('\0') {
        return Err(Error::config("a password cannot contain a NUL byte"));
    }
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    // `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64: nothing to escape, which makes the
    // literal mean the same whatever standard_conforming_strings says. Checked rather than assumed.
    if !verifier
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-$:+/=".contains(&b))
    {
        return Err(Error::protocol(
            "BUG: the SCRAM verifier holds a character that would need quoting",
        ));
    }
    Ok(format!(
        "ALTER ROLE {} PASSWORD '{verifier}'",
        quote_identifier(role)
    ))
}

#[cfg(test)]
mod tests {
    use super::alter_role_password;

    /// The statement carries a verifier, never the password, and quotes the role.
    #[test]
    fn only_the_verifier_is_sent() {
        let password = "correct horse battery staple";
        let sql = alter_role_password("we\"ird role", password).unwrap();
        assert!(!sql.contains(password), "{sql}");
        assert!(
            sql.starts_with("ALTER ROLE \"we\"\"ird role\" PASSWORD 'SCRAM-SHA-256$4096:"),
            "{sql}"
        );
        assert!(sql.ends_with('\''), "{sql}");
        // A fresh salt each time.
        assert_ne!(sql, alter_role_password("we\"ird role", password).unwrap());
        assert!(alter_role_password("r", "nul\0byte").is_err());
    }
}

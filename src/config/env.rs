//! The `PG*` environment variables, as libpq reads them.

use std::cell::Cell;

use super::Config;
use super::settings::Origin;
use crate::Error;

/// Environment variables that supply a connection option, with the libpq keyword each one sets.
const ENV_VARS: &[(&str, &str)] = &[
    ("PGUSER", "user"),
    ("PGPASSWORD", "password"),
    ("PGPASSFILE", "passfile"),
    ("PGCHANNELBINDING", "channel_binding"),
    ("PGCONNECT_TIMEOUT", "connect_timeout"),
    ("PGDATABASE", "dbname"),
    ("PGHOST", "host"),
    ("PGHOSTADDR", "hostaddr"),
    ("PGPORT", "port"),
    ("PGCLIENTENCODING", "client_encoding"),
    ("PGOPTIONS", "options"),
    ("PGAPPNAME", "application_name"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLNEGOTIATION", "sslnegotiation"),
    ("PGSSLCOMPRESSION", "sslcompression"),
    ("PGSSLCERT", "sslcert"),
    ("PGSSLKEY", "sslkey"),
    ("PGSSLCERTMODE", "sslcertmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGSSLCRL", "sslcrl"),
    ("PGSSLCRLDIR", "sslcrldir"),
    ("PGSSLSNI", "sslsni"),
    ("PGREQUIREPEER", "requirepeer"),
    ("PGREQUIREAUTH", "require_auth"),
    ("PGSSLMINPROTOCOLVERSION", "ssl_min_protocol_version"),
    ("PGSSLMAXPROTOCOLVERSION", "ssl_max_protocol_version"),
    ("PGMINPROTOCOLVERSION", "min_protocol_version"),
    ("PGMAXPROTOCOLVERSION", "max_protocol_version"),
    ("PGGSSENCMODE", "gssencmode"),
    ("PGKRBSRVNAME", "krbsrvname"),
    ("PGGSSLIB", "gsslib"),
    ("PGGSSDELEGATION", "gssdelegation"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
    ("PGLOADBALANCEHOSTS", "load_balance_hosts"),
];

/// Environment variables libpq sends as startup parameters, with the server setting each one sets.
const STARTUP_ENV_VARS: &[(&str, &str)] = &[
    ("PGDATESTYLE", "datestyle"),
    ("PGTZ", "timezone"),
    ("PGGEQO", "geqo"),
];

impl Config {
    /// Builds a configuration from the `PG*` environment variables alone (see
    /// [`from_conninfo_and_env`](Config::from_conninfo_and_env)).
    pub fn from_env() -> Result<Config, Error> {
        Config::from_conninfo_and_env("")
    }

    /// Parses a connection string, then fills what it leaves unset from the process environment
    /// (see [`apply_env_with`](Config::apply_env_with)), as libpq's `PQconnectdb` does.
    ///
    /// An environment variable that is set but not valid UTF-8 is an error rather than ignored, so that a
    /// broken `PGHOST` cannot silently send the connection somewhere else.
    pub fn from_conninfo_and_env(conninfo: &str) -> Result<Config, Error> {
        let mut config = Config::parse_unchecked(conninfo)?;
        let not_unicode = Cell::new(None);
        let result = config.apply_env_with(|name| match std::env::var(name) {
            Ok(value) => Some(value),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => {
                let first = not_unicode.take().unwrap_or_else(|| name.to_string());
                not_unicode.set(Some(first));
                None
            }
        });
        if let Some(name) = not_unicode.take() {
            return Err(Error::config(format!(
                "environment variable {name} is not valid UTF-8"
            )));
        }
        result.map(|()| config)
    }

    /// Fills the settings that are not set yet from `PG*` environment variables, looked up with `env`,
    /// then checks the result as a whole (host, hostaddr and port counts, TLS settings).
    ///
    /// As in libpq, a setting given explicitly, even as an empty value, wins over its variable, and a
    /// variable wins over the default. The variables are those of libpq: `PGHOST`, `PGHOSTADDR`, `PGPORT`,
    /// `PGDATABASE`, `PGUSER`, `PGPASSWORD`, `PGPASSFILE`, `PGOPTIONS`, `PGAPPNAME`, `PGCONNECT_TIMEOUT`,
    /// `PGCLIENTENCODING`, `PGSSLMODE`, `PGSSLNEGOTIATION`, `PGSSLCOMPRESSION`, `PGSSLCERT`, `PGSSLKEY`,
    /// `PGSSLCERTMODE`, `PGSSLROOTCERT`, `PGSSLCRL`, `PGSSLCRLDIR`, `PGSSLSNI`, `PGREQUIREPEER`,
    /// `PGREQUIREAUTH`, `PGCHANNELBINDING`, `PGTARGETSESSIONATTRS`, `PGLOADBALANCEHOSTS`,
    /// `PGSSLMINPROTOCOLVERSION`, `PGSSLMAXPROTOCOLVERSION`, `PGMINPROTOCOLVERSION`, `PGMAXPROTOCOLVERSION`,
    /// `PGGSSENCMODE`, `PGKRBSRVNAME`, `PGGSSLIB` and `PGGSSDELEGATION`. `PGDATESTYLE`, `PGTZ` and `PGGEQO`
    /// become the startup parameters `datestyle`, `timezone` and `geqo` unless [`param`](Config::param) set
    /// them (or they say `default`). `PGSERVICE` is ignored: service files are not supported.
    ///
    /// An invalid value is an error that names the variable.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use wasi_pg_client::Config;
    ///
    /// let env = HashMap::from([("PGHOST", "db.internal"), ("PGUSER", "app")]);
    /// let mut config = Config::parse("user=admin")?;
    /// config.apply_env_with(|name| env.get(name).map(|v| v.to_string()))?;
    /// assert_eq!(config.get_user(), Some("admin")); // explicit beats the environment
    /// # Ok::<(), wasi_pg_client::Error>(())
    /// ```
    pub fn apply_env_with(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), Error> {
        for &(var, key) in ENV_VARS {
            if self.is_given(key) {
                continue;
            }
            if let Some(value) = env(var) {
                self.set_option(key, &value, Origin::Env(var))?;
            }
        }
        for &(var, name) in STARTUP_ENV_VARS {
            if let Some(value) = env(var)
                && !value.eq_ignore_ascii_case("default")
                && !self.params.iter().any(|(k, _)| k == name)
            {
                self.params.push((name.to_string(), value));
            }
        }
        if env("PGSERVICE").is_some() {
            tracing::debug!("PGSERVICE is set but service files are not supported; ignoring it");
        }
        self.check()
    }
}

//! libpq keywords whose effect the server or the kernel can show, on both targets (issue 22's audit; the TLS
//! ones are in `tls.rs`): `requirepeer`, keepalives as the kernel's TCP table shows them, `gssencmode`,
//! `client_encoding`, and the keywords that have no effect by libpq's own rule. Also libpq's
//! `PQchangePassword` (`Client::change_password`).

use std::time::Duration;

use wasi_pg_client::{Client, Config, ErrorKind};

use super::{Check, Env, Outcome, Scenario, connect, sleep};

pub(super) fn scenarios() -> Vec<(&'static str, Scenario)> {
    scenarios![
        requirepeer_checks_unix_sockets_only,
        keepalives_as_the_kernel_shows_them,
        gssencmode_without_gssapi,
        client_encoding_is_utf8,
        keywords_without_effect_still_connect,
        change_password_sends_only_a_verifier,
        libpq18_oauth_keywords_accepted,
        scram_keys_log_in_without_the_password,
    ]
}

/// A connection string that must be refused before anything is sent, with `ErrorKind::Unsupported` naming
/// `keyword`, whether at parse time or at connect time.
async fn refused_as_unsupported(conninfo: &str, keyword: &str) -> Outcome {
    let err = match Config::parse(conninfo) {
        Err(e) => e,
        Ok(config) => match Client::connect(&config).await {
            Err(e) => e,
            Ok(_) => return Err(format!("{conninfo}: connected, expected Unsupported")),
        },
    };
    ensure_eq!(err.kind(), ErrorKind::Unsupported);
    ensure!(
        err.to_string().contains(&format!("\"{keyword}\"")),
        "{conninfo}: the error does not name {keyword}: {err}"
    );
    Ok(())
}

/// libpq's rule: the server's operating-system user is checked on Unix-domain sockets, where the kernel knows
/// it, and TCP connections are not checked. Natively a wrong user is refused before the startup, naming both
/// users; wasm32-wasip2 has no Unix-domain sockets at all.
async fn requirepeer_checks_unix_sockets_only(env: &Env) -> Outcome {
    let c = connect(&format!("{} requirepeer=nobody", env.trust)).await?;
    let tcp: bool = c
        .query_one("SELECT inet_client_addr() IS NOT NULL", &[])
        .await
        .check("over TCP")?
        .get(0);
    ensure!(tcp, "not a TCP connection");
    c.close().await.check("close")?;
    unix_sockets(env).await
}

#[cfg(not(target_os = "wasi"))]
async fn unix_sockets(env: &Env) -> Outcome {
    use std::os::unix::fs::MetadataExt;
    use wasi_pg_client::transport::tokio::TokioStream;

    let dir = env.socket_dir.as_deref().ok_or("no socket dir")?;
    let socket = format!("{dir}/.s.PGSQL.{}", env.port);
    // The postmaster made the socket file, so its owner is the user the server runs as. The test reads the
    // name from /etc/passwd on its own, to check the client's lookup.
    let uid = std::fs::metadata(&socket).check("stat the socket")?.uid();
    let passwd = std::fs::read_to_string("/etc/passwd").check("read /etc/passwd")?;
    let owner = passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.get(2) == Some(&uid.to_string().as_str()))
        .and_then(|fields| fields.first().map(|name| name.to_string()))
        .ok_or(format!("uid {uid} is not in /etc/passwd"))?;
    let over_socket = |peer: &str| {
        format!(
            "host={dir} port={} user=pgc_trust dbname=postgres requirepeer={peer}",
            env.port
        )
    };

    let c = connect(&over_socket(&owner)).await?;
    let unix: bool = c
        .query_one("SELECT inet_client_addr() IS NULL", &[])
        .await
        .check("over the socket")?
        .get(0);
    ensure!(unix, "not a Unix socket connection");
    c.close().await.check("close")?;

    let other = if owner == "nobody" { "root" } else { "nobody" };
    let config = Config::parse(&over_socket(other)).check("parse")?;
    let err = match Client::connect(&config).await {
        Ok(_) => {
            return Err(format!(
                "requirepeer={other} connected to a server run by {owner}"
            ));
        }
        Err(e) => e,
    };
    ensure_eq!(err.kind(), ErrorKind::Auth);
    let text = err.to_string();
    ensure!(
        text.contains(&format!("requirepeer is \"{other}\""))
            && text.contains(&format!("\"{owner}\"")),
        "the error does not name both users: {text}"
    );

    // A transport the caller opened cannot be checked: refused rather than ignored.
    let stream = tokio::net::UnixStream::connect(&socket)
        .await
        .check("open the socket")?;
    let config = Config::parse(&over_socket(&owner)).check("parse")?;
    match Client::connect_with_transport(Box::new(TokioStream(stream)), &config).await {
        Ok(_) => Err("requirepeer was ignored on the caller's transport".to_string()),
        Err(e) => {
            ensure_eq!(e.kind(), ErrorKind::Unsupported);
            ensure!(e.to_string().contains("\"requirepeer\""), "{e}");
            Ok(())
        }
    }
}

#[cfg(target_os = "wasi")]
async fn unix_sockets(_env: &Env) -> Outcome {
    let config = Config::parse("host=/var/run/postgresql user=pgc_trust requirepeer=postgres")
        .check("parse")?;
    match Client::connect(&config).await {
        Ok(_) => Err("connected over a Unix-domain socket on WASI".to_string()),
        Err(e) => {
            ensure_eq!(e.kind(), ErrorKind::Unsupported);
            ensure!(e.to_string().contains("Unix-domain sockets"), "{e}");
            Ok(())
        }
    }
}

/// The ends of a TCP connection, as the server sees them.
struct Ends {
    client_port: i32,
    server_port: i32,
    /// `/proc/net/tcp` or `/proc/net/tcp6`.
    table: &'static str,
}

/// The kernel's view of the client's socket: the timer of its row in the TCP table, read through the server
/// (which shares the network namespace) by `observer`: `(timer kind, hundredths of a second left)`. Kind 2 is
/// the keepalive timer, 0 none; an idle socket with keepalives on always has it pending.
async fn kernel_timer(observer: &Client, ends: &Ends) -> Result<(u32, u64), String> {
    let Ends {
        client_port,
        server_port,
        table,
    } = *ends;
    let text: String = observer
        .query_one("SELECT pg_read_file($1)", &[&table])
        .await
        .check(table)?
        .get(0);
    let port_of = |address: &str| {
        address
            .rsplit(':')
            .next()
            .and_then(|hex| i32::from_str_radix(hex, 16).ok())
    };
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, local, remote, _, _, timer, ..] = fields.as_slice() else {
            continue;
        };
        if port_of(local) != Some(client_port) || port_of(remote) != Some(server_port) {
            continue;
        }
        let (kind, when) = timer.split_once(':').ok_or(format!("timer {timer:?}"))?;
        let kind = u32::from_str_radix(kind, 16).check("timer kind")?;
        let when = u64::from_str_radix(when, 16).check("timer expiry")?;
        return Ok((kind, when));
    }
    Err(format!(
        "no row for client port {client_port} to {server_port} in {table}"
    ))
}

/// `keepalives` and `keepalives_idle` as the kernel shows them for the client's own socket (natively tokio's,
/// under wasmtime the host socket behind wasi:sockets): off means no keepalive timer; on means one that fires
/// within `keepalives_idle`, or within the system's `tcp_keepalive_time` by default. (`keepalives_interval`
/// and `keepalives_count` are not in the table; the native unit tests read them back with getsockopt.)
async fn keepalives_as_the_kernel_shows_them(env: &Env) -> Outcome {
    let observer = connect(&env.trust).await?;
    let system_idle: String = observer
        .query_one(
            "SELECT pg_read_file('/proc/sys/net/ipv4/tcp_keepalive_time')",
            &[],
        )
        .await
        .check("tcp_keepalive_time")?
        .get(0);
    let system_idle: u64 = system_idle.trim().parse().check("tcp_keepalive_time")?;
    for (settings, idle) in [
        ("keepalives=0", None),
        ("keepalives_idle=37", Some(37)),
        ("keepalives=1 keepalives_idle=0", Some(system_idle)),
        ("", Some(system_idle)),
    ] {
        let c = connect(&format!("{} {settings}", env.trust)).await?;
        let row = c
            .query_one(
                "SELECT inet_client_port(), inet_server_port(), family(inet_client_addr())",
                &[],
            )
            .await
            .check("ports")?;
        let ends = Ends {
            client_port: row.get(0),
            server_port: row.get(1),
            table: match row.get::<_, i32>(2) {
                6 => "/proc/net/tcp6",
                _ => "/proc/net/tcp",
            },
        };
        // The answer has been read and the query acknowledged; give the last ACKs a moment so that no
        // retransmission timer stands in front of the keepalive timer.
        sleep(Duration::from_millis(200)).await;
        let (kind, left) = kernel_timer(&observer, &ends).await?;
        match idle {
            None => ensure!(
                kind == 0,
                "{settings:?}: timer kind {kind} ({left}), expected none"
            ),
            Some(idle) => {
                // In clock ticks of 1/100 s; the timer was set at most a few seconds ago.
                let full = idle * 100;
                ensure!(
                    kind == 2 && left <= full && left + 1000 >= full,
                    "{settings:?}: timer kind {kind} with {left} ticks left, expected a keepalive timer \
                     of {idle} s"
                );
            }
        }
        c.close().await.check("close")?;
    }
    observer.close().await.check("close the observer")?;
    Ok(())
}

/// Without GSSAPI, `disable` and `prefer` connect unencrypted by GSS (as libpq built without GSSAPI does) and
/// `require` is refused before anything is sent.
async fn gssencmode_without_gssapi(env: &Env) -> Outcome {
    for mode in ["disable", "prefer"] {
        let c = connect(&format!("{} gssencmode={mode}", env.trust)).await?;
        let encrypted: bool = c
            .query_one(
                "SELECT encrypted FROM pg_stat_gssapi WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .check("pg_stat_gssapi")?
            .get(0);
        ensure!(!encrypted, "gssencmode={mode}: GSS-encrypted");
        c.close().await.check("close")?;
    }
    refused_as_unsupported(&format!("{} gssencmode=require", env.trust), "gssencmode").await
}

/// The session always speaks UTF8, which every spelling libpq accepts for it gives; another encoding is refused
/// rather than silently replaced.
async fn client_encoding_is_utf8(env: &Env) -> Outcome {
    for value in ["UTF8", "utf-8", "unicode", "auto"] {
        let c = connect(&format!("{} client_encoding={value}", env.trust)).await?;
        let shown: String = c
            .query_one("SELECT current_setting('client_encoding')", &[])
            .await
            .check("client_encoding")?
            .get(0);
        ensure_eq!(shown.as_str(), "UTF8");
        ensure_eq!(c.parameter("client_encoding").as_deref(), Some("UTF8"));
        let text: String = c
            .query_one("SELECT $1::text", &[&"grüße, 東京"])
            .await
            .check("round trip")?
            .get(0);
        ensure_eq!(text.as_str(), "grüße, 東京");
        c.close().await.check("close")?;
    }
    refused_as_unsupported(
        &format!("{} client_encoding=LATIN1", env.trust),
        "client_encoding",
    )
    .await
}

/// The keywords that have no effect by libpq's rule (no TLS compression, no encrypted key, no GSSAPI) are
/// accepted as psql accepts them, and the connection works.
async fn keywords_without_effect_still_connect(env: &Env) -> Outcome {
    let settings =
        "sslcompression=1 sslpassword=unused krbsrvname=other gsslib=gssapi gssdelegation=1";
    let c = connect(&format!("{} {settings}", env.trust)).await?;
    let one: i32 = c.query_one("SELECT 1", &[]).await.check("query")?.get(0);
    ensure_eq!(one, 1);
    c.close().await.check("close")
}

/// `Client::change_password` as libpq's `PQchangePassword`: the server stores a SCRAM-SHA-256 verifier that
/// does not hold the password, the new password logs in and the old one no longer does. The SCRAM role's
/// password is changed and then put back (also when a check fails), so later scenarios still log in.
async fn change_password_sends_only_a_verifier(env: &Env) -> Outcome {
    let admin = connect(&env.trust).await?;
    let config = Config::parse(&env.scram).check("parse")?;
    let role = config.get_user().unwrap_or_default().to_string();
    // A password with quotes and a backslash: nothing of it may need escaping, since it is never sent.
    let new_password = format!("it's a \\ new {}", crate::two_target::THIS_TARGET);
    admin
        .change_password(&role, &new_password)
        .await
        .check("change_password")?;
    let checked = check_changed_password(env, &admin, &role, &config, &new_password).await;
    let restored = admin
        .change_password(&role, &env.scram_password)
        .await
        .check("put the password back");
    checked?;
    restored?;
    connect(&env.scram)
        .await?
        .close()
        .await
        .check("old password again")?;
    admin.close().await.check("close")
}

async fn check_changed_password(
    env: &Env,
    admin: &Client,
    role: &str,
    config: &Config,
    new_password: &str,
) -> Outcome {
    let stored: String = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&role],
        )
        .await
        .check("pg_authid")?
        .get(0);
    ensure!(
        stored.starts_with("SCRAM-SHA-256$4096:"),
        "not a SCRAM verifier: {stored}"
    );
    ensure!(
        !stored.contains(new_password),
        "the password is stored in the clear"
    );
    let mut with_new = config.clone();
    with_new.password(new_password);
    let client = Client::connect(&with_new)
        .await
        .check("log in with the new password")?;
    client.close().await.check("close")?;
    match Client::connect(&Config::parse(&env.scram).check("parse")?).await {
        Ok(_) => Err("the old password still logs in".to_string()),
        Err(e) => {
            ensure!(
                e.to_string().contains("password authentication failed"),
                "the old password: {e}"
            );
            Ok(())
        }
    }
}

/// libpq 18's OAuth keywords are accepted; they only matter when a server asks for OAUTHBEARER, so against a
/// SCRAM server (PostgreSQL 15 has no OAuth) the login is unchanged and the client secret never shows.
/// `require_auth=oauth` refuses the SCRAM server before the password leaves. The OAuth exchange itself runs
/// against scripted servers (tests/attacks.rs).
async fn libpq18_oauth_keywords_accepted(env: &Env) -> Outcome {
    let secret = "c2VjcmV0LWtleS1ieXRlcw==";
    let conninfo = format!(
        "{} oauth_issuer=https://issuer.example oauth_client_id=app oauth_client_secret={secret} \
         oauth_scope=openid",
        env.scram
    );
    let config = Config::parse(&conninfo).check("parse")?;
    ensure!(
        !format!("{config:?}").contains(secret),
        "the client secret is shown: {config:?}"
    );
    connect(&conninfo)
        .await?
        .close()
        .await
        .check("OAuth keywords with a SCRAM server")?;
    let only_oauth = format!("{} require_auth=oauth", env.scram);
    match Client::connect(&Config::parse(&only_oauth).check("parse")?).await {
        Ok(_) => Err("require_auth=oauth logged in with SCRAM".to_string()),
        Err(e) => {
            ensure!(e.kind() == ErrorKind::Auth, "require_auth=oauth: {e}");
            ensure!(
                e.to_string().contains("require_auth"),
                "require_auth=oauth: {e}"
            );
            Ok(())
        }
    }
}

/// libpq 18's `scram_client_key` and `scram_server_key`: the keys derived from the role's verifier in
/// `pg_authid` log in without the password; a wrong ServerKey fails the server-signature check.
async fn scram_keys_log_in_without_the_password(env: &Env) -> Outcome {
    let config = Config::parse(&env.scram).check("parse")?;
    let role = config.get_user().unwrap_or_default();
    let base = format!(
        "host={} port={} user={role} dbname=postgres",
        env.host, env.port
    );
    login_with_scram_keys(&env.trust, &base, role, &env.scram_password, false).await
}

/// What a SCRAM-SHA-256 verifier in `pg_authid` holds: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl Verifier {
    fn parse(stored: &str) -> Result<Verifier, String> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let malformed = || "pg_authid holds no SCRAM-SHA-256 verifier for the role".to_string();
        let rest = stored
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or_else(malformed)?;
        let (params, keys) = rest.split_once('$').ok_or_else(malformed)?;
        let (iterations, salt) = params.split_once(':').ok_or_else(malformed)?;
        let (stored_key, server_key) = keys.split_once(':').ok_or_else(malformed)?;
        Ok(Verifier {
            iterations: iterations.parse().map_err(|_| malformed())?,
            salt: b64.decode(salt).map_err(|_| malformed())?,
            stored_key: b64.decode(stored_key).map_err(|_| malformed())?,
            server_key: b64.decode(server_key).map_err(|_| malformed())?,
        })
    }

    /// ClientKey = HMAC(SaltedPassword, "Client Key"), SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt,
    /// iterations) as RFC 5802 defines them. The SHA-256 of the result must be the StoredKey.
    fn client_key(&self, password: &str) -> Result<Vec<u8>, String> {
        use hmac::Mac as _;
        use sha2::Digest as _;
        let mac = |key: &[u8], data: &[&[u8]]| -> Vec<u8> {
            let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(key)
                .expect("HMAC takes any key length");
            for part in data {
                mac.update(part);
            }
            mac.finalize().into_bytes().to_vec()
        };
        // PBKDF2 with one output block: U1 = HMAC(P, salt || 1), Ui = HMAC(P, Ui-1), the XOR of all.
        let mut u = mac(password.as_bytes(), &[&self.salt, &1u32.to_be_bytes()]);
        let mut salted = u.clone();
        for _ in 1..self.iterations {
            u = mac(password.as_bytes(), &[&u]);
            salted.iter_mut().zip(&u).for_each(|(s, b)| *s ^= b);
        }
        let client_key = mac(&salted, &[b"Client Key"]);
        ensure!(
            sha2::Sha256::digest(&client_key).as_slice() == self.stored_key.as_slice(),
            "SHA-256(ClientKey) derived from the password is not the StoredKey in pg_authid"
        );
        Ok(client_key)
    }
}

/// Reads `role`'s verifier as the superuser of `admin`, derives its ClientKey from `password`, then connects
/// with `base` and only the keys: it must log in as `role` (bound to the TLS channel when `bound`). A flipped bit
/// in the ServerKey must fail the server-signature check, one in the ClientKey the server's proof check, and
/// neither key may appear in an error.
pub(super) async fn login_with_scram_keys(
    admin: &str,
    base: &str,
    role: &str,
    password: &str,
    bound: bool,
) -> Outcome {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let admin = connect(admin).await?;
    let stored: String = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&role],
        )
        .await
        .check("pg_authid")?
        .get(0);
    admin.close().await.check("close the admin session")?;
    let verifier = Verifier::parse(&stored)?;
    let client_key = verifier.client_key(password)?;
    let keyed = |client_key: &[u8], server_key: &[u8]| {
        let (client_key, server_key) = (b64.encode(client_key), b64.encode(server_key));
        let conninfo =
            format!("{base} scram_client_key={client_key} scram_server_key={server_key}");
        (conninfo, [client_key, server_key])
    };

    let (conninfo, _) = keyed(&client_key, &verifier.server_key);
    ensure!(!conninfo.contains("password"), "no password may be given");
    let client = connect(&conninfo).await?;
    let row = client
        .query_one(
            "SELECT current_user::text, coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
            &[],
        )
        .await
        .check("query with keys")?;
    ensure_eq!(row.get::<_, String>(0), role.to_string());
    ensure_eq!(row.get::<_, bool>(1), bound);
    client.close().await.check("close")?;

    let flipped = |key: &[u8]| {
        let mut key = key.to_vec();
        key[0] ^= 1;
        key
    };
    for (what, client_key, server_key, expected) in [
        (
            "a wrong ServerKey",
            client_key.clone(),
            flipped(&verifier.server_key),
            "scram_server_key",
        ),
        (
            "a wrong ClientKey",
            flipped(&client_key),
            verifier.server_key.clone(),
            "authentication failed",
        ),
    ] {
        let (conninfo, keys) = keyed(&client_key, &server_key);
        let config = Config::parse(&conninfo).check("parse")?;
        let err = match Client::connect(&config).await {
            Ok(_) => return Err(format!("{what}: connected")),
            Err(e) => e,
        };
        let text = err.to_string();
        ensure!(text.contains(expected), "{what}: {text}");
        ensure!(
            keys.iter().all(|key| !text.contains(key.as_str())),
            "{what}: a key is shown: {text}"
        );
    }
    Ok(())
}

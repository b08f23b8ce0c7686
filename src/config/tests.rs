//! Tests of [`Config`](crate::Config): connection strings, URIs, environment variables, pgpass and the
//! checks libpq makes, compared with what libpq accepts and refuses.
//!
//! Longer than 800 lines on purpose: one independent test per keyword or rule, in the order of the keywords.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn parse(s: &str) -> Config {
    match Config::parse(s) {
        Ok(config) => config,
        Err(e) => panic!("{s:?} should parse: {e}"),
    }
}

fn parse_err(s: &str) -> String {
    match Config::parse(s) {
        Ok(config) => panic!("{s:?} should not parse, got {config:?}"),
        Err(e) => {
            assert_eq!(e.kind(), crate::ErrorKind::Config);
            e.to_string()
        }
    }
}

fn tcp(name: &str) -> Host {
    Host::Tcp(name.to_string())
}

fn unix(dir: &str) -> Host {
    Host::Unix(PathBuf::from(dir))
}

fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn with_env(conninfo: &str, vars: &[(&str, &str)]) -> Result<Config, Error> {
    let mut config = Config::parse_unchecked(conninfo)?;
    config.apply_env_with(env_of(vars))?;
    Ok(config)
}

fn target(host: Host, hostaddr: Option<IpAddr>, port: u16) -> Target {
    Target {
        host,
        hostaddr,
        port,
        require_peer: None,
    }
}

// ---- URIs ----

#[test]
fn uri_with_every_component() {
    let c = parse(
        "postgresql://us%65r:p%40ss%3Aw%2Frd@db.example.com:5433/my%20db\
         ?application_name=my%26app&connect_timeout=10&sslmode=require",
    );
    assert_eq!(c.get_user(), Some("user"));
    assert_eq!(c.get_password(), Some(&b"p@ss:w/rd"[..]));
    assert_eq!(c.get_hosts(), [tcp("db.example.com")]);
    assert_eq!(c.get_ports(), [5433]);
    assert_eq!(c.get_dbname(), Some("my db"));
    assert_eq!(c.get_application_name(), Some("my&app"));
    assert_eq!(c.get_connect_timeout(), Some(Duration::from_secs(10)));
    assert_eq!(c.get_ssl_mode(), SslMode::Require);
}

#[test]
fn uri_short_scheme_and_from_str() {
    let c: Config = "postgres://bob@localhost/app".parse().unwrap();
    assert_eq!(c.get_user(), Some("bob"));
    assert_eq!(c.get_hosts(), [tcp("localhost")]);
    assert_eq!(c.get_dbname(), Some("app"));
    assert_eq!(c.get_password(), None);
}

#[test]
fn uri_password_may_contain_colons_unencoded() {
    let c = parse("postgresql://u:a:b:c@h/db");
    assert_eq!(c.get_user(), Some("u"));
    assert_eq!(c.get_password(), Some(&b"a:b:c"[..]));
}

#[test]
fn uri_password_only_and_non_utf8_password() {
    let c = parse("postgresql://:pw@h");
    assert_eq!(c.get_user(), None);
    assert_eq!(c.get_password(), Some(&b"pw"[..]));
    let c = parse("postgresql://u:%FF%fe@h");
    assert_eq!(c.get_password(), Some(&[0xff, 0xfe][..]));
}

#[test]
fn uri_ipv6_hosts() {
    let c = parse("postgresql://[::1]:5433,[fe80::1%25eth0]/db");
    assert_eq!(c.get_hosts(), [tcp("::1"), tcp("fe80::1%eth0")]);
    assert_eq!(c.get_ports(), [5433, 5432]);
    let c = parse("postgresql://[2001:db8::7]");
    assert_eq!(c.get_hosts(), [tcp("2001:db8::7")]);
    assert!(c.get_ports().is_empty());
}

#[test]
fn uri_ipv6_errors() {
    assert!(parse_err("postgresql://[::1/db").contains("\"]\""));
    assert!(parse_err("postgresql://[]/db").contains("may not be empty"));
    let e = parse_err("postgresql://[::1]x/db");
    assert!(e.contains("'x'") && e.contains("position 19"), "{e}");
}

#[test]
fn uri_multiple_hosts_and_ports() {
    let c = parse("postgresql://h1:1,h2:2,h3:3/db");
    assert_eq!(c.get_hosts(), [tcp("h1"), tcp("h2"), tcp("h3")]);
    assert_eq!(c.get_ports(), [1, 2, 3]);
    assert_eq!(
        c.targets().unwrap(),
        [
            target(tcp("h1"), None, 1),
            target(tcp("h2"), None, 2),
            target(tcp("h3"), None, 3)
        ]
    );
    // Ports missing on some hosts are the default.
    let c = parse("postgresql://a,b:6000");
    assert_eq!(c.get_ports(), [5432, 6000]);
    let c = parse("postgresql://a,b");
    assert_eq!(c.get_ports(), [5432, 5432]);
    // A host list without names but with a port.
    let c = parse("postgresql://:7000/db");
    assert!(c.get_hosts().is_empty());
    assert_eq!(c.get_ports(), [7000]);
}

#[test]
fn uri_socket_directory() {
    let c = parse("postgresql://%2Fvar%2Flib%2Fpostgresql/dbname");
    assert_eq!(c.get_hosts(), [unix("/var/lib/postgresql")]);
    let c = parse("postgresql:///dbname?host=/tmp&port=5499");
    assert_eq!(c.get_hosts(), [unix("/tmp")]);
    assert_eq!(c.targets().unwrap(), [target(unix("/tmp"), None, 5499)]);
    // An encoded comma separates hosts, as in libpq (the lists are decoded as a whole).
    let c = parse("postgresql://a%2Cb");
    assert_eq!(c.get_hosts(), [tcp("a"), tcp("b")]);
}

#[test]
fn uri_empty_components_are_unset() {
    for uri in [
        "postgresql://",
        "postgresql:///",
        "postgresql://@/",
        "postgresql://:@/?",
        "postgres://",
    ] {
        let c = parse(uri);
        assert!(c.get_hosts().is_empty(), "{uri}");
        assert!(c.get_ports().is_empty(), "{uri}");
        assert_eq!(c.get_user(), None, "{uri}");
        assert_eq!(c.get_password(), None, "{uri}");
        assert_eq!(c.get_dbname(), None, "{uri}");
        assert!(c.given_empty.is_empty(), "{uri}");
    }
}

#[test]
fn uri_query_parameters() {
    let c = parse(
        "postgresql://a/db?host=b&user=me%40corp&options=-c%20work_mem%3D64MB&target_session_attrs=read-write",
    );
    assert_eq!(c.get_hosts(), [tcp("b")]);
    assert_eq!(c.get_user(), Some("me@corp"));
    assert_eq!(c.get_options(), Some("-c work_mem=64MB"));
    assert_eq!(c.get_target_session_attrs(), TargetSessionAttrs::ReadWrite);
    assert_eq!(
        parse("postgresql://h?ssl=true").get_ssl_mode(),
        SslMode::Require
    );
    assert!(parse_err("postgresql://h?ssl=false").contains("\"ssl\""));
    // A trailing `&` is fine; an empty value is given-but-empty.
    let c = parse("postgresql://h/db?application_name=&");
    assert_eq!(c.get_application_name(), None);
    assert!(c.is_given("application_name"));
}

#[test]
fn uri_query_errors() {
    assert_eq!(
        parse_err("postgresql://h/db?foo=1"),
        "invalid connection option \"foo\""
    );
    assert!(parse_err("postgresql://h/db?sslmode").contains("missing key/value separator"));
    assert!(parse_err("postgresql://h/db?sslmode=a=b").contains("extra key/value separator"));
    assert!(parse_err("postgresql://h/db?port=abc").contains("\"abc\""));
}

#[test]
fn uri_percent_decoding_errors() {
    let e = parse_err("postgresql://h/db%zz");
    assert!(
        e.contains("invalid percent-encoded token") && e.contains("database name"),
        "{e}"
    );
    assert!(parse_err("postgresql://h/db%4").contains("invalid percent-encoded token"));
    assert!(parse_err("postgresql://h/d%00b").contains("%00"));
    assert!(parse_err("postgresql://h/db?user=%G0").contains("invalid percent-encoded token"));
    // Only the password may be bytes that are not UTF-8.
    let e = parse_err("postgresql://h/db?user=%FF");
    assert!(e.contains("\"user\"") && e.contains("UTF-8"), "{e}");
}

// ---- key=value ----

#[test]
fn keyword_value_basic() {
    let c = parse(
        "host=localhost port=5432 dbname=mydb user=bob password=secret application_name=tool",
    );
    assert_eq!(c.get_hosts(), [tcp("localhost")]);
    assert_eq!(c.get_ports(), [5432]);
    assert_eq!(c.get_dbname(), Some("mydb"));
    assert_eq!(c.get_user(), Some("bob"));
    assert_eq!(c.get_password(), Some(&b"secret"[..]));
    assert_eq!(c.get_application_name(), Some("tool"));
}

#[test]
fn keyword_value_whitespace_around_equals() {
    let c = parse("  host = db1\t port=  5433\n\tdbname =app  ");
    assert_eq!(c.get_hosts(), [tcp("db1")]);
    assert_eq!(c.get_ports(), [5433]);
    assert_eq!(c.get_dbname(), Some("app"));
}

#[test]
fn keyword_value_quoting_and_escapes() {
    let c =
        parse(r"password='a b\'c\\d' options='-c search_path=app,public' dbname=my\ db user=''");
    assert_eq!(c.get_password(), Some(&br"a b'c\d"[..]));
    assert_eq!(c.get_options(), Some("-c search_path=app,public"));
    assert_eq!(c.get_dbname(), Some("my db"));
    assert_eq!(c.get_user(), None);
    assert!(c.is_given("user"));
    // A quoted value needs no space before the next keyword, as in libpq.
    let c = parse("dbname='x'user=y");
    assert_eq!(c.get_dbname(), Some("x"));
    assert_eq!(c.get_user(), Some("y"));
    // Unicode passes through.
    assert_eq!(parse("dbname='données é'").get_dbname(), Some("données é"));
}

#[test]
fn keyword_value_libpq_quirks() {
    // After `=`, blanks are skipped, so the next word becomes the value.
    let c = parse("host= port=5");
    assert_eq!(c.get_hosts(), [tcp("port=5")]);
    // The last value wins.
    let c = parse("host=a host=b");
    assert_eq!(c.get_hosts(), [tcp("b")]);
    // An empty string is an empty configuration.
    assert!(parse("").get_hosts().is_empty());
    assert!(parse("   ").get_user().is_none());
}

#[test]
fn keyword_value_errors() {
    assert_eq!(
        parse_err("password='abc"),
        "unterminated quoted string in the connection string"
    );
    assert_eq!(
        parse_err("host"),
        "missing \"=\" after \"host\" in the connection string"
    );
    assert_eq!(
        parse_err("dbname=x foo=bar"),
        "invalid connection option \"foo\""
    );
    assert_eq!(parse_err("=x"), "invalid connection option \"\"");
    assert!(parse_err("host=x\0").contains("NUL"));
}

#[test]
fn unknown_key_is_named() {
    let e = parse_err("host=localhost frobnicate=1");
    assert!(
        e.contains("invalid connection option \"frobnicate\""),
        "{e}"
    );
    // Keywords are case-sensitive, as in libpq.
    assert!(parse_err("HOST=x").contains("\"HOST\""));
}

// ---- values ----

#[test]
fn bad_values_name_the_key_and_the_value() {
    for (conninfo, key, value) in [
        ("port=abc", "port", "abc"),
        ("port=0", "port", "0"),
        ("port=70000", "port", "70000"),
        ("port=5432,x", "port", "5432,x"),
        ("hostaddr=not-an-ip", "hostaddr", "not-an-ip"),
        ("sslmode=bogus", "sslmode", "bogus"),
        ("sslmode=", "sslmode", ""),
        ("sslmode=Require", "sslmode", "Require"),
        ("connect_timeout=-1", "connect_timeout", "-1"),
        ("connect_timeout=soon", "connect_timeout", "soon"),
        (
            "connect_timeout=99999999999",
            "connect_timeout",
            "99999999999",
        ),
        (
            "target_session_attrs=primary-ish",
            "target_session_attrs",
            "primary-ish",
        ),
        (
            "load_balance_hosts=roundrobin",
            "load_balance_hosts",
            "roundrobin",
        ),
        ("channel_binding=always", "channel_binding", "always"),
        ("require_auth=kerberos", "require_auth", "kerberos"),
        ("keepalives=yes", "keepalives", "yes"),
        ("keepalives_idle=-5", "keepalives_idle", "-5"),
        ("tcp_user_timeout=x", "tcp_user_timeout", "x"),
        ("sslnegotiation=fast", "sslnegotiation", "fast"),
        ("sslcertmode=maybe", "sslcertmode", "maybe"),
        ("gssencmode=sometimes", "gssencmode", "sometimes"),
        (
            "ssl_min_protocol_version=TLSv1.4",
            "ssl_min_protocol_version",
            "TLSv1.4",
        ),
        ("max_protocol_version=3.1", "max_protocol_version", "3.1"),
    ] {
        let e = parse_err(conninfo);
        assert!(e.contains(&format!("{key:?}")), "{conninfo}: {e}");
        assert!(e.contains(&format!("{value:?}")), "{conninfo}: {e}");
    }
}

/// A valid libpq setting this client cannot honor: an [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported)
/// error naming the keyword.
fn unsupported_err(s: &str) -> String {
    match Config::parse(s) {
        Ok(config) => panic!("{s:?} should be refused, got {config:?}"),
        Err(e) => {
            assert_eq!(e.kind(), crate::ErrorKind::Unsupported, "{s}: {e}");
            let key = s.split('=').next().unwrap_or_default();
            assert!(e.to_string().contains(&format!("{key:?}")), "{s}: {e}");
            e.to_string()
        }
    }
}

#[test]
fn unsupported_settings() {
    assert!(unsupported_err("client_encoding=LATIN1").contains("only UTF8 is supported"));
    for ok in ["UTF8", "utf8", "UTF-8", "unicode", "auto", ""] {
        let c = parse(&format!("client_encoding='{ok}'"));
        assert_eq!(
            c.get_raw("client_encoding"),
            Some(ok).filter(|v| !v.is_empty())
        );
    }
    assert!(unsupported_err("service=mydb").contains("not supported"));
    assert!(unsupported_err("gssencmode=require").contains("not supported"));
    assert_eq!(
        parse("replication=false").get_raw("replication"),
        Some("false")
    );
    for (value, mode) in [
        ("database", Replication::Logical),
        ("true", Replication::Physical),
        ("ON", Replication::Physical),
        ("1", Replication::Physical),
        ("no", Replication::Off),
        ("", Replication::Off),
    ] {
        assert_eq!(
            parse(&format!("replication='{value}'")).get_replication(),
            mode,
            "{value}"
        );
    }
    assert!(parse_err("replication=physical").contains("expected one of"));
    assert_eq!(
        parse("gssencmode=disable").get_raw("gssencmode"),
        Some("disable")
    );
}

#[test]
fn every_libpq_keyword_is_accepted() {
    let c = parse(
        "passfile=/p sslcompression=0 sslcert=/c sslkey=/k sslpassword=kp sslrootcert=/r sslcrl=/l \
         sslcrldir=/d sslsni=1 requirepeer=postgres krbsrvname=postgres gsslib=gssapi gssdelegation=0 \
         keepalives=1 keepalives_idle=30 keepalives_interval=10 keepalives_count=3 tcp_user_timeout=0 \
         sslnegotiation=postgres sslcertmode=allow ssl_min_protocol_version=TLSv1.2 \
         ssl_max_protocol_version=tlsv1.3 min_protocol_version=3.0 max_protocol_version=latest \
         fallback_application_name=fb",
    );
    assert_eq!(c.get_ssl_cert(), Some("/c"));
    assert_eq!(c.get_ssl_key(), Some("/k"));
    assert_eq!(c.get_ssl_root_cert(), Some("/r"));
    assert_eq!(c.get_raw("keepalives_idle"), Some("30"));
    assert_eq!(c.get_raw("sslcrl"), Some("/l"));
    assert_eq!(c.get_raw("requirepeer"), Some("postgres"));
    assert_eq!(c.get_application_name(), Some("fb"));
    assert!(c.get_ssl_sni());
}

#[test]
fn connect_timeout_rules() {
    assert_eq!(parse("connect_timeout=0").get_connect_timeout(), None);
    assert_eq!(
        parse("connect_timeout=1").get_connect_timeout(),
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        parse("connect_timeout=' 15 '").get_connect_timeout(),
        Some(Duration::from_secs(15))
    );
    assert_eq!(Config::new().get_connect_timeout(), None);
    let mut c = Config::new();
    c.connect_timeout(Duration::from_millis(300));
    assert_eq!(c.get_connect_timeout(), Some(Duration::from_secs(2)));
}

#[test]
fn tls_cross_checks() {
    assert_eq!(
        parse("sslrootcert=system").get_ssl_mode(),
        SslMode::VerifyFull
    );
    assert!(parse_err("sslrootcert=system sslmode=require").contains("weak sslmode \"require\""));
    assert!(parse_err("sslnegotiation=direct").contains("weak sslmode \"prefer\""));
    assert_eq!(
        parse("sslnegotiation=direct sslmode=verify-ca").get_ssl_mode(),
        SslMode::VerifyCa
    );
    assert!(
        parse_err("ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2")
            .contains("range")
    );
    assert!(parse_err("min_protocol_version=latest max_protocol_version=3.0").contains("range"));
    parse("min_protocol_version=3.2 max_protocol_version=latest");
}

#[test]
fn ssl_sni_follows_libpq() {
    assert!(Config::new().get_ssl_sni());
    assert!(parse("sslsni=1").get_ssl_sni());
    assert!(!parse("sslsni=0").get_ssl_sni());
    assert!(!parse("sslsni=''").get_ssl_sni());
}

#[test]
fn defaults_are_not_stored() {
    let c = Config::new();
    assert!(c.get_hosts().is_empty());
    assert!(c.get_ports().is_empty());
    assert_eq!(c.get_ssl_mode(), SslMode::Prefer);
    assert_eq!(c.get_target_session_attrs(), TargetSessionAttrs::Any);
    assert_eq!(c.get_load_balance_hosts(), LoadBalanceHosts::Disable);
    assert_eq!(c.get_channel_binding(), ChannelBinding::Prefer);
    assert!(!c.get_require_auth().is_set());
    assert_eq!(c.get_max_message_size(), 256 * 1024 * 1024);
    assert_eq!(
        c.targets().unwrap(),
        [target(Host::platform_default(), None, 5432)]
    );
    if cfg!(unix) {
        assert_eq!(Host::platform_default(), unix("/var/run/postgresql"));
    } else {
        assert_eq!(Host::platform_default(), tcp("localhost"));
    }
}

#[test]
fn builder_setters_and_getters() {
    let mut c = Config::new();
    c.host("db1")
        .host("/run/pg")
        .hostaddr(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
        .hostaddr(IpAddr::V6(Ipv6Addr::LOCALHOST))
        .port(6000)
        .user("u")
        .password(b"pw")
        .dbname("d")
        .options("-c x=1")
        .fallback_application_name("fb")
        .ssl_mode(SslMode::Disable)
        .target_session_attrs(TargetSessionAttrs::PreferStandby)
        .load_balance_hosts(LoadBalanceHosts::Random)
        .require_auth(RequireAuth::parse("scram-sha-256").unwrap())
        .channel_binding(ChannelBinding::Require)
        .param("search_path", "a")
        .param("timezone", "UTC")
        .param("search_path", "b")
        .max_message_size(1024);
    assert_eq!(c.get_application_name(), Some("fb"));
    c.application_name("app");
    assert_eq!(c.get_application_name(), Some("app"));
    assert_eq!(c.get_fallback_application_name(), Some("fb"));
    assert_eq!(c.get_password(), Some(&b"pw"[..]));
    assert_eq!(c.get_ssl_mode(), SslMode::Disable);
    assert_eq!(
        c.get_target_session_attrs(),
        TargetSessionAttrs::PreferStandby
    );
    assert_eq!(c.get_load_balance_hosts(), LoadBalanceHosts::Random);
    assert_eq!(c.get_channel_binding(), ChannelBinding::Require);
    assert!(!c.get_require_auth().allows(AuthMethod::Md5));
    assert_eq!(
        c.get_params(),
        [
            ("search_path".to_string(), "b".to_string()),
            ("timezone".to_string(), "UTC".to_string())
        ]
    );
    assert_eq!(c.get_max_message_size(), 1024);
    assert_eq!(
        c.targets().unwrap(),
        [
            target(
                tcp("db1"),
                Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
                6000
            ),
            target(unix("/run/pg"), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)), 6000),
        ]
    );
    let copy = c.clone();
    assert_eq!(copy.get_user(), Some("u"));
}

// ---- hosts, hostaddrs, ports ----

#[test]
fn host_and_port_lists() {
    let c = parse("host=a,b,c port=5432,5433,5434");
    assert_eq!(
        c.targets().unwrap(),
        [
            target(tcp("a"), None, 5432),
            target(tcp("b"), None, 5433),
            target(tcp("c"), None, 5434)
        ]
    );
    // One port applies to every host.
    let c = parse("host=a,b port=6543");
    assert_eq!(
        c.targets().unwrap(),
        [target(tcp("a"), None, 6543), target(tcp("b"), None, 6543)]
    );
    // Empty entries: the default host and the default port.
    let c = parse("host=a,,/tmp port=1,,3");
    assert_eq!(
        c.targets().unwrap(),
        [
            target(tcp("a"), None, 1),
            target(Host::platform_default(), None, 5432),
            target(unix("/tmp"), None, 3)
        ]
    );
}

#[test]
fn host_port_count_mismatch() {
    assert_eq!(
        parse_err("host=a,b port=1,2,3"),
        "could not match 3 port numbers to 2 hosts"
    );
    assert_eq!(
        parse_err("port=1,2"),
        "could not match 2 port numbers to 1 hosts"
    );
    assert_eq!(
        parse_err("host=a,b hostaddr=10.0.0.1"),
        "could not match 2 host names to 1 hostaddr values"
    );
    assert_eq!(
        parse_err("hostaddr=10.0.0.1,10.0.0.2 port=1,2,3"),
        "could not match 3 port numbers to 2 hosts"
    );
    let mut c = Config::new();
    c.host("a").port(1).port(2).port(3);
    assert!(c.targets().is_err());
    let mut c = Config::new();
    c.port(0);
    assert!(
        c.targets()
            .unwrap_err()
            .to_string()
            .contains("port number 0")
    );
}

#[test]
fn hostaddr_lists() {
    let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let b = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let c = parse("hostaddr=10.0.0.1,::1 port=5433");
    assert!(c.get_hosts().is_empty());
    assert_eq!(c.get_hostaddrs(), [Some(a), Some(b)]);
    assert_eq!(
        c.targets().unwrap(),
        [
            target(tcp("10.0.0.1"), Some(a), 5433),
            target(tcp("::1"), Some(b), 5433)
        ]
    );
    let c = parse("host=db1,db2 hostaddr=10.0.0.1,");
    assert_eq!(c.get_hostaddrs(), [Some(a), None]);
    assert_eq!(
        c.targets().unwrap(),
        [
            target(tcp("db1"), Some(a), 5432),
            target(tcp("db2"), None, 5432)
        ]
    );
    // An empty host with an empty hostaddr is the default host.
    let c = parse("hostaddr=,10.0.0.1");
    assert_eq!(
        c.targets().unwrap()[0],
        target(Host::platform_default(), None, 5432)
    );
}

// ---- secrecy ----

#[test]
fn password_never_in_debug() {
    let mut c = parse("host=h user=u password=hunter2 sslpassword=keypass99");
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("keypass99"), "{shown}");
    assert!(shown.contains("password: Some(\"<redacted>\")"), "{shown}");
    assert!(shown.contains("user: Some(\"u\")"), "{shown}");
    c.password("another-secret");
    let shown = format!("{c:#?}");
    assert!(!shown.contains("another-secret"), "{shown}");
    let shown = format!("{:?}", Config::new());
    assert!(shown.contains("password: None"), "{shown}");
    let shown = format!("{:?}", parse("postgresql://u:uri-secret@h"));
    assert!(!shown.contains("uri-secret"), "{shown}");
}

#[test]
fn password_never_in_error_messages() {
    for (conninfo, secret) in [
        // An unquoted password with a space: the rest looks like a keyword.
        ("password=my hunter2", "hunter2"),
        ("password=my hunter2=x", "hunter2"),
        ("password=my Hunter2Extra port=5", "Hunter2Extra"),
        ("password='unterminated-hunter2", "hunter2"),
        ("sslpassword=s3cr hunter2", "hunter2"),
        ("password=a\0hunter2", "hunter2"),
        // A URI typed without the scheme's second slash is read as key=value.
        ("postgresql:/u:hunter2@h/db", "hunter2"),
        ("  postgresql://u:hunter2@h:bad/db", "hunter2"),
        // Bad escapes in a URI password.
        ("postgresql://u:hun%zzter2@h/db", "hun%zzter2"),
        ("postgresql://u:hunter2%00@h/db", "hunter2"),
        // An unencoded `/` in a URI password moves part of it into the port.
        ("postgresql://u:Xy7hunter2/zz@h/db", "Xy7hunter2"),
        // An unencoded `&` in a query password moves part of it into the next parameter.
        ("postgresql://h/db?password=ab&hunter2", "hunter2"),
        ("postgresql://h/db?password=ab&hunter2=1", "hunter2"),
        ("postgresql://h/db?password=%zzhunter2", "hunter2"),
    ] {
        let e = parse_err(conninfo);
        assert!(!e.contains(secret), "{conninfo:?} leaked into: {e}");
        let debug = format!("{:?}", Config::parse(conninfo).unwrap_err());
        assert!(!debug.contains(secret), "{conninfo:?} leaked into: {debug}");
    }
}

// ---- environment ----

#[test]
fn env_fills_unset_settings() {
    let c = with_env(
        "user=alice",
        &[
            ("PGUSER", "bob"),
            ("PGDATABASE", "envdb"),
            ("PGHOST", "h1,h2"),
            ("PGPORT", "5433"),
            ("PGPASSWORD", "envpw"),
            ("PGAPPNAME", "envapp"),
            ("PGCONNECT_TIMEOUT", "1"),
            ("PGSSLMODE", "verify-full"),
            ("PGTARGETSESSIONATTRS", "standby"),
            ("PGLOADBALANCEHOSTS", "random"),
            ("PGCHANNELBINDING", "disable"),
            ("PGREQUIREAUTH", "!password"),
            ("PGOPTIONS", "-c geqo=off"),
            ("PGSSLROOTCERT", "/root.crt"),
            ("PGSSLCERT", "/client.crt"),
            ("PGSSLKEY", "/client.key"),
            ("PGSSLSNI", "0"),
            ("PGCLIENTENCODING", "UTF8"),
        ],
    )
    .unwrap();
    assert_eq!(c.get_user(), Some("alice"), "explicit beats env");
    assert_eq!(c.get_dbname(), Some("envdb"), "env beats default");
    assert_eq!(c.get_hosts(), [tcp("h1"), tcp("h2")]);
    assert_eq!(
        c.targets().unwrap(),
        [target(tcp("h1"), None, 5433), target(tcp("h2"), None, 5433)]
    );
    assert_eq!(c.get_password(), Some(&b"envpw"[..]));
    assert_eq!(c.get_application_name(), Some("envapp"));
    assert_eq!(c.get_connect_timeout(), Some(Duration::from_secs(2)));
    assert_eq!(c.get_ssl_mode(), SslMode::VerifyFull);
    assert_eq!(c.get_target_session_attrs(), TargetSessionAttrs::Standby);
    assert_eq!(c.get_load_balance_hosts(), LoadBalanceHosts::Random);
    assert_eq!(c.get_channel_binding(), ChannelBinding::Disable);
    assert!(c.get_require_auth().is_negated());
    assert_eq!(c.get_options(), Some("-c geqo=off"));
    assert_eq!(c.get_ssl_root_cert(), Some("/root.crt"));
    assert_eq!(c.get_ssl_cert(), Some("/client.crt"));
    assert_eq!(c.get_ssl_key(), Some("/client.key"));
    assert!(!c.get_ssl_sni());
    assert_eq!(c.get_raw("client_encoding"), Some("UTF8"));
}

#[test]
fn env_precedence_explicit_env_default() {
    let env = [("PGPORT", "6000"), ("PGSSLMODE", "disable")];
    // Explicit beats env.
    let c = with_env("port=7000 sslmode=require", &env).unwrap();
    assert_eq!(c.get_ports(), [7000]);
    assert_eq!(c.get_ssl_mode(), SslMode::Require);
    // Env beats default.
    let c = with_env("", &env).unwrap();
    assert_eq!(c.get_ports(), [6000]);
    assert_eq!(c.get_ssl_mode(), SslMode::Disable);
    // Default when neither is given.
    let c = with_env("", &[]).unwrap();
    assert_eq!(c.targets().unwrap()[0].port, 5432);
    assert_eq!(c.get_ssl_mode(), SslMode::Prefer);
}

#[test]
fn explicit_empty_value_hides_env_like_libpq() {
    let env = [
        ("PGDATABASE", "envdb"),
        ("PGHOST", "envhost"),
        ("PGPASSWORD", "envpw"),
    ];
    let c = with_env("dbname='' host='' password=''", &env).unwrap();
    assert_eq!(c.get_dbname(), None);
    assert!(c.get_hosts().is_empty());
    assert_eq!(c.get_password(), None);
    // An empty URI component is not given at all, so the environment applies.
    let c = with_env("postgresql:///", &env).unwrap();
    assert_eq!(c.get_dbname(), Some("envdb"));
    assert_eq!(c.get_hosts(), [tcp("envhost")]);
}

#[test]
fn env_applies_to_builder_configs() {
    let mut c = Config::new();
    c.host("explicit").user("me");
    c.apply_env_with(env_of(&[
        ("PGHOST", "envhost"),
        ("PGUSER", "envuser"),
        ("PGDATABASE", "d"),
    ]))
    .unwrap();
    assert_eq!(c.get_hosts(), [tcp("explicit")]);
    assert_eq!(c.get_user(), Some("me"));
    assert_eq!(c.get_dbname(), Some("d"));
}

#[test]
fn env_is_checked_together_with_conninfo() {
    // Two ports need two hosts; the hosts may come from the environment.
    let c = with_env("port=1,2", &[("PGHOST", "a,b")]).unwrap();
    assert_eq!(
        c.targets().unwrap(),
        [target(tcp("a"), None, 1), target(tcp("b"), None, 2)]
    );
    let e = with_env("port=1,2", &[]).unwrap_err();
    assert_eq!(e.to_string(), "could not match 2 port numbers to 1 hosts");
    // hostaddr from the environment, host from the conninfo.
    let c = with_env("host=db", &[("PGHOSTADDR", "10.1.1.1")]).unwrap();
    assert_eq!(
        c.targets().unwrap()[0].hostaddr,
        Some(IpAddr::V4(Ipv4Addr::new(10, 1, 1, 1)))
    );
}

#[test]
fn invalid_env_values_name_the_variable() {
    for (var, value) in [
        ("PGSSLMODE", "bogus"),
        ("PGPORT", "x"),
        ("PGCONNECT_TIMEOUT", "-3"),
        ("PGHOSTADDR", "nope"),
        ("PGREQUIREAUTH", "md5,!md5"),
        ("PGCLIENTENCODING", "SQL_ASCII"),
        ("PGTARGETSESSIONATTRS", "writer"),
        ("PGGSSENCMODE", "require"),
    ] {
        let e = with_env("", &[(var, value)]).unwrap_err().to_string();
        assert!(e.contains(var), "{var}: {e}");
        assert!(e.contains(&format!("{value:?}")), "{var}: {e}");
    }
}

#[test]
fn env_startup_parameters_and_service() {
    let c = with_env(
        "",
        &[
            ("PGTZ", "UTC"),
            ("PGDATESTYLE", "default"),
            ("PGGEQO", "off"),
            ("PGSERVICE", "ignored"),
        ],
    )
    .unwrap();
    assert_eq!(
        c.get_params(),
        [
            ("timezone".to_string(), "UTC".to_string()),
            ("geqo".to_string(), "off".to_string())
        ]
    );
    let mut c = Config::new();
    c.param("timezone", "Europe/Paris");
    c.apply_env_with(env_of(&[("PGTZ", "UTC")])).unwrap();
    assert_eq!(
        c.get_params(),
        [("timezone".to_string(), "Europe/Paris".to_string())]
    );
}

#[test]
fn passfile_path_from_keyword_or_env() {
    assert_eq!(
        parse("passfile=/etc/pgpass").passfile_path(),
        Some(PathBuf::from("/etc/pgpass"))
    );
    let c = with_env("", &[("PGPASSFILE", "/env/pgpass")]).unwrap();
    assert_eq!(c.passfile_path(), Some(PathBuf::from("/env/pgpass")));
    let c = with_env("passfile=/mine", &[("PGPASSFILE", "/env/pgpass")]).unwrap();
    assert_eq!(c.passfile_path(), Some(PathBuf::from("/mine")));
}

#[test]
fn effective_user_and_dbname() {
    let c = parse("user=alice");
    assert_eq!(c.effective_user().unwrap(), "alice");
    assert_eq!(c.effective_dbname().unwrap(), "alice");
    let c = parse("user=alice dbname=app");
    assert_eq!(c.effective_dbname().unwrap(), "app");
}

// ---- require_auth ----

#[test]
fn require_auth_positive_list() {
    let r = RequireAuth::parse("password,md5").unwrap();
    assert!(r.is_set());
    assert!(!r.is_negated());
    assert_eq!(r.methods(), [AuthMethod::Password, AuthMethod::Md5]);
    assert!(r.allows(AuthMethod::Password));
    assert!(r.allows(AuthMethod::Md5));
    assert!(!r.allows(AuthMethod::ScramSha256));
    assert!(!r.allows(AuthMethod::None));
    assert!(r.requires_authentication());

    let r = RequireAuth::parse("scram-sha-256,none").unwrap();
    assert!(r.allows(AuthMethod::None));
    assert!(!r.requires_authentication());

    let r = RequireAuth::parse("none").unwrap();
    assert!(r.allows(AuthMethod::None));
    assert!(!r.allows(AuthMethod::ScramSha256));
    assert!(!r.requires_authentication());
}

#[test]
fn require_auth_negative_list() {
    let r = RequireAuth::parse("!password,!md5").unwrap();
    assert!(r.is_negated());
    assert!(!r.allows(AuthMethod::Password));
    assert!(!r.allows(AuthMethod::Md5));
    assert!(r.allows(AuthMethod::ScramSha256));
    assert!(r.allows(AuthMethod::Gss));
    assert!(r.allows(AuthMethod::None));
    assert!(!r.requires_authentication());

    let r = RequireAuth::parse("!none").unwrap();
    assert!(!r.allows(AuthMethod::None));
    assert!(r.allows(AuthMethod::Md5));
    assert!(r.requires_authentication());
}

#[test]
fn require_auth_unset() {
    for r in [RequireAuth::default(), RequireAuth::parse("").unwrap()] {
        assert!(!r.is_set());
        assert!(!r.requires_authentication());
        for m in [
            AuthMethod::Password,
            AuthMethod::Md5,
            AuthMethod::Gss,
            AuthMethod::Sspi,
            AuthMethod::ScramSha256,
            AuthMethod::None,
        ] {
            assert!(r.allows(m));
        }
    }
}

#[test]
fn require_auth_errors() {
    let e = RequireAuth::parse("md5,!password").unwrap_err().to_string();
    assert!(e.contains("cannot be mixed with non-negative"), "{e}");
    let e = RequireAuth::parse("!md5,password").unwrap_err().to_string();
    assert!(e.contains("cannot be mixed with negative"), "{e}");
    for dup in [
        "md5,md5",
        "!md5,!md5",
        "none,scram-sha-256,none",
        "!none,!none",
    ] {
        let e = RequireAuth::parse(dup).unwrap_err().to_string();
        assert!(e.contains("more than once"), "{dup}: {e}");
    }
    let e = RequireAuth::parse("scram-sha-256,kerberos")
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"kerberos\""), "{e}");
    assert!(RequireAuth::parse("md5,").is_err());
    assert!(RequireAuth::parse("!").is_err());
    assert!(RequireAuth::parse("MD5").is_err());
}

#[test]
fn require_auth_from_conninfo() {
    let c = parse("require_auth=scram-sha-256");
    assert!(c.get_require_auth().requires_authentication());
    assert!(!c.get_require_auth().allows(AuthMethod::Password));
    let c = parse("postgresql://h/db?require_auth=%21password");
    assert!(!c.get_require_auth().allows(AuthMethod::Password));
    let c = with_env("require_auth=", &[("PGREQUIREAUTH", "md5")]).unwrap();
    assert!(
        !c.get_require_auth().is_set(),
        "an empty explicit value hides the variable"
    );
}

// ---- password file ----

const PGPASS: &str = "\
# comment line:*:*:*:nope
db.example.com:5432:app:alice:first
db.example.com:*:app:alice:second
*:*:*:bob:bob\\:pw\\\\x:ignored-field
localhost:5432:*:carol:local-carol
/tmp:5432:*:carol:tmp-carol
we\\:ird\\\\host:5432:*:dave:dave-pw
db2:5432:app:erin:erin-crlf\r
";

#[test]
fn pgpass_first_match_and_wildcards() {
    let find = |host, port, db, user| passfile_lookup(PGPASS, host, port, db, user);
    assert_eq!(
        find("db.example.com", 5432, "app", "alice").as_deref(),
        Some("first")
    );
    assert_eq!(
        find("db.example.com", 6000, "app", "alice").as_deref(),
        Some("second")
    );
    assert_eq!(find("db.example.com", 5432, "other", "alice"), None);
    assert_eq!(
        find("anything", 1, "any", "bob").as_deref(),
        Some("bob:pw\\x")
    );
    assert_eq!(
        find("db2", 5432, "app", "erin").as_deref(),
        Some("erin-crlf")
    );
    assert_eq!(find("nowhere", 5432, "app", "zed"), None);
}

#[test]
fn pgpass_escaped_fields() {
    let find = |host| passfile_lookup(PGPASS, host, 5432, "db", "dave");
    assert_eq!(find("we:ird\\host").as_deref(), Some("dave-pw"));
    assert_eq!(find("we:ird"), None);
    assert_eq!(find("weird\\host"), None);
}

#[test]
fn pgpass_localhost_for_default_socket() {
    let find = |host| passfile_lookup(PGPASS, host, 5432, "db", "carol");
    assert_eq!(find("").as_deref(), Some("local-carol"));
    assert_eq!(find("localhost").as_deref(), Some("local-carol"));
    assert_eq!(find(DEFAULT_SOCKET_DIR).as_deref(), Some("local-carol"));
    // Other socket directories are matched by their path, as in libpq.
    assert_eq!(find("/tmp").as_deref(), Some("tmp-carol"));
}

#[test]
fn pgpass_edge_cases() {
    // Without a database or user name nothing matches.
    assert_eq!(passfile_lookup("*:*:*:*:pw", "h", 5432, "", "u"), None);
    assert_eq!(passfile_lookup("*:*:*:*:pw", "h", 5432, "d", ""), None);
    // The port is compared as text.
    assert_eq!(passfile_lookup("h:05432:*:*:pw", "h", 5432, "d", "u"), None);
    // Too few fields do not match; an empty password does.
    assert_eq!(passfile_lookup("h:5432:d:u", "h", 5432, "d", "u"), None);
    assert_eq!(
        passfile_lookup("h:5432:d:u:", "h", 5432, "d", "u").as_deref(),
        Some("")
    );
    // A trailing lone backslash stays; `*` only as a whole field is a wildcard.
    assert_eq!(
        passfile_lookup("*:*:*:*:pw\\", "h", 5432, "d", "u").as_deref(),
        Some("pw\\")
    );
    assert_eq!(passfile_lookup("h*:*:*:*:pw", "host", 5432, "d", "u"), None);
    // A prefix of a field does not match.
    assert_eq!(
        passfile_lookup("hostname:*:*:*:pw", "host", 5432, "d", "u"),
        None
    );
    assert_eq!(
        passfile_lookup("host:*:*:*:pw", "hostname", 5432, "d", "u"),
        None
    );
    assert_eq!(passfile_lookup("", "h", 5432, "d", "u"), None);
    assert_eq!(passfile_lookup("\n\n#x\n", "h", 5432, "d", "u"), None);
}

#[test]
fn protocol_versions_follow_libpq_18() {
    let c = Config::new();
    assert_eq!(c.get_min_protocol_version(), ProtocolVersion::V3_0);
    assert_eq!(c.get_max_protocol_version(), ProtocolVersion::V3_0);
    let c = parse("max_protocol_version=latest");
    assert_eq!(c.get_max_protocol_version(), ProtocolVersion::V3_2);
    assert_eq!(c.get_min_protocol_version(), ProtocolVersion::V3_0);
    let c = parse("min_protocol_version=3.0 max_protocol_version=3.2");
    assert_eq!(c.get_max_protocol_version(), ProtocolVersion::V3_2);
    // A minimum above 3.0 raises the default maximum to the latest version, as in libpq 18.
    let c = parse("min_protocol_version=latest");
    assert_eq!(c.get_min_protocol_version(), ProtocolVersion::V3_2);
    assert_eq!(c.get_max_protocol_version(), ProtocolVersion::V3_2);
    // An empty value reads as the default.
    let c = parse("max_protocol_version=''");
    assert_eq!(c.get_max_protocol_version(), ProtocolVersion::V3_0);
    assert_eq!(ProtocolVersion::V3_0.as_str(), "3.0");
    assert_eq!(ProtocolVersion::V3_2.as_str(), "3.2");
    assert!(ProtocolVersion::V3_0 < ProtocolVersion::V3_2);
}

#[test]
fn protocol_version_setters() {
    let mut c = parse("max_protocol_version=''");
    c.max_protocol_version(ProtocolVersion::V3_2);
    assert_eq!(c.get_max_protocol_version(), ProtocolVersion::V3_2);
    assert_eq!(c.get_raw("max_protocol_version"), Some("3.2"));
    assert!(c.is_given("max_protocol_version"));
    c.min_protocol_version(ProtocolVersion::V3_2);
    assert_eq!(c.get_min_protocol_version(), ProtocolVersion::V3_2);
    c.targets().unwrap();
    // The range is checked like one given in a connection string.
    c.max_protocol_version(ProtocolVersion::V3_0);
    assert!(c.targets().unwrap_err().to_string().contains("range"));
}

#[test]
fn scram_max_iterations_setting() {
    let mut c = Config::new();
    assert_eq!(c.get_scram_max_iterations(), 100_000);
    c.scram_max_iterations(4096);
    assert_eq!(c.get_scram_max_iterations(), 4096);
    assert!(format!("{c:?}").contains("scram_max_iterations: Some(4096)"));
}

#[test]
fn tcp_user_timeout_in_milliseconds() {
    assert_eq!(
        parse("tcp_user_timeout=1500").get_tcp_user_timeout(),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(parse("tcp_user_timeout=0").get_tcp_user_timeout(), None);
    assert_eq!(parse("").get_tcp_user_timeout(), None);
    let mut c = parse("");
    c.tcp_user_timeout(Duration::from_secs(u64::MAX));
    // Clamped to libpq's int.
    assert_eq!(c.get_raw("tcp_user_timeout"), Some("2147483647"));
    c.tcp_user_timeout(Duration::ZERO);
    assert_eq!(c.get_tcp_user_timeout(), None);
}

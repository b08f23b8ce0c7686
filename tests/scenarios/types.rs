//! The type features passed through from postgres-types (`with-cidr-0_2`, `with-eui48-1`, `with-geo-types-0_7`,
//! `with-bit-vec-0_6`, `with-jiff-0_2`, `with-smol_str-01`) and NUMERIC through rust_decimal's own `ToSql`/
//! `FromSql`. Each value goes to the server as a parameter, is checked there in its text form (so the encoding
//! is the server's, not only symmetric), and comes back decoded; a literal the server wrote is decoded too.

use std::str::FromStr;

use super::{Check, Env, Outcome, Scenario, connect};

pub fn scenarios() -> Vec<(&'static str, Scenario)> {
    scenarios![
        cidr_and_inet_round_trip,
        macaddr_round_trip,
        geometry_round_trip,
        bit_strings_round_trip,
        jiff_round_trip,
        smol_str_round_trip,
        numeric_rust_decimal_round_trip,
    ]
}

/// `SELECT $1::<ty>, $1::<ty>::text`: the value decoded back and the server's text form of it.
async fn echo<T>(c: &wasi_pg_client::Client, ty: &str, value: &T) -> Result<(T, String), String>
where
    T: wasi_pg_client::types::ToSql + for<'a> wasi_pg_client::types::FromSql<'a> + Sync,
{
    let row = c
        .query_one(&*format!("SELECT $1::{ty}, $1::{ty}::text"), &[value])
        .await
        .check(ty)?;
    let back: T = row.try_get(0).check(ty)?;
    Ok((back, row.get(1)))
}

async fn cidr_and_inet_round_trip(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    let net = cidr::IpCidr::from_str("10.1.0.0/16").check("parse cidr")?;
    let (back, text) = echo(&c, "cidr", &net).await?;
    ensure_eq!(back, net);
    ensure_eq!(text, "10.1.0.0/16");
    let host = cidr::IpInet::from_str("2001:db8::7/64").check("parse inet")?;
    let (back, text) = echo(&c, "inet", &host).await?;
    ensure_eq!(back, host);
    ensure_eq!(text, "2001:db8::7/64");
    let literal: cidr::IpInet = c
        .query_one("SELECT '192.168.0.9/24'::inet", &[])
        .await
        .check("inet literal")?
        .get(0);
    ensure_eq!(literal.to_string(), "192.168.0.9/24");
    c.close().await.check("close")
}

async fn macaddr_round_trip(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    let mac = eui48::MacAddress::new([0x08, 0x00, 0x2b, 0x01, 0x02, 0x03]);
    let (back, text) = echo(&c, "macaddr", &mac).await?;
    ensure_eq!(back, mac);
    ensure_eq!(text, "08:00:2b:01:02:03");
    let literal: eui48::MacAddress = c
        .query_one("SELECT 'ff-ee-dd-cc-bb-aa'::macaddr", &[])
        .await
        .check("macaddr literal")?
        .get(0);
    ensure_eq!(literal.to_canonical(), "ff-ee-dd-cc-bb-aa");
    c.close().await.check("close")
}

async fn geometry_round_trip(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    let point = geo_types::Point::new(1.5, -2.0);
    let (back, text) = echo(&c, "point", &point).await?;
    ensure_eq!(back, point);
    ensure_eq!(text, "(1.5,-2)");
    let rect = geo_types::Rect::new(
        geo_types::coord! { x: 0.0, y: 0.0 },
        geo_types::coord! { x: 3.0, y: 4.0 },
    );
    let (back, text) = echo(&c, "box", &rect).await?;
    ensure_eq!(back, rect);
    ensure_eq!(text, "(3,4),(0,0)");
    let path = geo_types::LineString::from(vec![(0.0, 0.0), (1.0, 1.0), (2.0, 0.0)]);
    let (back, text) = echo(&c, "path", &path).await?;
    ensure_eq!(back, path);
    ensure_eq!(text, "[(0,0),(1,1),(2,0)]");
    c.close().await.check("close")
}

async fn bit_strings_round_trip(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    let bits = bit_vec::BitVec::from_bytes(&[0b1010_0001]);
    let (back, text) = echo(&c, "bit(8)", &bits).await?;
    ensure_eq!(back, bits);
    ensure_eq!(text, "10100001");
    let mut varying = bit_vec::BitVec::from_elem(11, false);
    varying.set(0, true);
    varying.set(10, true);
    let (back, text) = echo(&c, "varbit", &varying).await?;
    ensure_eq!(back, varying);
    ensure_eq!(text, "10000000001");
    c.close().await.check("close")
}

async fn jiff_round_trip(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    let date = jiff::civil::date(2024, 2, 29);
    let (back, text) = echo(&c, "date", &date).await?;
    ensure_eq!(back, date);
    ensure_eq!(text, "2024-02-29");
    let datetime = jiff::civil::date(1999, 12, 31).at(23, 59, 58, 123_456_000);
    let (back, text) = echo(&c, "timestamp", &datetime).await?;
    ensure_eq!(back, datetime);
    ensure_eq!(text, "1999-12-31 23:59:58.123456");
    let time = jiff::civil::time(7, 8, 9, 500_000_000);
    let (back, text) = echo(&c, "time", &time).await?;
    ensure_eq!(back, time);
    ensure_eq!(text, "07:08:09.5");
    let instant = jiff::Timestamp::from_second(1_700_000_000).check("timestamp")?;
    let row = c
        .query_one(
            "SELECT $1::timestamptz, extract(epoch FROM $1::timestamptz)::int8",
            &[&instant],
        )
        .await
        .check("timestamptz")?;
    ensure_eq!(row.get::<_, jiff::Timestamp>(0), instant);
    ensure_eq!(row.get::<_, i64>(1), 1_700_000_000);
    c.close().await.check("close")
}

async fn smol_str_round_trip(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    let short = smol_str::SmolStr::new("ünï");
    let (back, text) = echo(&c, "text", &short).await?;
    ensure_eq!(back, short);
    ensure_eq!(text, "ünï");
    let long = smol_str::SmolStr::new("a string longer than the twenty-three inline bytes");
    let (back, _) = echo(&c, "varchar", &long).await?;
    ensure_eq!(back, long);
    c.close().await.check("close")
}

/// NUMERIC as `rust_decimal::Decimal`. Natively through rust_decimal's own `ToSql`/`FromSql` (its `db-postgres`
/// feature); rust_decimal compiles those out on wasm32 (`not(target_arch = "wasm32")` in its lib.rs), so there
/// the value travels as text (`$1::text::numeric`, `numeric::text`), the route the README gives for WASI.
async fn numeric_rust_decimal_round_trip(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    for text in [
        "0",
        "-12345.6789",
        "79228162514264337593543950335",
        "0.0000000001",
    ] {
        let value = rust_decimal::Decimal::from_str(text).check(text)?;
        let (back, server) = decimal_echo(&c, &value).await?;
        ensure_eq!(back, value);
        ensure_eq!(server, text);
    }
    let literal = decimal_of(&c, "SELECT 1.50::numeric(10,2) * 3").await?;
    ensure_eq!(literal.to_string(), "4.50");
    // NaN has no Decimal: an error, not a panic.
    let nan = decimal_of(&c, "SELECT 'NaN'::numeric").await;
    ensure!(nan.is_err(), "NaN decoded as {nan:?}");
    c.close().await.check("close")
}

#[cfg(not(target_arch = "wasm32"))]
async fn decimal_echo(
    c: &wasi_pg_client::Client,
    value: &rust_decimal::Decimal,
) -> Result<(rust_decimal::Decimal, String), String> {
    echo(c, "numeric", value).await
}

#[cfg(target_arch = "wasm32")]
async fn decimal_echo(
    c: &wasi_pg_client::Client,
    value: &rust_decimal::Decimal,
) -> Result<(rust_decimal::Decimal, String), String> {
    let row = c
        .query_one("SELECT $1::text::numeric::text", &[&value.to_string()])
        .await
        .check("numeric as text")?;
    let text: String = row.get(0);
    let back = rust_decimal::Decimal::from_str(&text).check("parse numeric")?;
    Ok((back, text))
}

/// The one NUMERIC `sql` returns, as a Decimal (on wasm32 through its text).
async fn decimal_of(
    c: &wasi_pg_client::Client,
    sql: &str,
) -> Result<rust_decimal::Decimal, String> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let row = c.query_one(sql, &[]).await.check(sql)?;
        row.try_get(0).check("decode numeric")
    }
    #[cfg(target_arch = "wasm32")]
    {
        let as_text = format!("SELECT ({sql})::text");
        let row = c.query_one(&*as_text, &[]).await.check(sql)?;
        rust_decimal::Decimal::from_str(&row.get::<_, String>(0)).check("parse numeric")
    }
}

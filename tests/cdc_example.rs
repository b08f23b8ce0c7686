//! `examples/cdc.rs` end to end, natively and as a wasm32-wasip2 component under the wasmtime CLI (WASI 0.2, and
//! built with `wasip3` on WASI 0.3): a slot is
//! made first, changes are committed, then the example follows the slot and must print exactly those changes
//! as JSON lines; run again on the slot, it must resume after what it acknowledged.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Cluster, Role, WASIP3_FEATURES, WasmBuild};

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn native_cdc() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(&cargo)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "--example",
                "cdc",
                "--message-format=json-render-diagnostics",
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cargo:?}: {e}"));
        assert!(
            out.status.success(),
            "cargo build --example cdc failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .filter(|line| {
                line.contains(r#""kind":["example"]"#) && line.contains(r#""name":"cdc""#)
            })
            .find_map(|line| {
                let key = r#""executable":""#;
                let start = line.find(key)? + key.len();
                let end = start + line[start..].find('"')?;
                Some(PathBuf::from(&line[start..end]))
            })
            .unwrap_or_else(|| {
                panic!("cargo reported no executable for the cdc example:\n{stdout}")
            })
    })
}

fn psql(cluster: &Cluster, sql: &str) -> String {
    let out = cluster.psql(
        &["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        None,
    );
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs the example on one target (natively with `wasm` `None`, else the wasm build with those features)
/// following `slot` for `limit` changes.
fn run_cdc(
    wasm: Option<&'static [&'static str]>,
    conninfo: &str,
    publication: &str,
    slot: &str,
    limit: usize,
) -> Output {
    let limit = limit.to_string();
    let env = [
        ("DATABASE_URL", conninfo),
        ("CDC_PUBLICATION", publication),
        ("CDC_SLOT", slot),
        ("CDC_LIMIT", limit.as_str()),
    ];
    if let Some(features) = wasm {
        return support::wasmtime(
            &support::build_wasm_with(WasmBuild::Example("cdc"), features),
            &[],
            &env,
            &[],
            None,
        );
    }
    let mut cmd = Command::new(native_cdc());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env);
    support::run_with_timeout(cmd, None, RUN_TIMEOUT)
}

#[test]
fn cdc_example_prints_each_change_as_json_on_every_target() {
    let cluster = Cluster::start();
    let conninfo = cluster.conninfo(Role::Trust);
    psql(
        &cluster,
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric); \
         CREATE PUBLICATION items_pub FOR TABLE items",
    );
    let targets: [(Option<&'static [&'static str]>, &str, &str); 3] = [
        (None, "native", "n"),
        (Some(&[]), "wasm32-wasip2", "w"),
        (Some(WASIP3_FEATURES), "wasm32-wasip2+p3", "p3"),
    ];
    for (wasm, target, short) in targets {
        let slot = format!("cdc_{short}");
        psql(
            &cluster,
            &format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"),
        );
        for sql in [
            "INSERT INTO items VALUES (1, 'apple', 0.50), (2, 'pear', NULL)",
            "UPDATE items SET price = 0.75 WHERE id = 1",
            "DELETE FROM items WHERE id = 2",
            "TRUNCATE items",
        ] {
            psql(&cluster, sql);
        }
        let out = run_cdc(wasm, &conninfo, "items_pub", &slot, 5);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{target}: cdc failed ({}):\n{}\n{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<Value> = stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{target}: {line:?}: {e}"))
            })
            .collect();
        let without_lsn: Vec<Value> = lines
            .iter()
            .map(|line| {
                let mut line = line.clone();
                let lsn = line.as_object_mut().and_then(|o| o.remove("lsn"));
                assert!(
                    lsn.as_ref()
                        .and_then(Value::as_str)
                        .is_some_and(|l| l.contains('/')),
                    "{target}: no LSN in {line}"
                );
                line
            })
            .collect();
        assert_eq!(
            without_lsn,
            vec![
                json!({"relation": "public.items", "op": "insert", "old": null,
                       "new": {"id": "1", "name": "apple", "price": "0.50"}}),
                json!({"relation": "public.items", "op": "insert", "old": null,
                       "new": {"id": "2", "name": "pear", "price": null}}),
                json!({"relation": "public.items", "op": "update", "old": null,
                       "new": {"id": "1", "name": "apple", "price": "0.75"}}),
                json!({"relation": "public.items", "op": "delete",
                       "old": {"id": "2", "name": null, "price": null}, "new": null}),
                json!({"op": "truncate", "relations": ["public.items"]}),
            ],
            "{target}"
        );
        // The example acknowledged each transaction whose commit it read: run again on the same slot, it
        // resumes after them and prints only the TRUNCATE, whose commit came after its fifth change.
        let again = run_cdc(wasm, &conninfo, "items_pub", &slot, 1);
        assert!(
            again.status.success(),
            "{target}: second run failed: {}",
            String::from_utf8_lossy(&again.stderr)
        );
        let again: Vec<Value> = String::from_utf8_lossy(&again.stdout)
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{target}: {line:?}: {e}"))
            })
            .collect();
        assert_eq!(again.len(), 1, "{target}: {again:?}");
        assert_eq!(again[0]["op"], "truncate", "{target}: {again:?}");
        psql(
            &cluster,
            &format!("SELECT pg_drop_replication_slot('{slot}')"),
        );
        psql(&cluster, "INSERT INTO items VALUES (1, 'apple', 0.50)");
        psql(&cluster, "TRUNCATE items");
    }
}

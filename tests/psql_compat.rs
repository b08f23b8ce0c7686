//! `examples/psql.rs` prints on stdout exactly what the real `psql -X -q -A -t` prints, natively
//! and as a wasm32-wasip2 component under the wasmtime CLI.
//!
//! Each test starts its own cluster, runs the real psql (as the trust role) and the example (as the
//! SCRAM role) on the same input, and compares stdout byte for byte. All objects the scripts
//! create are temporary, so the runs cannot see each other's.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use support::{Cluster, Role, WasmBuild};

/// Deadline for one native run of the example.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// psql's flags that the example's output must equal.
const PSQL_FLAGS: [&str; 4] = ["-X", "-q", "-A", "-t"];
/// Where the wasm guest sees `tests/psql`.
const GUEST_SQL_DIR: &str = "/sql";

/// The example under test, on one target.
#[derive(Clone, Copy, Debug)]
enum Target {
    Native,
    Wasm,
}

const TARGETS: [Target; 2] = [Target::Native, Target::Wasm];

fn sql_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("psql")
}

fn script_path() -> PathBuf {
    sql_dir().join("script.sql")
}

/// Builds `examples/psql.rs` natively (once per test process) and returns the executable.
///
/// The nested cargo shares the outer target dir: `cargo test` releases its lock on it before it
/// runs the test binaries.
fn native_psql() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(&cargo)
            .current_dir(root)
            .args([
                "build",
                "--example",
                "psql",
                "--message-format=json-render-diagnostics",
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cargo:?}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cargo build --example psql failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .filter(|line| line.contains(r#""reason":"compiler-artifact""#))
            .filter(|line| {
                line.contains(r#""kind":["example"]"#) && line.contains(r#""name":"psql""#)
            })
            .find_map(executable_path)
            .unwrap_or_else(|| {
                panic!("cargo reported no executable for the psql example:\n{stdout}")
            })
    })
}

/// The `"executable":"..."` of one line of cargo's JSON output (paths need no unescaping here
/// unless they hold `"` or `\`, which a cargo target dir does not).
fn executable_path(line: &str) -> Option<PathBuf> {
    let key = r#""executable":""#;
    let start = line.find(key)? + key.len();
    let end = start + line[start..].find('"')?;
    Some(PathBuf::from(&line[start..end]))
}

fn wasm_psql() -> PathBuf {
    support::build_wasm(WasmBuild::Example("psql"))
}

/// Runs the example on `target` with `args` (which name files by their host path under
/// `tests/psql`; the wasm guest gets them under [`GUEST_SQL_DIR`]) and `stdin`.
fn run_example(target: Target, args: &[&str], stdin: Option<&[u8]>) -> Output {
    match target {
        Target::Native => {
            let mut cmd = Command::new(native_psql());
            // Only the conninfo argument may configure the connection.
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("PG") {
                    cmd.env_remove(key);
                }
            }
            cmd.args(args);
            support::run_with_timeout(cmd, stdin, RUN_TIMEOUT)
        }
        Target::Wasm => {
            let host_dir = sql_dir();
            let host_prefix = host_dir.to_string_lossy().into_owned();
            let guest_args: Vec<String> = args
                .iter()
                .map(|arg| match arg.strip_prefix(host_prefix.as_str()) {
                    Some(rest) => format!("{GUEST_SQL_DIR}{rest}"),
                    None => (*arg).to_owned(),
                })
                .collect();
            let guest_args: Vec<&str> = guest_args.iter().map(String::as_str).collect();
            support::wasmtime(
                &wasm_psql(),
                &guest_args,
                &[],
                &[(&host_dir, GUEST_SQL_DIR)],
                stdin,
            )
        }
    }
}

/// The real psql with [`PSQL_FLAGS`] and `args`.
fn real_psql(cluster: &Cluster, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let all: Vec<&str> = PSQL_FLAGS.iter().chain(args).copied().collect();
    cluster.psql(&all, stdin)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Panics with a line diff unless `actual` printed the same stdout as `expected`.
fn assert_same_stdout(what: &str, expected: &Output, actual: &Output) {
    if expected.stdout == actual.stdout {
        return;
    }
    panic!(
        "{what}: stdout differs from psql's (- psql, + example)\n{}\n\
         --- psql: {}, stderr ---\n{}\n--- example: {}, stderr ---\n{}",
        line_diff(&text(&expected.stdout), &text(&actual.stdout)),
        expected.status,
        text(&expected.stderr),
        actual.status,
        text(&actual.stderr),
    );
}

fn assert_status(what: &str, output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}: expected exit status {code}, got {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr),
    );
}

fn assert_stderr_has_line_starting(what: &str, output: &Output, prefix: &str) {
    let stderr = text(&output.stderr);
    assert!(
        stderr.lines().any(|line| line.starts_with(prefix)),
        "{what}: no stderr line starts with {prefix:?}; stderr:\n{stderr}"
    );
}

/// A unified-style diff of two texts by lines, with three lines of context around each change.
/// Lines are shown escaped, so a stray `\r` or tab is visible.
fn line_diff(expected: &str, actual: &str) -> String {
    const CONTEXT: usize = 3;
    const MAX_LINES: usize = 200;
    let old: Vec<&str> = expected.split_inclusive('\n').collect();
    let new: Vec<&str> = actual.split_inclusive('\n').collect();

    // Longest common subsequence table, suffix form: lcs[i][j] for old[i..] and new[j..].
    let mut lcs = vec![vec![0u32; new.len() + 1]; old.len() + 1];
    for i in (0..old.len()).rev() {
        for j in (0..new.len()).rev() {
            lcs[i][j] = if old[i] == new[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        if i < old.len() && j < new.len() && old[i] == new[j] {
            ops.push((' ', old[i]));
            i += 1;
            j += 1;
        } else if i < old.len() && (j == new.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', old[i]));
            i += 1;
        } else {
            ops.push(('+', new[j]));
            j += 1;
        }
    }

    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let mut out = String::new();
    let mut shown = 0;
    let mut last_printed = None;
    for (k, &(mark, line)) in ops.iter().enumerate() {
        let near_change = changed
            .iter()
            .any(|&c| k + CONTEXT >= c && k <= c + CONTEXT);
        if !near_change {
            continue;
        }
        if last_printed.is_some_and(|last| last + 1 != k) || (last_printed.is_none() && k > 0) {
            out.push_str("@@\n");
        }
        out.push(mark);
        out.push_str(&line.escape_debug().to_string());
        out.push('\n');
        last_printed = Some(k);
        shown += 1;
        if shown == MAX_LINES {
            out.push_str("... (diff truncated)\n");
            break;
        }
    }
    out
}

/// Case 1: the script via `-f`; psql stops at the error because of ON_ERROR_STOP.
#[test]
fn script_file_matches_psql() {
    let cluster = Cluster::start();
    let script = script_path();
    let script = script.to_str().expect("the repository path is UTF-8");
    let expected = real_psql(&cluster, &["-v", "ON_ERROR_STOP=1", "-f", script], None);
    assert_status("real psql -f", &expected, 3);
    assert!(
        text(&expected.stdout).contains("hello; world")
            && !text(&expected.stdout).contains("must not run"),
        "real psql did not run the script as expected:\n{}",
        text(&expected.stdout)
    );

    let conninfo = cluster.conninfo(Role::Scram);
    for target in TARGETS {
        let what = format!("{target:?} psql -f script.sql");
        let actual = run_example(target, &[&conninfo, "-f", script], None);
        assert_same_stdout(&what, &expected, &actual);
        assert_status(&what, &actual, 1);
        assert_stderr_has_line_starting(&what, &actual, "ERROR:");
    }
}

/// Case 2: the same script on stdin.
#[test]
fn script_on_stdin_matches_psql() {
    let cluster = Cluster::start();
    let script = std::fs::read(script_path()).expect("tests/psql/script.sql is readable");
    let expected = real_psql(&cluster, &["-v", "ON_ERROR_STOP=1"], Some(&script));
    assert_status("real psql < script.sql", &expected, 3);

    let conninfo = cluster.conninfo(Role::Scram);
    for target in TARGETS {
        let what = format!("{target:?} psql < script.sql");
        let actual = run_example(target, &[&conninfo], Some(&script));
        assert_same_stdout(&what, &expected, &actual);
        assert_status(&what, &actual, 1);
        assert_stderr_has_line_starting(&what, &actual, "ERROR:");
    }
}

/// Case 3: several `-c`, each one Query however many statements it holds; psql 15 prints every
/// result set of a multi-statement string.
#[test]
fn commands_match_psql() {
    let cluster = Cluster::start();
    let commands = [
        "SELECT 1; SELECT 'a|b', NULL",
        "CREATE TEMP TABLE t (a int, b text); INSERT INTO t VALUES (2, 'two'), (1, NULL), (3, 'x;y')",
        "SELECT a, b FROM t ORDER BY a; SELECT count(*) FROM t; UPDATE t SET b = 'z'; SELECT b FROM t WHERE a = 1",
        "SELECT E'multi\\nline', 2 UNION ALL SELECT NULL, 3",
        "SET TimeZone = 'UTC'; SELECT '2024-02-29 12:34:56.789+01'::timestamptz, '1 day'::interval",
        "SELECT;",
        "",
        "SELECT 'last' -- with a trailing comment; and no semicolon",
    ];
    let mut args = Vec::new();
    for command in &commands {
        args.extend(["-c", command]);
    }
    let expected = real_psql(&cluster, &args, None);
    assert_status("real psql -c ...", &expected, 0);

    let conninfo = cluster.conninfo(Role::Scram);
    let mut ours = vec![conninfo.as_str()];
    ours.extend(&args);
    for target in TARGETS {
        let what = format!("{target:?} psql -c ...");
        let actual = run_example(target, &ours, None);
        assert_same_stdout(&what, &expected, &actual);
        assert_status(&what, &actual, 0);
    }
}

/// Case 3b: on an error, the result sets completed before it still reach stdout, but the rows
/// the failing statement itself sent do not (libpq replaces that result with the error), whether
/// the statements share one `-c` Query or come from a script.
#[test]
fn only_complete_result_sets_before_an_error_are_printed() {
    let cluster = Cluster::start();
    let failing = "SELECT 10 / (3 - g) FROM generate_series(1, 5) AS g";
    let command = format!("SELECT 1; SELECT 'kept' UNION ALL SELECT 'too'; {failing}; SELECT 2");
    check_partial_output(&cluster, "-c", &["-c", &command], None, 1);
    let script =
        format!("SELECT 1;\nSELECT 'kept' UNION ALL SELECT 'too';\n{failing};\nSELECT 2;\n");
    let args = ["-v", "ON_ERROR_STOP=1"];
    check_partial_output(&cluster, "stdin", &args, Some(script.as_bytes()), 3);
}

/// Runs psql (expecting `psql_status`) and the example on both targets with `args` and `stdin`;
/// both must print `1`, `kept`, `too` and then fail with a division by zero.
fn check_partial_output(
    cluster: &Cluster,
    case: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    psql_status: i32,
) {
    let expected = real_psql(cluster, args, stdin);
    assert_status(
        &format!("real psql {case} with an error"),
        &expected,
        psql_status,
    );
    assert_eq!(text(&expected.stdout), "1\nkept\ntoo\n", "real psql {case}");

    let conninfo = cluster.conninfo(Role::Scram);
    let mut ours = vec![conninfo.as_str()];
    ours.extend(args);
    for target in TARGETS {
        let what = format!("{target:?} psql {case} with an error");
        let actual = run_example(target, &ours, stdin);
        assert_same_stdout(&what, &expected, &actual);
        assert_status(&what, &actual, 1);
        assert_stderr_has_line_starting(&what, &actual, "ERROR:  division by zero");
    }
}

/// Case 3c: psql's splitting corner cases on stdin: `\;` joins two statements into one Query,
/// `$` inside an identifier starts no dollar quote, and a final statement without `;` is sent.
#[test]
fn splitting_corner_cases_match_psql() {
    let cluster = Cluster::start();
    let input = b"SELECT 1 \\; SELECT 'joined';\n;;\n/* only a comment; */\n\
                  SELECT 1 AS a$1$; SELECT 2 AS x$$; SELECT 'after';\n\
                  SELECT 'x' AS a, 'y' AS b -- no semicolon; at the end\n";
    let expected = real_psql(&cluster, &[], Some(input));
    assert_status("real psql < corner cases", &expected, 0);

    let conninfo = cluster.conninfo(Role::Scram);
    for target in TARGETS {
        let what = format!("{target:?} psql < corner cases");
        let actual = run_example(target, &[&conninfo], Some(input));
        assert_same_stdout(&what, &expected, &actual);
        assert_status(&what, &actual, 0);
    }
}

/// Case 5: COPY in a script, via `-f` and on stdin: FROM STDIN reads the data lines after the
/// statement up to `\.` in text and CSV (the rest of the statement's line runs after them), TO
/// STDOUT writes text, CSV and binary data as it comes, and a bad row stops the run.
#[test]
fn copy_in_scripts_matches_psql() {
    let cluster = Cluster::start();
    let script = sql_dir().join("copy.sql");
    let script = script.to_str().expect("the repository path is UTF-8");
    let input = std::fs::read(script).expect("tests/psql/copy.sql is readable");
    let expected = real_psql(&cluster, &["-v", "ON_ERROR_STOP=1", "-f", script], None);
    assert_status("real psql -f copy.sql", &expected, 3);
    let printed = text(&expected.stdout);
    assert!(
        printed.contains("say \"hi\"")
            && printed.contains("PGCOPY\n\u{fffd}\r\n")
            && printed.contains("\n200010000\n")
            && !printed.contains("must not run"),
        "real psql did not run copy.sql as expected:\n{printed}"
    );
    let from_stdin = real_psql(&cluster, &["-v", "ON_ERROR_STOP=1"], Some(&input));
    assert_status("real psql < copy.sql", &from_stdin, 3);
    assert_same_stdout("real psql < copy.sql", &expected, &from_stdin);

    let conninfo = cluster.conninfo(Role::Scram);
    for target in TARGETS {
        for (how, args, stdin) in [
            ("-f copy.sql", vec![conninfo.as_str(), "-f", script], None),
            (
                "< copy.sql",
                vec![conninfo.as_str()],
                Some(input.as_slice()),
            ),
        ] {
            let what = format!("{target:?} psql {how}");
            let actual = run_example(target, &args, stdin);
            assert_same_stdout(&what, &expected, &actual);
            assert_status(&what, &actual, 1);
            assert_stderr_has_line_starting(&what, &actual, "ERROR:  invalid input syntax");
        }
    }
}

/// Case 5b: `-c "COPY ... FROM STDIN"` reads its data from stdin up to `\.`, and a later `-f -`
/// reads the rest of stdin as a script.
#[test]
fn copy_in_commands_reads_stdin_like_psql() {
    let cluster = Cluster::start();
    let stdin = b"1\tone\n2\t\\N\n\\.\nSELECT count(*), count(b) FROM t;\n";
    let args = [
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "CREATE TEMP TABLE t (a int, b text)",
        "-c",
        "COPY t FROM STDIN",
        "-c",
        "COPY t TO STDOUT (FORMAT csv)",
        "-f",
        "-",
    ];
    let expected = real_psql(&cluster, &args, Some(stdin));
    assert_status("real psql -c COPY", &expected, 0);
    assert_eq!(
        text(&expected.stdout),
        "1,one\n2,\n2|1\n",
        "real psql -c COPY"
    );

    let conninfo = cluster.conninfo(Role::Scram);
    let mut ours = vec![conninfo.as_str()];
    ours.extend(args);
    for target in TARGETS {
        let what = format!("{target:?} psql -c COPY");
        let actual = run_example(target, &ours, Some(stdin));
        assert_same_stdout(&what, &expected, &actual);
        assert_status(&what, &actual, 0);
    }
}

/// Meta-commands are out of scope: the statements before one run, then it stops with an error.
#[test]
fn meta_commands_stop_the_run() {
    let cluster = Cluster::start();
    let input = b"SELECT 'before';\n\\set x 1\nSELECT 'after';\n";
    let conninfo = cluster.conninfo(Role::Scram);
    for target in TARGETS {
        let what = format!("{target:?} psql < meta-command");
        let actual = run_example(target, &[&conninfo], Some(input));
        assert_status(&what, &actual, 1);
        assert_eq!(text(&actual.stdout), "before\n", "{what}");
        assert_stderr_has_line_starting(&what, &actual, "ERROR: meta-commands are not supported");
    }
}

/// Case 4: a conninfo that cannot be parsed, or a port nobody listens on, exits with 2.
#[test]
fn connection_failures_exit_with_2() {
    let port = support::free_port().to_string();
    let unreachable =
        format!("host=127.0.0.1 port={port} user=nobody dbname=postgres connect_timeout=10");
    let cases = [
        ("unreachable port", unreachable.as_str()),
        ("malformed conninfo", "host='unterminated"),
        ("malformed URI", "postgresql://[::1"),
    ];
    for target in TARGETS {
        for (case, conninfo) in cases {
            let what = format!("{target:?} psql with {case}");
            let actual = run_example(target, &[conninfo, "-c", "SELECT 1"], None);
            assert_status(&what, &actual, 2);
            assert!(
                actual.stdout.is_empty(),
                "{what}: printed {:?}",
                text(&actual.stdout)
            );
            assert!(!actual.stderr.is_empty(), "{what}: no message on stderr");
        }
    }
}

/// The diff printed on a mismatch points at the changed lines, with context, escaped.
#[test]
fn line_diff_shows_changes_in_context() {
    let expected = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n";
    let actual = "1\n2\n3\n4\n5\nsix\t\r\n7\n8\n9\n10\n11\n";
    let diff = line_diff(expected, actual);
    assert_eq!(
        diff,
        "@@\n 3\\n\n 4\\n\n 5\\n\n-6\\n\n+six\\t\\r\\n\n 7\\n\n 8\\n\n 9\\n\n 10\\n\n+11\\n\n"
    );
    assert_eq!(line_diff("same\n", "same\n"), "");
}

/// The backend PID in psql's notification lines, which differs between runs, replaced by `N`.
fn with_pids_normalised(mut output: Output) -> Output {
    const MARK: &str = " received from server process with PID ";
    let stdout = text(&output.stdout);
    let mut normalised = String::with_capacity(stdout.len());
    let mut rest = stdout.as_str();
    while let Some(at) = rest.find(MARK) {
        let (before, after) = rest.split_at(at + MARK.len());
        normalised.push_str(before);
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        normalised.push_str(if digits > 0 { "N" } else { "" });
        rest = &after[digits..];
    }
    normalised.push_str(rest);
    output.stdout = normalised.into_bytes();
    output
}

/// Case 6: LISTEN and NOTIFY to the session itself print psql's "Asynchronous notification" lines on
/// stdout after the command that received them (with and without a payload, one committed in a
/// transaction block, none after UNLISTEN), in a script on stdin and in `-c` strings.
#[test]
fn notifications_match_psql() {
    let cluster = Cluster::start();
    let script = b"LISTEN ch;\nNOTIFY ch, 'p';\nSELECT 1;\nNOTIFY ch;\n\
                   LISTEN \"Mixed Ch\";\nSELECT 2, pg_notify('Mixed Ch', 'a\"b|c');\n\
                   BEGIN;\nNOTIFY ch, 'in tx';\nSELECT 3;\nCOMMIT;\n\
                   UNLISTEN *;\nNOTIFY ch, 'unheard';\nSELECT 'end';\n";
    let commands = [
        "-c",
        "LISTEN ch; NOTIFY ch, 'x'; SELECT 5; NOTIFY ch, 'y'",
        "-c",
        "NOTIFY ch, 'z'",
        "-c",
        "SELECT 6",
    ];
    check_notifications(&cluster, "< notify script", &[], Some(script));
    check_notifications(&cluster, "-c with notifications", &commands, None);
}

/// Runs psql and the example on both targets with `args` and `stdin`; both must succeed and print
/// the same, notification lines included (PIDs aside).
fn check_notifications(cluster: &Cluster, case: &str, args: &[&str], stdin: Option<&[u8]>) {
    let expected = with_pids_normalised(real_psql(cluster, args, stdin));
    assert_status(&format!("real psql {case}"), &expected, 0);
    let printed = text(&expected.stdout);
    assert!(
        printed.contains("Asynchronous notification \"ch\" with payload ")
            && !printed.contains("unheard"),
        "real psql {case} did not print the notifications as expected:\n{printed}"
    );
    let conninfo = cluster.conninfo(Role::Scram);
    let mut ours = vec![conninfo.as_str()];
    ours.extend(args);
    for target in TARGETS {
        let what = format!("{target:?} psql {case}");
        let actual = with_pids_normalised(run_example(target, &ours, stdin));
        assert_same_stdout(&what, &expected, &actual);
        assert_status(&what, &actual, 0);
    }
}

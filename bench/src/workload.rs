//! What is measured: the workloads, the contenders, the sizes, and the line a client prints.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// One workload of issue 7. Each variant is reported on its own `bench` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    /// Sequential `SELECT 1` through the simple protocol; ops are queries.
    W1,
    /// Sequential prepared `SELECT $1::int4 + 1`; ops are queries.
    W2,
    /// `SELECT g, g::text, now() FROM generate_series(1, n) g` streamed and decoded; ops are rows.
    W3,
    /// Single-row inserts pipelined in batches of [`W4_BATCH`]; ops are inserts.
    W4Pipeline,
    /// The same inserts, one round trip each; ops are inserts.
    W4Sequential,
    /// Binary COPY FROM STDIN; ops are rows.
    W5CopyIn,
    /// Binary COPY TO STDOUT, decoded; ops are rows.
    W5CopyOut,
    /// W3 over TLS; ops are rows.
    W6,
    /// Prepared `SELECT $1::int4` from many futures at once on one shared client, each sending its own
    /// values and checking every answer; ops are queries.
    W7,
    /// Logical replication: inserts committed in transactions of [`W8_TX_ROWS`] rows, streamed from a slot
    /// and decoded into typed values (ours: `pgoutput`; pg_recvlogical: `test_decoding` to /dev/null); ops
    /// are changes.
    W8,
    /// Connection set-up: connect with SCRAM-SHA-256 over plain TCP, `SELECT 1`, close; ops are connections.
    W9Scram,
    /// The same over TLS (`sslmode=verify-full` against the script's CA, TLS negotiated with SSLRequest).
    W9Tls,
}

impl Workload {
    /// Every workload, in the order they run and are reported.
    pub const ALL: [Workload; 12] = [
        Workload::W1,
        Workload::W2,
        Workload::W3,
        Workload::W4Pipeline,
        Workload::W4Sequential,
        Workload::W5CopyIn,
        Workload::W5CopyOut,
        Workload::W6,
        Workload::W7,
        Workload::W8,
        Workload::W9Scram,
        Workload::W9Tls,
    ];

    /// The name on the output lines.
    pub fn name(self) -> &'static str {
        match self {
            Workload::W1 => "W1",
            Workload::W2 => "W2",
            Workload::W3 => "W3",
            Workload::W4Pipeline => "W4-pipeline",
            Workload::W4Sequential => "W4-sequential",
            Workload::W5CopyIn => "W5-copy-in",
            Workload::W5CopyOut => "W5-copy-out",
            Workload::W6 => "W6",
            Workload::W7 => "W7",
            Workload::W8 => "W8",
            Workload::W9Scram => "W9-scram",
            Workload::W9Tls => "W9-tls",
        }
    }

    /// Whether the workload connects over TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, Workload::W6 | Workload::W9Tls)
    }

    /// Whether the workload measures connecting (W9): each operation is a connection of its own.
    pub fn connects(self) -> bool {
        matches!(self, Workload::W9Scram | Workload::W9Tls)
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Workload, String> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown workload {s:?}"))
    }
}

/// Who runs a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Contender {
    /// This crate, native, on tokio.
    Ours,
    /// This crate compiled for wasm32-wasip2, under wasmtime (WASI 0.2).
    OursWasi,
    /// This crate compiled for wasm32-wasip2 with its `wasip3` feature, under wasmtime (WASI 0.3).
    OursWasip3,
    /// tokio-postgres 0.7, native.
    TokioPostgres,
    /// This crate, native, running W7's queries one after another in one task: the baseline its concurrency
    /// is measured against.
    OursSequential,
    /// PostgreSQL's pgbench (libpq), for the workloads it can express.
    Pgbench,
    /// PostgreSQL's pg_recvlogical (libpq), W8 only: the same changes from a `test_decoding` slot, written
    /// to /dev/null.
    PgRecvlogical,
}

impl Contender {
    /// Every contender, in the order they run within a workload.
    pub const ALL: [Contender; 7] = [
        Contender::Ours,
        Contender::OursWasi,
        Contender::OursWasip3,
        Contender::TokioPostgres,
        Contender::OursSequential,
        Contender::Pgbench,
        Contender::PgRecvlogical,
    ];

    /// The name on the output lines.
    pub fn name(self) -> &'static str {
        match self {
            Contender::Ours => "ours",
            Contender::OursWasi => "ours-wasi",
            Contender::OursWasip3 => "ours-wasip3",
            Contender::TokioPostgres => "tokio-postgres",
            Contender::OursSequential => "ours-sequential",
            Contender::Pgbench => "pgbench",
            Contender::PgRecvlogical => "pg_recvlogical",
        }
    }

    /// Whether the contender can run `workload`: pgbench only runs W1, W2, W4 and W9 (`-C`), ours-sequential
    /// only W7, pg_recvlogical only W8, and tokio-postgres (which has no replication) all but W8.
    pub fn runs(self, workload: Workload) -> bool {
        match self {
            Contender::Pgbench => {
                matches!(
                    workload,
                    Workload::W1 | Workload::W2 | Workload::W4Pipeline | Workload::W4Sequential
                ) || workload.connects()
            }
            Contender::OursSequential => workload == Workload::W7,
            Contender::PgRecvlogical => workload == Workload::W8,
            Contender::TokioPostgres => workload != Workload::W8,
            Contender::Ours | Contender::OursWasi | Contender::OursWasip3 => true,
        }
    }

    /// The replication slot this contender streams W8 from in `round`: each run has its own, all made before
    /// the changes, so every run decodes the same WAL.
    pub fn w8_slot(self, round: u32) -> String {
        format!("bench_w8_{}_{round}", self.name().replace('-', "_"))
    }
}

impl fmt::Display for Contender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Contender {
    type Err = String;

    fn from_str(s: &str) -> Result<Contender, String> {
        Contender::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown contender {s:?}"))
    }
}

/// Inserts per pipeline in W4.
pub const W4_BATCH: u64 = 100;

/// Rows per transaction in W8.
pub const W8_TX_ROWS: u64 = 100;

/// W7's parameters: `count` queries shared among `tasks` futures, each task its own slice of `0..count`, so
/// every value is sent once and the checksum is the same for every contender.
pub fn w7_parameters(count: u64, tasks: u64) -> Result<Vec<Range<i32>>, String> {
    let end = i32::try_from(count)
        .map_err(|_| format!("W7: {count} queries do not fit in int4 parameters"))?;
    let tasks = i32::try_from(tasks)
        .ok()
        .filter(|&tasks| tasks > 0 && end % tasks == 0)
        .ok_or_else(|| format!("W7: {count} queries cannot be shared among {tasks} tasks"))?;
    let per_task = end / tasks;
    Ok((0..tasks)
        .map(|task| task * per_task..(task + 1) * per_task)
        .collect())
}

/// W7's check of one answer: the value sent must come back; what it adds to the checksum.
pub fn w7_echoed(sent: i32, got: i32) -> Result<u64, String> {
    if got != sent {
        return Err(format!("W7: sent {sent}, got {got} back"));
    }
    u64::try_from(got).map_err(|_| format!("W7: sent {sent}, which is negative"))
}

/// The sizes of one run: the figures, or smaller ones for `--quick`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// W1 and W2 queries.
    pub round_trips: u64,
    /// W3 and W6 rows.
    pub stream_rows: u64,
    /// W4 pipelined inserts.
    pub pipelined_inserts: u64,
    /// W4 sequential inserts.
    pub sequential_inserts: u64,
    /// W5 rows, in and out.
    pub copy_rows: u64,
    /// W7 futures sharing one client.
    pub concurrent_tasks: u64,
    /// W7 queries per future.
    pub queries_per_task: u64,
    /// W8 changes.
    pub replication_changes: u64,
    /// W9 connections.
    pub connections: u64,
    /// How many times every workload runs for every contender (interleaved); the median is reported.
    pub rounds: u32,
}

impl Plan {
    /// The sizes issue 7 names.
    pub const FULL: Plan = Plan {
        round_trips: 10_000,
        stream_rows: 1_000_000,
        pipelined_inserts: 100_000,
        sequential_inserts: 100_000,
        copy_rows: 1_000_000,
        concurrent_tasks: 100,
        queries_per_task: 1_000,
        replication_changes: 1_000_000,
        connections: 200,
        rounds: 5,
    };

    /// A smoke run that finishes in well under three minutes once built.
    pub const QUICK: Plan = Plan {
        round_trips: 5_000,
        stream_rows: 300_000,
        pipelined_inserts: 20_000,
        sequential_inserts: 10_000,
        copy_rows: 300_000,
        concurrent_tasks: 10,
        queries_per_task: 100,
        replication_changes: 100_000,
        connections: 50,
        rounds: 1,
    };

    /// How many operations `workload` runs.
    pub fn count(&self, workload: Workload) -> u64 {
        match workload {
            Workload::W1 | Workload::W2 => self.round_trips,
            Workload::W3 | Workload::W6 => self.stream_rows,
            Workload::W4Pipeline => self.pipelined_inserts,
            Workload::W4Sequential => self.sequential_inserts,
            Workload::W5CopyIn | Workload::W5CopyOut => self.copy_rows,
            Workload::W7 => self.concurrent_tasks * self.queries_per_task,
            Workload::W8 => self.replication_changes,
            Workload::W9Scram | Workload::W9Tls => self.connections,
        }
    }
}

/// What a client process reports on stdout: `result ops=<n> seconds=<s> check=<n>`.
///
/// `check` is a checksum of what was read back (the same for every contender), so a client that skipped
/// work would stand out; the clients verify it themselves too.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Operations done (queries, rows, inserts).
    pub ops: u64,
    /// Wall-clock seconds of the timed part.
    pub seconds: f64,
    /// A checksum of the results.
    pub check: u64,
}

impl Outcome {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.seconds
    }

    /// Finds and parses the `result` line in a client's output.
    pub fn parse(output: &str) -> Option<Outcome> {
        let line = output.lines().find(|l| l.starts_with("result "))?;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        };
        Some(Outcome {
            ops: field("ops")?.parse().ok()?,
            seconds: field("seconds")?.parse().ok()?,
            check: field("check")?.parse().ok()?,
        })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "result ops={} seconds={:.6} check={}",
            self.ops, self.seconds, self.check
        )
    }
}

/// Where the clients connect: the throwaway cluster on loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The server's address (an IP, so no name lookup is timed).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The role to log in as (trust authentication).
    pub user: String,
    /// The database.
    pub dbname: String,
    /// The PEM file of the server's self-signed certificate, for W6.
    pub ca_file: Option<String>,
}

/// The SQL of the workloads. Every contender sends exactly these texts.
pub mod sql {
    /// W1.
    pub const SELECT_ONE: &str = "SELECT 1";
    /// W2.
    pub const ADD_ONE: &str = "SELECT $1::int4 + 1";
    /// W7.
    pub const ECHO: &str = "SELECT $1::int4";
    /// W4's target table.
    pub const W4_TABLE: &str = "bench_w4";
    /// W4's insert.
    pub const W4_INSERT: &str = "INSERT INTO bench_w4 (id, payload) VALUES ($1, $2)";
    /// The text every W4 insert carries.
    pub const W4_PAYLOAD: &str = "a benchmark row";
    /// W5 COPY IN target.
    pub const W5_IN_TABLE: &str = "bench_w5_in";
    /// W5 COPY IN.
    pub const W5_COPY_IN: &str =
        "COPY bench_w5_in (id, payload, amount) FROM STDIN (FORMAT binary)";
    /// W5 COPY OUT (the table is filled once by `bench-client setup`).
    pub const W5_COPY_OUT: &str =
        "COPY bench_w5_out (id, payload, amount) TO STDOUT (FORMAT binary)";
    /// The text of every W5 row.
    pub const W5_PAYLOAD: &str = "copy row payload";
    /// W9's role, which logs in with SCRAM-SHA-256 (bench.sh's hba line), and its password.
    pub const W9_USER: &str = "bench_scram";
    /// W9's password (the role is made by `setup`).
    pub const W9_PASSWORD: &str = "bench-scram-pw";

    /// W8's table.
    pub const W8_TABLE: &str = "bench_w8";
    /// W8's publication, of that table only.
    pub const W8_PUBLICATION: &str = "bench_w8_pub";
    /// The text of every W8 row.
    pub const W8_PAYLOAD: &str = "a replicated row";

    /// W8's table and publication, made again before the slots.
    pub fn w8_setup() -> Vec<String> {
        vec![
            format!("DROP PUBLICATION IF EXISTS {W8_PUBLICATION}"),
            format!("DROP TABLE IF EXISTS {W8_TABLE}"),
            format!("CREATE TABLE {W8_TABLE} (id int4 PRIMARY KEY, payload text)"),
            format!("CREATE PUBLICATION {W8_PUBLICATION} FOR TABLE {W8_TABLE}"),
        ]
    }

    /// W8's changes: `changes` rows (ids 1..=changes) inserted in transactions of `W8_TX_ROWS`, each row its
    /// own insert in the WAL; a DO block outside a transaction block commits each one.
    pub fn w8_changes(changes: u64) -> String {
        let per = super::W8_TX_ROWS;
        let transactions = changes.div_ceil(per);
        format!(
            "DO $$ BEGIN FOR t IN 0..{last} LOOP \
             INSERT INTO {W8_TABLE} SELECT g, '{W8_PAYLOAD}' \
             FROM generate_series(t * {per} + 1, least((t + 1) * {per}, {changes})) g; \
             COMMIT; END LOOP; END $$",
            last = transactions.saturating_sub(1)
        )
    }

    /// W3 and W6 for `rows` rows (1 000 000 in the full run).
    pub fn stream(rows: u64) -> String {
        format!("SELECT g, g::text, now() FROM generate_series(1,{rows}) g")
    }

    /// Creates the tables (once per cluster) and fills W5's source with `copy_rows` rows; one statement each,
    /// as VACUUM cannot run in the implicit transaction of a multi-statement query.
    pub fn setup(copy_rows: u64) -> Vec<String> {
        vec![
            "DROP TABLE IF EXISTS bench_w4, bench_w5_in, bench_w5_out".to_string(),
            "CREATE TABLE bench_w4 (id int4, payload text)".to_string(),
            "CREATE TABLE bench_w5_in (id int4, payload text, amount int8)".to_string(),
            "CREATE TABLE bench_w5_out (id int4, payload text, amount int8)".to_string(),
            format!(
                "INSERT INTO bench_w5_out SELECT g, '{W5_PAYLOAD}', g::int8 * 3 FROM generate_series(1, {copy_rows}) g"
            ),
            "VACUUM (FREEZE, ANALYZE) bench_w5_out".to_string(),
            format!("DROP ROLE IF EXISTS {W9_USER}"),
            "SET password_encryption = 'scram-sha-256'".to_string(),
            format!("CREATE ROLE {W9_USER} LOGIN PASSWORD '{W9_PASSWORD}'"),
        ]
    }

    /// Empties a target table before a run (not timed).
    pub fn truncate(table: &str) -> String {
        format!("TRUNCATE {table}")
    }
}

/// The checksums a correct run produces, computed without the server.
pub mod expect {
    /// W1: one row per query.
    pub fn w1(count: u64) -> u64 {
        count
    }

    /// W2: the sum of `i + 1` for the parameters `0..count`.
    pub fn w2(count: u64) -> u64 {
        count * (count + 1) / 2
    }

    /// W3/W6: the sum of `g` plus the total length of `g::text` over `1..=rows` (in closed form, so the
    /// client spends no CPU on it).
    pub fn stream(rows: u64) -> u64 {
        rows * (rows + 1) / 2 + decimal_digits_up_to(rows)
    }

    /// The number of decimal digits written to print every integer of `1..=n`.
    fn decimal_digits_up_to(n: u64) -> u64 {
        let mut total = 0;
        let (mut low, mut digits) = (1u64, 1u64);
        while low <= n {
            let high = n.min(low.saturating_mul(10) - 1);
            total += (high - low + 1) * digits;
            low = low.saturating_mul(10);
            digits += 1;
        }
        total
    }

    /// W4: one affected row per insert.
    pub fn inserts(count: u64) -> u64 {
        count
    }

    /// W5 COPY IN: the row count the server reports.
    pub fn copy_in(rows: u64) -> u64 {
        rows
    }

    /// W7: the sum of the parameters `0..count`, each echoed once.
    pub fn w7(count: u64) -> u64 {
        count * count.saturating_sub(1) / 2
    }

    /// W8: the sum of `id + payload length` over `1..=changes`.
    pub fn w8(changes: u64) -> u64 {
        changes * (changes + 1) / 2 + changes * super::sql::W8_PAYLOAD.len() as u64
    }

    /// W9: one row per connection.
    pub fn w9(connections: u64) -> u64 {
        connections
    }

    /// W5 COPY OUT: the sum of `id + amount + payload length` over `1..=rows`, where `amount = 3 * id`.
    pub fn copy_out(rows: u64) -> u64 {
        4 * (rows * (rows + 1) / 2) + rows * super::sql::W5_PAYLOAD.len() as u64
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn closed_forms_match_the_sums() {
            for n in [0u64, 1, 9, 10, 11, 99, 100, 12_345] {
                let stream: u64 = (1..=n).map(|g| g + g.to_string().len() as u64).sum();
                assert_eq!(super::stream(n), stream, "stream({n})");
                let copy: u64 = (1..=n).map(|id| 4 * id + 16).sum();
                assert_eq!(super::copy_out(n), copy, "copy_out({n})");
                let echoed: u64 = (0..n).sum();
                assert_eq!(super::w7(n), echoed, "w7({n})");
                let replicated: u64 = (1..=n).map(|id| id + 16).sum();
                assert_eq!(super::w8(n), replicated, "w8({n})");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::w7_parameters;

    #[test]
    fn w7_tasks_send_every_value_once() {
        let ranges = w7_parameters(12, 3).unwrap();
        assert_eq!(ranges, vec![0..4, 4..8, 8..12]);
        assert_eq!(w7_parameters(100_000, 100).unwrap()[99], 99_000..100_000);
        assert!(w7_parameters(10, 3).is_err());
        assert!(w7_parameters(10, 0).is_err());
        assert!(w7_parameters(1 << 40, 1).is_err());
    }

    #[test]
    fn w8_slots_are_one_per_contender_and_round() {
        use super::Contender;
        assert_eq!(Contender::OursWasip3.w8_slot(2), "bench_w8_ours_wasip3_2");
        assert_eq!(
            Contender::PgRecvlogical.w8_slot(1),
            "bench_w8_pg_recvlogical_1"
        );
        // Slot names: lower-case letters, digits and underscores only.
        for contender in Contender::ALL {
            let slot = contender.w8_slot(5);
            assert!(
                slot.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            );
        }
    }
}

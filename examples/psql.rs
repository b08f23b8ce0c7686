//! A minimal `psql`: runs SQL and prints exactly what `psql -X -q -A -t` prints on stdout.
//!
//! ```text
//! psql [CONNINFO] [-c SQL]... [-f FILE]...
//! ```
//!
//! `CONNINFO` is a `postgresql://` URI or a libpq `key=value` string; the `PG*` environment fills
//! in the rest. Each `-c SQL` is sent as one simple Query, however many statements it holds. Each
//! `-f FILE` (`-` for stdin; stdin when there is no `-c` or `-f`) is split into statements the
//! way psql splits it, and each statement is sent on its own. `-c` and `-f` run in the order
//! given. For every row of every result set, stdout gets the fields joined by `|`, NULL as the
//! empty string, one line per row; after each command, psql's line `Asynchronous notification
//! "CHANNEL" with payload "PAYLOAD" received from server process with PID N.` (without the
//! payload part when it is empty) for each notification received meanwhile; nothing else.
//! psql's `-X -q -A -t` and `-v ON_ERROR_STOP=1` are accepted and change nothing: that is how
//! this program always behaves.
//!
//! The first failure stops the run: the server's `ERROR:` goes to stderr, after the result sets
//! completed before it reached stdout (like psql, none of the failing statement's own rows), and
//! the exit status is 1. A failure to connect exits with 2, as
//! psql does. Backslash meta-commands (`\d`, `\set`, ...) are not supported.
//!
//! COPY works as in psql: `COPY ... TO STDOUT` writes the data to stdout as the server sends it;
//! `COPY ... FROM STDIN` in a script reads the lines after the one the statement ends on, up to a
//! line `\.` (or the end of the input), and the rest of the statement's own line runs after the
//! COPY; in `-c` it reads stdin. A COPY to STDOUT or from STDIN inside a multi-statement `-c`
//! string is refused before anything is sent (psql runs it; this program sends COPY on its own).
//!
//! Native: `cargo run --example psql -- 'host=localhost user=me' -c 'SELECT 1'`
//!
//! WASI:   `wasmtime run -S inherit-network -S allow-ip-name-lookup --dir sql::/sql psql.wasm
//!          'postgresql://me@localhost/db' -f /sql/script.sql`
#![forbid(unsafe_code)]

use std::io::{self, BufWriter, Read, Write};

use wasi_pg_client::{Client, Config, Error, SimpleQueryMessage, SimpleQueryRow};

use script::CopyDirection;

/// psql's exit statuses.
const EXIT_OK: i32 = 0;
const EXIT_FAILURE: i32 = 1;
const EXIT_BAD_CONNECTION: i32 = 2;

const USAGE: &str = "usage: psql [CONNINFO] [-c SQL]... [-f FILE]...";

/// Where the SQL comes from, in command-line order.
#[derive(Debug, PartialEq, Eq)]
enum Source {
    /// `-c SQL`: one simple Query.
    Command(String),
    /// `-f FILE`: a script split into statements; `-` is stdin.
    File(String),
}

#[derive(Debug, PartialEq, Eq)]
struct Args {
    conninfo: String,
    sources: Vec<Source>,
}

/// Parses the command line like psql's getopt: options before or after the conninfo, bundled
/// flags (`-qAt`), and an option's value attached (`-cSQL`, `--file=F`) or in the next argument.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut args = args.into_iter();
    let mut conninfo = None;
    let mut sources = Vec::new();
    let mut only_positional = false;
    while let Some(arg) = args.next() {
        if only_positional || arg == "-" || !arg.starts_with('-') {
            if conninfo.replace(arg.clone()).is_some() {
                return Err(format!("extra command-line argument \"{arg}\""));
            }
            continue;
        }
        if arg == "--" {
            only_positional = true;
            continue;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, attached) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (long, None),
            };
            match name {
                "no-psqlrc" | "quiet" | "no-align" | "tuples-only" if attached.is_none() => {}
                "command" | "file" | "set" | "variable" => {
                    let value = match attached {
                        Some(value) => value,
                        None => args
                            .next()
                            .ok_or(format!("option --{name} requires an argument"))?,
                    };
                    let option = match name {
                        "command" => 'c',
                        "file" => 'f',
                        _ => 'v',
                    };
                    add_option_value(option, value, &mut sources)?;
                }
                _ => return Err(format!("unsupported option \"{arg}\"")),
            }
            continue;
        }
        // A bundle of short options: flags, then at most one option taking a value.
        for (at, flag) in arg.char_indices().skip(1) {
            match flag {
                'X' | 'q' | 'A' | 't' => {}
                'c' | 'f' | 'v' => {
                    let rest = &arg[at + 1..];
                    let value = if rest.is_empty() {
                        args.next()
                            .ok_or(format!("option -{flag} requires an argument"))?
                    } else {
                        rest.to_owned()
                    };
                    add_option_value(flag, value, &mut sources)?;
                    break;
                }
                _ => return Err(format!("unsupported option \"-{flag}\"")),
            }
        }
    }
    if sources.is_empty() {
        sources.push(Source::File("-".to_owned()));
    }
    Ok(Args {
        conninfo: conninfo.unwrap_or_default(),
        sources,
    })
}

/// Records the value of `-c`, `-f` or `-v` (by the option's letter).
fn add_option_value(option: char, value: String, sources: &mut Vec<Source>) -> Result<(), String> {
    match option {
        'c' => sources.push(Source::Command(value)),
        'f' => sources.push(Source::File(value)),
        // The run always stops at the first error, so this setting is the only one that fits.
        _ if is_on_error_stop(&value) => {}
        _ => {
            return Err(format!(
                "unsupported variable \"{value}\" (only ON_ERROR_STOP=1 is)"
            ));
        }
    }
    Ok(())
}

fn is_on_error_stop(assignment: &str) -> bool {
    assignment.split_once('=').is_some_and(|(name, value)| {
        name == "ON_ERROR_STOP"
            && ["1", "on", "true", "yes"]
                .iter()
                .any(|v| value.eq_ignore_ascii_case(v))
    })
}

/// Why a run stopped early.
enum Failure {
    /// The server rejected a statement, or the connection failed during one.
    Query(Error),
    /// A backslash meta-command (psql's own commands) in the input.
    MetaCommand(String),
    /// A script could not be read, or stdout could not be written.
    Local(String),
}

/// One connection, the stdout the rows go to, and stdin once read.
struct Session {
    client: Client,
    out: BufWriter<io::StdoutLock<'static>>,
    /// Stdin, read whole the first time a script or COPY data needs it, and how much of it was used.
    stdin: Option<(String, usize)>,
}

/// Where the data of a `COPY ... FROM STDIN` comes from.
enum CopySource<'a> {
    /// The lines of the script after the COPY statement.
    Script(&'a mut script::Items),
    /// Stdin, for a COPY in `-c`.
    Stdin,
}

impl Session {
    async fn run_source(&mut self, source: &Source) -> Result<(), Failure> {
        match source {
            // psql sends a -c string as it is; only a leading backslash makes it a meta-command.
            Source::Command(sql) if sql.starts_with('\\') => Err(Failure::MetaCommand(
                sql.split_whitespace().next().unwrap_or("\\").to_owned(),
            )),
            Source::Command(sql) => {
                let statements: Vec<String> = script::split(sql)
                    .filter_map(|item| match item {
                        script::Item::Statement(statement) => Some(statement),
                        script::Item::MetaCommand { .. } => None,
                    })
                    .collect();
                let copies = statements.iter().filter_map(|s| script::copy_direction(s));
                match (statements.len(), copies.clone().next()) {
                    (1, Some(direction)) => {
                        self.run_statement(sql, Some(direction), CopySource::Stdin)
                            .await
                    }
                    (_, Some(_)) => Err(Failure::Local(
                        "COPY FROM STDIN or TO STDOUT in a -c string with several statements is not supported"
                            .to_owned(),
                    )),
                    (_, None) => self.run_query(sql).await,
                }
            }
            Source::File(path) => {
                let script = self.read_script(path)?;
                let mut items = script::split(&script);
                while let Some(item) = items.next() {
                    match item {
                        script::Item::Statement(sql) => {
                            let direction = script::copy_direction(&sql);
                            self.run_statement(&sql, direction, CopySource::Script(&mut items))
                                .await?;
                        }
                        script::Item::MetaCommand { name, line } => {
                            return Err(Failure::MetaCommand(format!(
                                "{name} (line {line} of {path})"
                            )));
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Runs one statement: a COPY through the COPY calls, anything else as a simple Query.
    async fn run_statement(
        &mut self,
        sql: &str,
        copy: Option<CopyDirection>,
        source: CopySource<'_>,
    ) -> Result<(), Failure> {
        let result = match copy {
            None => return self.run_query(sql).await,
            Some(CopyDirection::FromStdin) => self.copy_in(sql, source).await,
            Some(CopyDirection::ToStdout) => self.copy_out(sql).await,
        };
        self.after_statement(result)
    }

    /// `COPY ... FROM STDIN`: the data follows the statement in its source, as psql reads it. If the
    /// server refuses the statement, no data is read (psql would run it as SQL, after the error
    /// that stops this program).
    async fn copy_in(&mut self, sql: &str, source: CopySource<'_>) -> Result<(), Failure> {
        let mut writer = self.client.copy_in(sql).await.map_err(Failure::Query)?;
        let binary = writer.is_binary();
        let data = match source {
            CopySource::Script(items) => items.take_copy_data(binary),
            CopySource::Stdin => {
                let (stdin, used) = read_stdin(&mut self.stdin)?;
                let (data, consumed) = script::copy_data(&stdin[*used..], binary);
                let data = data.to_owned();
                *used += consumed;
                data
            }
        };
        writer
            .write(data.as_bytes())
            .await
            .map_err(Failure::Query)?;
        // psql -q prints nothing for a COPY, not even its row count.
        writer.finish().await.map_err(Failure::Query)?;
        Ok(())
    }

    /// `COPY ... TO STDOUT`: the data goes to stdout as it comes.
    async fn copy_out(&mut self, sql: &str) -> Result<(), Failure> {
        let mut reader = self.client.copy_out(sql).await.map_err(Failure::Query)?;
        while let Some(chunk) = reader.next().await.map_err(Failure::Query)? {
            self.out.write_all(&chunk).map_err(output_failed)?;
        }
        Ok(())
    }

    fn read_script(&mut self, path: &str) -> Result<String, Failure> {
        if path != "-" {
            let bytes = std::fs::read(path).map_err(|e| Failure::Local(format!("{path}: {e}")))?;
            return String::from_utf8(bytes)
                .map_err(|e| Failure::Local(format!("{path}: not valid UTF-8 ({e})")));
        }
        let (stdin, used) = read_stdin(&mut self.stdin)?;
        let rest = stdin[*used..].to_owned();
        *used = stdin.len();
        Ok(rest)
    }

    /// Sends `sql` as one simple Query and prints its rows, then what the server sent aside.
    async fn run_query(&mut self, sql: &str) -> Result<(), Failure> {
        let result = self.print_rows(sql).await;
        self.after_statement(result)
    }

    /// Prints what the server sent aside during a statement, and flushes stdout.
    fn after_statement(&mut self, result: Result<(), Failure>) -> Result<(), Failure> {
        // psql prints notices as they come, so before the error that may follow them.
        for notice in self.client.take_notices() {
            eprintln!("{}:  {}", notice.severity(), notice.message());
        }
        // psql prints notifications after the query, on stdout, even with -q.
        for notification in self.client.take_notifications() {
            let (channel, pid) = (notification.channel(), notification.process_id());
            let line = match notification.payload() {
                "" => format!(
                    "Asynchronous notification \"{channel}\" received from server process with PID {pid}."
                ),
                payload => format!(
                    "Asynchronous notification \"{channel}\" with payload \"{payload}\" received from server process with PID {pid}."
                ),
            };
            writeln!(self.out, "{line}").map_err(output_failed)?;
        }
        self.out.flush().map_err(output_failed)?;
        result
    }

    async fn print_rows(&mut self, sql: &str) -> Result<(), Failure> {
        let mut stream = self
            .client
            .simple_query_stream(sql)
            .await
            .map_err(Failure::Query)?;
        // psql shows a result set only once its statement completes: when a statement fails after
        // sending some rows, libpq turns its whole result into the error and those rows are never
        // printed. So rows wait here until CommandComplete; an error drops them. The result sets
        // of the statements before it in the same Query were complete, and are printed.
        let mut result_set = Vec::new();
        while let Some(message) = stream.next().await.map_err(Failure::Query)? {
            match message {
                SimpleQueryMessage::Row(row) => {
                    write_row(&mut result_set, &row).map_err(output_failed)?;
                }
                SimpleQueryMessage::CommandComplete(_) => {
                    self.out.write_all(&result_set).map_err(output_failed)?;
                    result_set.clear();
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// One row as `psql -A -t` prints it: fields joined by `|`, NULL as the empty string, values
/// verbatim (newlines included). A row without columns (`SELECT;`) prints nothing at all.
fn write_row(out: &mut impl Write, row: &SimpleQueryRow) -> io::Result<()> {
    if row.is_empty() {
        return Ok(());
    }
    for i in 0..row.len() {
        if i > 0 {
            out.write_all(b"|")?;
        }
        out.write_all(row.get(i).unwrap_or_default().as_bytes())?;
    }
    out.write_all(b"\n")
}

/// Stdin and how much of it was used, read whole on first use. Blocking is fine: there is nothing
/// else to do until it is in.
fn read_stdin(stdin: &mut Option<(String, usize)>) -> Result<&mut (String, usize), Failure> {
    if stdin.is_none() {
        let mut bytes = Vec::new();
        io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| Failure::Local(format!("-: {e}")))?;
        let text = String::from_utf8(bytes)
            .map_err(|e| Failure::Local(format!("-: not valid UTF-8 ({e})")))?;
        *stdin = Some((text, 0));
    }
    Ok(stdin.get_or_insert_default())
}

fn output_failed(e: io::Error) -> Failure {
    Failure::Local(format!("cannot write to stdout: {e}"))
}

/// Prints the failure to stderr the way psql does and returns the exit status.
fn report(failure: &Failure) -> i32 {
    match failure {
        Failure::Query(e) => {
            match e.as_db_error() {
                Some(db) => {
                    eprintln!("{}:  {}", db.severity(), db.message());
                    if let Some(detail) = db.detail() {
                        eprintln!("DETAIL:  {detail}");
                    }
                    if let Some(hint) = db.hint() {
                        eprintln!("HINT:  {hint}");
                    }
                }
                None => eprintln!("ERROR:  {e}"),
            }
            // psql also exits with 2 when the connection is lost in the middle of a script.
            if e.is_connection_broken() {
                EXIT_BAD_CONNECTION
            } else {
                EXIT_FAILURE
            }
        }
        Failure::MetaCommand(name) => {
            eprintln!("ERROR: meta-commands are not supported");
            eprintln!("DETAIL:  {name}");
            EXIT_FAILURE
        }
        Failure::Local(message) => {
            eprintln!("psql: error: {message}");
            EXIT_FAILURE
        }
    }
}

/// Runs the whole command line and returns the exit status, with stdout flushed.
async fn run(args: impl IntoIterator<Item = String>) -> i32 {
    let args = match parse_args(args) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("psql: error: {message}\n{USAGE}");
            return EXIT_FAILURE;
        }
    };
    let client = match Config::from_conninfo_and_env(&args.conninfo) {
        Ok(config) => Client::connect(&config).await,
        Err(e) => Err(e),
    };
    let client = match client {
        Ok(client) => client,
        Err(e) => {
            eprintln!("psql: error: {e}");
            return EXIT_BAD_CONNECTION;
        }
    };

    let mut session = Session {
        client,
        out: BufWriter::new(io::stdout().lock()),
        stdin: None,
    };
    let mut result = Ok(());
    for source in &args.sources {
        result = session.run_source(source).await;
        if result.is_err() {
            break;
        }
    }
    // Rows printed before an error must reach stdout before the error reaches stderr.
    let flushed = session.out.flush().map_err(output_failed);
    let status = match result.and(flushed) {
        Ok(()) => EXIT_OK,
        Err(failure) => report(&failure),
    };
    if !session.client.is_closed() {
        // The output is complete; a failed goodbye changes nothing for the caller.
        let _ = session.client.close().await;
    }
    status
}

#[cfg(not(target_os = "wasi"))]
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let status = run(std::env::args().skip(1)).await;
    std::process::exit(status);
}

#[cfg(all(target_os = "wasi", not(feature = "wasip3")))]
#[wstd::main]
async fn main() {
    let status = run(std::env::args().skip(1)).await;
    // `std::process::exit` reports every non-zero status as 1 on WASI (it calls
    // `wasi:cli/exit.exit` with an error); `exit-with-code` (WASI 0.2.12) keeps psql's 2.
    if let Ok(code) = u8::try_from(status) {
        wasip2::cli::exit::exit_with_code(code);
    }
    std::process::exit(status);
}

/// WASI 0.3 (`--features wasip3`): the component exports `wasi:cli/run@0.3`, which wasmtime calls instead of
/// `main`, and `run` is awaited inside wit-bindgen's task.
#[cfg(all(target_os = "wasi", feature = "wasip3"))]
mod wasi_p3 {
    struct Psql;

    impl wasip3::exports::cli::run::Guest for Psql {
        async fn run() -> Result<(), ()> {
            let status = super::run(std::env::args().skip(1)).await;
            // As on 0.2: `exit-with-code` keeps psql's status 2 (a failed `run` would report 1).
            if let Ok(code) = u8::try_from(status) {
                wasip3::cli::exit::exit_with_code(code);
            }
            std::process::exit(status);
        }
    }

    wasip3::cli::command::export!(Psql);
}

/// Never called on WASI 0.3: the host runs the exported `wasi:cli/run@0.3` instead.
#[cfg(all(target_os = "wasi", feature = "wasip3"))]
fn main() {}

mod script {
    //! Splits script text into statements the way psql's lexer (`psqlscan.l`, PostgreSQL 15) does.
    //!
    //! psql sends a statement when it meets a `;` outside quotes, comments and parentheses, so a
    //! `;` inside `'...'`, `E'...'`, `"..."`, `$tag$...$tag$`, `--` and nested `/* */` comments,
    //! or `( ... )` does not end one. Like psql it also keeps `;` inside the `BEGIN ... END` body
    //! of `CREATE [OR REPLACE] FUNCTION|PROCEDURE` (SQL-standard bodies), turns `\;` and `\:`
    //! into a plain `;` and `:` without ending the statement, and sends a final statement that has
    //! no `;`. It does not substitute psql variables (`:name`) and assumes
    //! `standard_conforming_strings` is on, as it is by default since PostgreSQL 9.1.

    /// One unit of a script, in input order.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Item {
        /// SQL to send as one simple Query message, with its `;` when it had one.
        Statement(String),
        /// A backslash meta-command such as `\d` or `\set`, which psql would run itself.
        MetaCommand {
            /// The command, backslash included.
            name: String,
            /// The 1-based line it is on.
            line: usize,
        },
    }

    /// Returns the statements and meta-commands of `script`, lazily, in order.
    pub(crate) fn split(script: &str) -> Items {
        Items {
            src: script.to_owned(),
            pos: 0,
        }
    }

    /// The iterator returned by [`split`].
    pub(crate) struct Items {
        src: String,
        pos: usize,
    }

    impl Iterator for Items {
        type Item = Item;

        fn next(&mut self) -> Option<Item> {
            while self.pos < self.src.len() {
                let (item, next) = scan_item(&self.src, self.pos);
                self.pos = next;
                if item.is_some() {
                    return item;
                }
            }
            None
        }
    }

    impl Items {
        /// Takes the data of the `COPY ... FROM STDIN` just returned, as psql reads it: the lines
        /// after the one the statement ended on, up to a line `\.` (or the end). The rest of the
        /// statement's line is scanned next, then the script after the data, as if the data lines
        /// were empty: a statement begun there runs on past them, and line numbers stay right.
        /// Binary data is the whole rest of the input.
        pub(crate) fn take_copy_data(&mut self, binary: bool) -> String {
            let line_end = self.src[self.pos..]
                .find('\n')
                .map_or(self.src.len(), |n| self.pos + n + 1);
            let (data, consumed) = copy_data(&self.src[line_end..], binary);
            let data = data.to_owned();
            let blank = "\n".repeat(
                self.src[line_end..line_end + consumed]
                    .matches('\n')
                    .count(),
            );
            self.src
                .replace_range(line_end..line_end + consumed, &blank);
            data
        }
    }

    /// The COPY data at the start of `input` and how many bytes it takes, terminator included: in
    /// text and CSV the lines before a line that is exactly `\.` (the terminator is not sent, as
    /// psql 18 does not), else everything; in binary everything. Like psql, a `\.` inside a quoted
    /// CSV value ends the data too.
    pub(crate) fn copy_data(input: &str, binary: bool) -> (&str, usize) {
        if binary {
            return (input, input.len());
        }
        let mut at = 0;
        for line in input.split_inclusive('\n') {
            if line == "\\.\n" || line == "\\.\r\n" {
                return (&input[..at], at + line.len());
            }
            at += line.len();
        }
        (input, input.len())
    }

    /// Which way a COPY statement moves data through the client, if it does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum CopyDirection {
        /// `COPY ... FROM STDIN`.
        FromStdin,
        /// `COPY ... TO STDOUT`.
        ToStdout,
    }

    /// Whether `sql` is a `COPY ... FROM STDIN` or `COPY ... TO STDOUT`: its first word is COPY and
    /// the first `FROM` or `TO` outside parentheses and quotes (both are reserved words, so a table
    /// cannot be called that without quotes) is followed by `STDIN` or `STDOUT`.
    pub(crate) fn copy_direction(sql: &str) -> Option<CopyDirection> {
        let mut words = top_level_words(sql);
        if !words.next()??.eq_ignore_ascii_case("copy") {
            return None;
        }
        while let Some(word) = words.next() {
            let Some(word) = word else { continue };
            let (direction, source) = if word.eq_ignore_ascii_case("from") {
                (CopyDirection::FromStdin, "stdin")
            } else if word.eq_ignore_ascii_case("to") {
                (CopyDirection::ToStdout, "stdout")
            } else {
                continue;
            };
            let next = words.next().flatten()?;
            return next.eq_ignore_ascii_case(source).then_some(direction);
        }
        None
    }

    /// The tokens of `sql` outside parentheses, comments and whitespace: `Some(word)` for an
    /// unquoted word, `None` for anything else (a literal, a quoted name, a parenthesized group,
    /// punctuation).
    fn top_level_words(sql: &str) -> impl Iterator<Item = Option<&str>> {
        let b = sql.as_bytes();
        let mut i = 0;
        std::iter::from_fn(move || {
            loop {
                let c = *b.get(i)?;
                let next = b.get(i + 1).copied();
                match c {
                    b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
                    b'-' if next == Some(b'-') => {
                        while i < b.len() && b[i] != b'\n' {
                            i += 1;
                        }
                    }
                    b'/' if next == Some(b'*') => i = skip_block_comment(b, i).0,
                    b'(' => {
                        // The whole group is one token: scan_token counts the parentheses.
                        let mut depth = 0u32;
                        let mut body = RoutineBody::default();
                        loop {
                            match (b.get(i), b.get(i + 1)) {
                                (None, _) => break,
                                (Some(b'-'), Some(b'-')) => {
                                    i += sql[i..].find('\n').unwrap_or(sql.len() - i);
                                }
                                (Some(b'/'), Some(b'*')) => i = skip_block_comment(b, i).0,
                                (Some(b')'), _) if depth == 1 => {
                                    i += 1;
                                    break;
                                }
                                _ => i = scan_token(sql, i, &mut depth, &mut body),
                            }
                        }
                        return Some(None);
                    }
                    c if is_ident_start(c) => {
                        let start = i;
                        i += b[i..].iter().take_while(|&&c| is_ident_cont(c)).count();
                        // E'...', B'...' and friends are literals, not words.
                        if b.get(i) == Some(&b'\'') || b.get(i) == Some(&b'&') {
                            i = scan_token(sql, start, &mut 0, &mut RoutineBody::default());
                            return Some(None);
                        }
                        return Some(Some(&sql[start..i]));
                    }
                    _ => {
                        i = scan_token(sql, i, &mut 0, &mut RoutineBody::default());
                        return Some(None);
                    }
                }
            }
        })
    }

    /// The text of the statement being scanned.
    struct Text<'a> {
        src: &'a str,
        /// The first byte of the statement: leading whitespace and `--` comments are dropped,
        /// as psql does.
        start: Option<usize>,
        /// Text before `start_of_rest`, with `\;` and `\:` already replaced.
        done: String,
        start_of_rest: usize,
        /// Whether the statement holds anything but whitespace, comments and `;`. psql sends
        /// such a statement anyway and the server ignores it; we do not send it.
        has_sql: bool,
    }

    impl<'a> Text<'a> {
        fn begin_at(&mut self, i: usize) {
            if self.start.is_none() {
                self.start = Some(i);
                self.start_of_rest = i;
            }
        }

        /// Replaces the two bytes at `i` (`\;` or `\:`) by `c`.
        fn replace_escape(&mut self, i: usize, c: char) {
            self.begin_at(i);
            self.done.push_str(&self.src[self.start_of_rest..i]);
            self.done.push(c);
            self.start_of_rest = i + 2;
        }

        fn finish(mut self, end: usize) -> Option<Item> {
            if !self.has_sql {
                return None;
            }
            self.done.push_str(&self.src[self.start_of_rest..end]);
            Some(Item::Statement(self.done))
        }
    }

    /// psql's heuristic for SQL-standard routine bodies: after `CREATE [OR REPLACE]
    /// FUNCTION|PROCEDURE`, `BEGIN` (and `CASE` inside it) opens a block that `END` closes, and a
    /// `;` inside a block does not end the statement.
    #[derive(Default)]
    struct RoutineBody {
        /// Unquoted identifiers seen since the statement began (psql's `identifier_count`).
        identifiers: usize,
        /// First letters of the leading `create`/`or`/`replace`/`function`/`procedure` words.
        leading: [u8; 4],
        depth: u32,
    }

    impl RoutineBody {
        fn on_identifier(&mut self, word: &str, paren_depth: u32) {
            if self.identifiers == 0 {
                self.leading = [0; 4];
            }
            let is_leading_word = ["create", "function", "procedure", "or", "replace"]
                .iter()
                .any(|k| word.eq_ignore_ascii_case(k));
            if is_leading_word && self.identifiers < self.leading.len() {
                self.leading[self.identifiers] = word.as_bytes()[0].to_ascii_lowercase();
            }
            self.identifiers = self.identifiers.saturating_add(1);

            let l = self.leading;
            let defines_routine = l[0] == b'c'
                && (matches!(l[1], b'f' | b'p')
                    || (l[1] == b'o' && l[2] == b'r' && matches!(l[3], b'f' | b'p')));
            if !defines_routine || paren_depth > 0 {
                return;
            }
            if word.eq_ignore_ascii_case("begin") {
                self.depth += 1;
            } else if word.eq_ignore_ascii_case("case") {
                if self.depth >= 1 {
                    self.depth += 1;
                }
            } else if word.eq_ignore_ascii_case("end") {
                self.depth = self.depth.saturating_sub(1);
            }
        }
    }

    /// Scans one statement or meta-command starting at byte `i`. Returns it (`None` when the
    /// statement was empty) and where the next one starts.
    fn scan_item(src: &str, mut i: usize) -> (Option<Item>, usize) {
        let b = src.as_bytes();
        let mut text = Text {
            src,
            start: None,
            done: String::new(),
            start_of_rest: i,
            has_sql: false,
        };
        let mut paren_depth: u32 = 0;
        let mut body = RoutineBody::default();

        while i < b.len() {
            let c = b[i];
            let next = b.get(i + 1).copied();
            // Every arm leaves `i` on a char boundary: all delimiters are ASCII, and the bytes of
            // a multi-byte character are identifier bytes, consumed together.
            match c {
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
                b'-' if next == Some(b'-') => {
                    while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                        i += 1;
                    }
                }
                b'/' if next == Some(b'*') => {
                    text.begin_at(i);
                    let (end, closed) = skip_block_comment(b, i);
                    // psql sends an unterminated comment, and the server reports it.
                    text.has_sql |= !closed;
                    i = end;
                }
                b';' => {
                    text.begin_at(i);
                    i += 1;
                    if paren_depth == 0 && body.depth == 0 {
                        return (text.finish(i), i);
                    }
                }
                b'\\' if matches!(next, Some(b';' | b':')) => {
                    text.replace_escape(i, char::from(b[i + 1]));
                    if next == Some(b';') {
                        body.identifiers = 0;
                    }
                    i += 2;
                }
                b'\\' => {
                    let end = src[i + 1..]
                        .find(|ch: char| ch.is_whitespace() || ch == '\\')
                        .map_or(b.len(), |n| i + 1 + n);
                    let name = src[i..end].to_owned();
                    let line = 1 + b[..i].iter().filter(|&&c| c == b'\n').count();
                    // psql reads the rest of the line as the command's arguments.
                    let line_end = src[i..].find('\n').map_or(b.len(), |n| i + n + 1);
                    return (Some(Item::MetaCommand { name, line }), line_end);
                }
                _ => {
                    text.begin_at(i);
                    text.has_sql = true;
                    i = scan_token(src, i, &mut paren_depth, &mut body);
                }
            }
        }
        (text.finish(b.len()), b.len())
    }

    /// Scans the SQL token at `i` (a literal, identifier, parenthesis or other character) and
    /// returns where it ends.
    fn scan_token(src: &str, i: usize, paren_depth: &mut u32, body: &mut RoutineBody) -> usize {
        let b = src.as_bytes();
        let at = |k: usize| b.get(i + k).copied().unwrap_or(0);
        match (at(0), at(1), at(2)) {
            (b'\'', _, _) => skip_quoted(b, i + 1, b'\'', false),
            (b'"', _, _) => skip_quoted(b, i + 1, b'"', false),
            // E'...' takes backslash escapes; B'', X'', N'' and U&'' end like plain strings.
            (b'e' | b'E', b'\'', _) => skip_quoted(b, i + 2, b'\'', true),
            (b'b' | b'B' | b'x' | b'X' | b'n' | b'N', b'\'', _) => {
                skip_quoted(b, i + 2, b'\'', false)
            }
            (b'u' | b'U', b'&', q @ (b'\'' | b'"')) => skip_quoted(b, i + 3, q, false),
            (b'$', _, _) => match dollar_tag(b, i) {
                Some(tag_end) => {
                    let tag = &src[i..tag_end];
                    src[tag_end..]
                        .find(tag)
                        .map_or(b.len(), |n| tag_end + n + tag.len())
                }
                // `$1`, or a `$` that starts no tag: the rest is lexed again on its own.
                None => i + 1,
            },
            (c, _, _) if is_ident_start(c) => {
                let end = i + b[i..].iter().take_while(|&&c| is_ident_cont(c)).count();
                body.on_identifier(&src[i..end], *paren_depth);
                end
            }
            (b'0'..=b'9', _, _) => i + b[i..].iter().take_while(|c| c.is_ascii_digit()).count(),
            (b'(', _, _) => {
                *paren_depth += 1;
                i + 1
            }
            (b')', _, _) => {
                *paren_depth = paren_depth.saturating_sub(1);
                i + 1
            }
            _ => i + 1,
        }
    }

    fn is_ident_start(c: u8) -> bool {
        c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
    }

    fn is_ident_cont(c: u8) -> bool {
        is_ident_start(c) || c.is_ascii_digit() || c == b'$'
    }

    /// If a dollar-quote delimiter (`$$` or `$tag$`) starts at `i`, returns where it ends.
    fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
        let mut j = i + 1;
        if b.get(j).is_some_and(|&c| is_ident_start(c)) {
            j += b[j..]
                .iter()
                .take_while(|&&c| is_ident_start(c) || c.is_ascii_digit())
                .count();
        }
        (b.get(j) == Some(&b'$')).then_some(j + 1)
    }

    /// Returns the index just past the closing `quote` (a doubled quote does not close), or the
    /// end of input when there is none.
    fn skip_quoted(b: &[u8], mut i: usize, quote: u8, backslash_escapes: bool) -> usize {
        while i < b.len() {
            match b[i] {
                b'\\' if backslash_escapes => i += 2,
                c if c == quote && b.get(i + 1) == Some(&quote) => i += 2,
                c if c == quote => return i + 1,
                _ => i += 1,
            }
        }
        b.len()
    }

    /// Skips the nested `/* */` comment at `i`; returns its end and whether it was closed.
    fn skip_block_comment(b: &[u8], mut i: usize) -> (usize, bool) {
        let mut depth = 0u32;
        i += 2;
        while i < b.len() {
            match (b[i], b.get(i + 1)) {
                (b'/', Some(b'*')) => {
                    depth += 1;
                    i += 2;
                }
                (b'*', Some(b'/')) => {
                    i += 2;
                    if depth == 0 {
                        return (i, true);
                    }
                    depth -= 1;
                }
                _ => i += 1,
            }
        }
        (b.len(), false)
    }

    #[cfg(test)]
    mod tests {
        use super::{Item, split};

        fn statements(script: &str) -> Vec<String> {
            split(script)
                .map(|item| match item {
                    Item::Statement(sql) => sql,
                    Item::MetaCommand { name, line } => format!("META {name} line {line}"),
                })
                .collect()
        }

        #[test]
        fn splits_on_semicolons_and_keeps_them() {
            assert_eq!(
                statements("SELECT 1; SELECT 2;\nSELECT 3;"),
                ["SELECT 1;", "SELECT 2;", "SELECT 3;"]
            );
        }

        #[test]
        fn sends_a_final_statement_without_semicolon() {
            assert_eq!(
                statements("SELECT 1;\nSELECT 2\n"),
                ["SELECT 1;", "SELECT 2\n"]
            );
        }

        #[test]
        fn skips_empty_and_comment_only_statements() {
            assert_eq!(
                statements(";; \n ; /* c */; -- only a comment\n"),
                Vec::<String>::new()
            );
            assert_eq!(statements("  \n\t"), Vec::<String>::new());
            assert_eq!(statements(""), Vec::<String>::new());
        }

        #[test]
        fn drops_leading_whitespace_and_line_comments_like_psql() {
            assert_eq!(
                statements("-- head; x\n  SELECT 1 -- mid; y\n, 2;"),
                ["SELECT 1 -- mid; y\n, 2;"]
            );
            assert_eq!(
                statements("/* head; */ SELECT 1;"),
                ["/* head; */ SELECT 1;"]
            );
        }

        #[test]
        fn ignores_semicolons_in_string_literals() {
            assert_eq!(
                statements("SELECT 'a;b', 'it''s;'; SELECT 2;"),
                ["SELECT 'a;b', 'it''s;';", "SELECT 2;"]
            );
            assert_eq!(
                statements("SELECT 'multi\nline;\n';"),
                ["SELECT 'multi\nline;\n';"]
            );
        }

        #[test]
        fn honours_backslash_escapes_only_in_e_strings() {
            assert_eq!(
                statements(r"SELECT E'x\';y', e'\\'; SELECT 'a\'; SELECT 2;"),
                [r"SELECT E'x\';y', e'\\';", r"SELECT 'a\';", "SELECT 2;"]
            );
            // An identifier ending in e is not an E'' prefix.
            assert_eq!(
                statements(r"SELECT somee'\'; SELECT 2;"),
                [r"SELECT somee'\';", "SELECT 2;"]
            );
        }

        #[test]
        fn treats_prefixed_strings_as_strings() {
            assert_eq!(
                statements("SELECT B'1;', X'1;', N'n;', U&'u;', U&\"i;\"; SELECT 2;"),
                ["SELECT B'1;', X'1;', N'n;', U&'u;', U&\"i;\";", "SELECT 2;"]
            );
        }

        #[test]
        fn ignores_semicolons_in_quoted_identifiers() {
            assert_eq!(
                statements(r#"SELECT 1 AS "a;""b"; SELECT 2;"#),
                [r#"SELECT 1 AS "a;""b";"#, "SELECT 2;"]
            );
        }

        #[test]
        fn ignores_semicolons_in_dollar_quotes() {
            assert_eq!(
                statements("SELECT $$a;b$$, $t$ $$ ; $x$ ; $t$, $_1$;$_1$; SELECT 2;"),
                [
                    "SELECT $$a;b$$, $t$ $$ ; $x$ ; $t$, $_1$;$_1$;",
                    "SELECT 2;"
                ]
            );
            // The closing tag can follow a longer tag-like run: $a$ ... $ab$a$.
            assert_eq!(
                statements("SELECT $a$ ; $ab$a$; SELECT 2;"),
                ["SELECT $a$ ; $ab$a$;", "SELECT 2;"]
            );
        }

        #[test]
        fn does_not_take_parameters_or_identifier_dollars_for_dollar_quotes() {
            assert_eq!(
                statements("SELECT $1; SELECT 2;"),
                ["SELECT $1;", "SELECT 2;"]
            );
            assert_eq!(
                statements("SELECT a$$b; SELECT 2;"),
                ["SELECT a$$b;", "SELECT 2;"]
            );
            assert_eq!(statements("SELECT 1$$;$$;"), ["SELECT 1$$;$$;"]);
        }

        #[test]
        fn ignores_semicolons_in_comments() {
            assert_eq!(
                statements("SELECT 1 /* a; /* nested; */ still; */ + 2; SELECT 3 -- c;\n + 4;"),
                [
                    "SELECT 1 /* a; /* nested; */ still; */ + 2;",
                    "SELECT 3 -- c;\n + 4;"
                ]
            );
            // `--` and `/*` start comments even right after an operator character.
            assert_eq!(
                statements("SELECT 1 +-- c;\n2; SELECT 2 */* c; */ 3;"),
                ["SELECT 1 +-- c;\n2;", "SELECT 2 */* c; */ 3;"]
            );
        }

        #[test]
        fn does_not_split_inside_parentheses() {
            assert_eq!(
                statements(
                    "CREATE RULE r AS ON INSERT TO t DO ALSO (SELECT 1; SELECT 2); SELECT 3;"
                ),
                [
                    "CREATE RULE r AS ON INSERT TO t DO ALSO (SELECT 1; SELECT 2);",
                    "SELECT 3;"
                ]
            );
            // An unbalanced `)` does not make the depth negative.
            assert_eq!(
                statements("SELECT ); SELECT 2;"),
                ["SELECT );", "SELECT 2;"]
            );
        }

        #[test]
        fn keeps_sql_standard_routine_bodies_whole() {
            let create = "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql \
                          BEGIN ATOMIC SELECT CASE WHEN a > 0 THEN a END; SELECT a; END;";
            assert_eq!(
                statements(&format!("{create} SELECT 1;")),
                [create, "SELECT 1;"]
            );
            let replace =
                "create or replace procedure p() language sql begin atomic select 1; end;";
            assert_eq!(
                statements(&format!("{replace} SELECT 1;")),
                [replace, "SELECT 1;"]
            );
            // Outside CREATE FUNCTION/PROCEDURE, BEGIN is just a statement.
            assert_eq!(
                statements("BEGIN; SELECT 1; END;"),
                ["BEGIN;", "SELECT 1;", "END;"]
            );
            // Inside parentheses, BEGIN is a name, not a block.
            assert_eq!(
                statements("CREATE FUNCTION f(begin int) RETURNS int RETURN 1; SELECT 2;"),
                [
                    "CREATE FUNCTION f(begin int) RETURNS int RETURN 1;",
                    "SELECT 2;"
                ]
            );
        }

        #[test]
        fn turns_escaped_semicolon_and_colon_into_plain_ones() {
            assert_eq!(
                statements(r"SELECT 1 \; SELECT 2; SELECT 3\:\:text;"),
                ["SELECT 1 ; SELECT 2;", "SELECT 3::text;"]
            );
        }

        #[test]
        fn sends_unterminated_input_for_the_server_to_reject() {
            assert_eq!(
                statements("SELECT 1; SELECT 'open; "),
                ["SELECT 1;", "SELECT 'open; "]
            );
            assert_eq!(statements("SELECT $x$ open;"), ["SELECT $x$ open;"]);
            assert_eq!(statements("SELECT 1; /* open;"), ["SELECT 1;", "/* open;"]);
            assert_eq!(statements("SELECT (1;"), ["SELECT (1;"]);
            assert_eq!(statements(r"SELECT E'\"), [r"SELECT E'\"]);
        }

        #[test]
        fn reports_meta_commands_in_order() {
            assert_eq!(
                statements("SELECT 1;\n\\set x 1\nSELECT 2;"),
                ["SELECT 1;", "META \\set line 2", "SELECT 2;"]
            );
            assert_eq!(statements("SELECT '\\x';"), ["SELECT '\\x';"]);
        }

        #[test]
        fn handles_multibyte_text() {
            assert_eq!(
                statements("SELECT 1 AS é;SELECT 'ü;', \"ß;\", $ä$x;$ä$;"),
                ["SELECT 1 AS é;", "SELECT 'ü;', \"ß;\", $ä$x;$ä$;"]
            );
            assert_eq!(statements("SELECT E'\\é;';"), ["SELECT E'\\é;';"]);
        }

        #[test]
        fn recognises_copy_through_the_client() {
            use super::{CopyDirection::*, copy_direction};
            let cases = [
                ("COPY t FROM STDIN;", Some(FromStdin)),
                (
                    "copy t (a, b) from stdin with (format csv);",
                    Some(FromStdin),
                ),
                ("/* c */ COPY \"from\" FROM Stdin", Some(FromStdin)),
                ("COPY BINARY t FROM STDIN", Some(FromStdin)),
                ("COPY t TO STDOUT (FORMAT binary);", Some(ToStdout)),
                (
                    "COPY (SELECT a FROM t WHERE b = 'to') TO STDOUT;",
                    Some(ToStdout),
                ),
                ("COPY (SELECT ')' FROM t -- )\n) TO STDOUT;", Some(ToStdout)),
                ("COPY t FROM '/tmp/file';", None),
                ("COPY t TO PROGRAM 'cat';", None),
                ("COPY t FROM 'stdin';", None),
                ("SELECT 'COPY t FROM STDIN';", None),
                ("INSERT INTO t SELECT 1 FROM stdin;", None),
                ("COPY t", None),
                ("", None),
            ];
            for (sql, expected) in cases {
                assert_eq!(copy_direction(sql), expected, "{sql}");
            }
        }

        #[test]
        fn copy_data_ends_at_a_terminator_line_or_the_end() {
            use super::copy_data;
            assert_eq!(copy_data("1\tx\n\\.\nSELECT 1;\n", false), ("1\tx\n", 7));
            assert_eq!(copy_data("1\r\n\\.\r\nrest", false), ("1\r\n", 7));
            // Not a terminator: more on the line, or no newline after it.
            assert_eq!(copy_data("\\.x\n\\.", false), ("\\.x\n\\.", 6));
            assert_eq!(copy_data("a\nb", false), ("a\nb", 3));
            assert_eq!(copy_data("\\.\nafter", true), ("\\.\nafter", 8));
        }

        #[test]
        fn copy_data_is_taken_from_the_script_like_psql() {
            let mut items = split("COPY t FROM STDIN; SELECT\n1\n2\n\\.\n 'after';\n\\x\n");
            assert_eq!(
                items.next(),
                Some(Item::Statement("COPY t FROM STDIN;".into()))
            );
            assert_eq!(items.take_copy_data(false), "1\n2\n");
            // The rest of the COPY's line continues past the data; line numbers are the script's.
            assert_eq!(
                items.next(),
                Some(Item::Statement("SELECT\n\n\n\n 'after';".into()))
            );
            assert_eq!(
                items.next(),
                Some(Item::MetaCommand {
                    name: "\\x".into(),
                    line: 6
                })
            );
            // No terminator: the data runs to the end.
            let mut items = split("COPY t FROM STDIN;\n1\n");
            items.next();
            assert_eq!(items.take_copy_data(false), "1\n");
            assert_eq!(items.next(), None);
        }

        #[test]
        fn handles_crlf_line_ends() {
            assert_eq!(
                statements("SELECT 1;\r\nSELECT 2 -- c;\r\n;\r\n"),
                ["SELECT 1;", "SELECT 2 -- c;\r\n;"]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Args, Source, parse_args};

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn reads_stdin_when_no_sql_is_given() {
        assert_eq!(
            parse(&["host=h"]),
            Ok(Args {
                conninfo: "host=h".to_owned(),
                sources: vec![Source::File("-".to_owned())],
            })
        );
        assert_eq!(parse(&[]).map(|a| a.conninfo), Ok(String::new()));
    }

    #[test]
    fn keeps_commands_and_files_in_order() {
        let args = parse(&[
            "-c",
            "SELECT 1",
            "postgresql://u@h/db",
            "-f",
            "a.sql",
            "-cSELECT 2",
            "--file=b.sql",
        ]);
        assert_eq!(
            args,
            Ok(Args {
                conninfo: "postgresql://u@h/db".to_owned(),
                sources: vec![
                    Source::Command("SELECT 1".to_owned()),
                    Source::File("a.sql".to_owned()),
                    Source::Command("SELECT 2".to_owned()),
                    Source::File("b.sql".to_owned()),
                ],
            })
        );
    }

    #[test]
    fn accepts_the_psql_flags_it_emulates() {
        let args = parse(&[
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-XqAtc",
            "SELECT 1",
            "db",
        ]);
        assert_eq!(
            args.map(|a| a.sources),
            Ok(vec![Source::Command("SELECT 1".to_owned())])
        );
        assert_eq!(
            parse(&[
                "--no-psqlrc",
                "--quiet",
                "--no-align",
                "--tuples-only",
                "--set=ON_ERROR_STOP=on"
            ])
            .map(|a| a.sources),
            Ok(vec![Source::File("-".to_owned())])
        );
    }

    #[test]
    fn rejects_what_it_does_not_emulate() {
        assert!(parse(&["-x"]).is_err());
        assert!(parse(&["--html"]).is_err());
        assert!(parse(&["-v", "FOO=1"]).is_err());
        assert!(parse(&["-v", "ON_ERROR_STOP=0"]).is_err());
        assert!(parse(&["-c"]).is_err());
        assert!(parse(&["db", "user"]).is_err());
    }

    #[test]
    fn takes_everything_after_double_dash_as_positional() {
        assert_eq!(
            parse(&["--", "-weird"]).map(|a| a.conninfo),
            Ok("-weird".to_owned())
        );
    }
}

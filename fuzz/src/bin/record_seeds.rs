//! Records the seed corpora of `backend_stream`, `scram` and `values` from real sessions with a PostgreSQL
//! server (and writes the hand-written ones of `conninfo`, `pipeline` and `shared`):
//!
//! ```sh
//! record_seeds HOST:PORT DIR    # writes DIR/<target>/<name>
//! ```
//!
//! `scripts/record-seeds.sh` starts a server set up for it, builds this and runs it. Not a fuzz target: it
//! needs the `record` feature, so `cargo fuzz build` (which builds every binary with libFuzzer's
//! instrumentation) leaves it out, and it is built with `RUSTFLAGS="--cfg fuzzing"` only.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, out] = args.as_slice() else {
        eprintln!("usage: record_seeds HOST:PORT DIR");
        return ExitCode::from(2);
    };
    match wasi_pg_client::fuzzing::record_seeds(server, Path::new(out)) {
        Ok(written) => {
            for (target, names) in written {
                println!("{target}: {} seeds", names.len());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("record_seeds: {e}");
            ExitCode::FAILURE
        }
    }
}

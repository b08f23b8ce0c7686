//! Building targets for wasm32-wasip2 and running them under the real wasmtime CLI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::child::run_with_timeout;

const WASM_TARGET: &str = "wasm32-wasip2";
/// Deadline for one wasmtime run; a guest blocked on a dead socket must not hang CI.
const WASMTIME_TIMEOUT: Duration = Duration::from_secs(600);

/// Artifacts already built by this process (with the features they were built with), so each target is built
/// once per test binary and feature set. Holding the lock during a build also keeps our own builds from
/// queueing on cargo's lock.
static BUILT: Mutex<Vec<(WasmBuild, &'static [&'static str], PathBuf)>> = Mutex::new(Vec::new());

/// The features of the WASI 0.3 build (`--features wasip3`), for [`build_wasm_with`].
pub const WASIP3_FEATURES: &[&str] = &["wasip3"];

/// A cargo target of this crate to build for wasm32-wasip2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WasmBuild {
    /// `examples/<name>.rs`, built with `--example <name>`.
    Example(&'static str),
    /// `tests/<name>.rs`, built with `--test <name>` (the libtest harness binary).
    Test(&'static str),
}

impl WasmBuild {
    fn flag(self) -> &'static str {
        match self {
            WasmBuild::Example(_) => "--example",
            WasmBuild::Test(_) => "--test",
        }
    }

    fn name(self) -> &'static str {
        match self {
            WasmBuild::Example(name) | WasmBuild::Test(name) => name,
        }
    }

    /// The `"kind"` cargo reports for this target in its JSON messages.
    fn json_kind(self) -> &'static str {
        match self {
            WasmBuild::Example(_) => r#""kind":["example"]"#,
            WasmBuild::Test(_) => r#""kind":["test"]"#,
        }
    }
}

/// Builds `kind` with `cargo build --release --target wasm32-wasip2` and returns the path of
/// the `.wasm` artifact. Panics with the compiler output if the build fails.
///
/// Uses its own target dir, `<crate>/target/wasi`: the outer `cargo test` holds the lock on
/// `target/`, and a nested cargo sharing it would wait forever.
pub fn build_wasm(kind: WasmBuild) -> PathBuf {
    build_wasm_with(kind, &[])
}

/// [`build_wasm`] with cargo `features` on (such as [`WASIP3_FEATURES`]). A build with features is copied to
/// `target/wasi/<features>/`, because cargo writes an example's artifact to the same path whatever its
/// features.
pub fn build_wasm_with(kind: WasmBuild, features: &'static [&'static str]) -> PathBuf {
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, _, path)) = built.iter().find(|(k, f, _)| *k == kind && *f == features) {
        return path.clone();
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root)
        .args(["build", "--release", "--target", WASM_TARGET])
        .args([kind.flag(), kind.name()])
        .arg("--message-format=json-render-diagnostics");
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    cmd.env("CARGO_TARGET_DIR", root.join("target").join("wasi"));
    // C code in dependencies (ring) needs a wasm-capable C toolchain; respect an override.
    for (key, default) in [
        ("CC_wasm32_wasip2", "clang-19"),
        ("AR_wasm32_wasip2", "llvm-ar-19"),
    ] {
        if std::env::var_os(key).is_none() {
            cmd.env(key, default);
        }
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        panic!(
            "building {kind:?} for {WASM_TARGET} failed ({}):\n{stderr}\n{}",
            out.status,
            non_json_lines(&stdout)
        );
    }
    let path = artifact_path(&stdout, kind).unwrap_or_else(|| {
        panic!("cargo built {kind:?} but reported no executable for it:\n{stdout}\n{stderr}")
    });
    let path = if features.is_empty() {
        path
    } else {
        let dir = root.join("target").join("wasi").join(features.join("+"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let copy = dir.join(format!("{}.wasm", kind.name()));
        std::fs::copy(&path, &copy)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", path.display(), copy.display()));
        copy
    };
    built.push((kind, features, path.clone()));
    path
}

/// Runs `wasmtime run` on `wasm` with network access, plus `--env K=V` for each of `env`
/// and `--dir HOST::GUEST` for each of `dirs`, then `args` for the guest; feeds `stdin` if
/// given. Returns the output whatever the exit status; panics only if wasmtime is missing.
pub fn wasmtime(
    wasm: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    dirs: &[(&Path, &str)],
    stdin: Option<&[u8]>,
) -> Output {
    let mut cmd = Command::new(wasmtime_path());
    cmd.args(["run", "-S", "inherit-network", "-S", "allow-ip-name-lookup"]);
    for (key, value) in env {
        cmd.arg("--env").arg(format!("{key}={value}"));
    }
    for (host, guest) in dirs {
        cmd.arg("--dir").arg(format!("{}::{guest}", host.display()));
    }
    cmd.arg(wasm).args(args);
    run_with_timeout(cmd, stdin, WASMTIME_TIMEOUT)
}

/// wasmtime from PATH, else from `~/.cargo/bin` (where scripts/setup.sh installs it).
fn wasmtime_path() -> PathBuf {
    let in_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("wasmtime"));
    let in_cargo_home = std::env::var_os("HOME")
        .map(|home| Path::new(&home).join(".cargo").join("bin").join("wasmtime"));
    in_path
        .chain(in_cargo_home)
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "wasmtime not found in PATH or ~/.cargo/bin; run scripts/setup.sh \
                 (it installs wasmtime-cli 48.0.8)"
            )
        })
}

/// The `"executable"` of the compiler-artifact message for `kind`'s target.
fn artifact_path(json_lines: &str, kind: WasmBuild) -> Option<PathBuf> {
    let name = format!(r#""name":"{}""#, kind.name());
    json_lines
        .lines()
        .filter(|line| {
            line.contains(r#""reason":"compiler-artifact""#)
                && line.contains(kind.json_kind())
                && line.contains(&name)
        })
        .find_map(|line| json_string_field(line, "executable"))
        .map(PathBuf::from)
}

/// The value of the string field `"key":"..."` in one line of JSON, unescaped; `None` if
/// absent or not a string (cargo writes `null` for targets that are not executables).
fn json_string_field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(r#""{key}":""#))? + key.len() + 4;
    let mut value = String::new();
    let mut chars = line[start..].chars();
    loop {
        match chars.next()? {
            '"' => return Some(value),
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'r' => value.push('\r'),
                'b' => value.push('\u{8}'),
                'f' => value.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                // `\"`, `\\` and `\/` stand for themselves.
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
}

/// What cargo printed on stdout that is not a JSON message (build-script noise, mostly).
fn non_json_lines(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|line| !line.starts_with('{'))
        .collect::<Vec<_>>()
        .join("\n")
}

#!/usr/bin/env bash
# Installs what the tests need, skipping whatever is already there:
#   PostgreSQL (server + psql), clang-19/llvm-19 (C code built for wasm32-wasip2), a plain clang (what the
#   README tells dependents to install), the MSRV toolchain, pgbouncer,
#   the wasm32-wasip2 and wasm32-unknown-unknown Rust targets, wasmtime-cli 48.0.8, cargo-fuzz, wasm-tools,
#   and pglite-server (npm).
# Safe to run repeatedly; a second run only checks.
set -euo pipefail

WASMTIME_VERSION=48.0.8
APT_PACKAGES=(postgresql clang-19 llvm-19 pgbouncer python3)
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"

log() { printf 'setup: %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

# --- make ~/.cargo/bin visible, here and (on GitHub Actions) to later steps -----------------
case ":$PATH:" in
    *":$CARGO_BIN:"*) ;;
    *) export PATH="$CARGO_BIN:$PATH" ;;
esac
if [ -n "${GITHUB_PATH:-}" ]; then
    echo "$CARGO_BIN" >>"$GITHUB_PATH"
fi

# --- system packages --------------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# A package can be "installed" while its programs are not where we look (e.g. removed by hand).
command -v psql >/dev/null || missing+=(postgresql)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v clang-19 >/dev/null || missing+=(clang-19)
command -v llvm-ar-19 >/dev/null || missing+=(llvm-19)
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
command -v python3 >/dev/null || missing+=(python3)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing apt packages (missing: $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' '))"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${APT_PACKAGES[@]}"
else
    log "apt packages present: ${APT_PACKAGES[*]}"
fi

# --- a plain `clang` on PATH: the set-up the README ("Use it in your app") gives dependents ------
# In an app outside this repository no CC_wasm32_wasip2 is set, and cc-rs compiles ring's C code for
# wasm32-wasip2 with `clang` from PATH (then llvm-ar from clang's program dirs, else `ar`). scripts/test.sh
# builds templates/wasm-app that way, so this installs it exactly as the README says: the apt package `clang`
# (on Debian 12 it is clang 14, which builds ring for wasm32-wasip2).
if command -v clang >/dev/null; then
    log "clang present ($(clang --version | head -n 1))"
else
    log "installing clang (apt package clang)"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q clang
    command -v clang >/dev/null || {
        log "clang still not on PATH after apt-get install clang" >&2
        exit 1
    }
fi

# --- Rust target ------------------------------------------------------------------------------
if ! command -v cargo >/dev/null; then
    log "cargo not found; install Rust (rustup) first" >&2
    exit 1
fi
# wasm32-wasip2 for the client; wasm32-unknown-unknown for the sans-IO core alone.
for target in wasm32-wasip2 wasm32-unknown-unknown; do
    if [ -d "$(rustc --print sysroot)/lib/rustlib/$target" ]; then
        log "rust target $target present"
    elif command -v rustup >/dev/null; then
        log "adding rust target $target"
        rustup target add "$target"
    else
        log "rust target $target missing and rustup not found to add it" >&2
        exit 1
    fi
done

# --- the MSRV toolchain (Cargo.toml's rust-version), for the MSRV check of scripts/test.sh -------
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MSRV="$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' "$REPO_DIR/Cargo.toml")"
[ -n "$MSRV" ] || {
    log "no rust-version in Cargo.toml" >&2
    exit 1
}
# "1.95" means 1.95.0 must build it.
MSRV_TOOLCHAIN="$MSRV"
[[ "$MSRV" =~ ^[0-9]+\.[0-9]+$ ]] && MSRV_TOOLCHAIN="$MSRV.0"
if ! command -v rustup >/dev/null; then
    if [ "$(rustc --version | awk '{print $2}')" = "$MSRV_TOOLCHAIN" ]; then
        log "MSRV $MSRV_TOOLCHAIN is the rustc on PATH (no rustup)"
    else
        log "no rustup to install the MSRV toolchain $MSRV_TOOLCHAIN, and rustc on PATH is another version" >&2
        exit 1
    fi
elif rustup toolchain list | grep -q "^$MSRV_TOOLCHAIN-" &&
    rustup target list --installed --toolchain "$MSRV_TOOLCHAIN" | grep -qx wasm32-wasip2; then
    log "MSRV toolchain $MSRV_TOOLCHAIN present (with wasm32-wasip2)"
else
    log "installing the MSRV toolchain $MSRV_TOOLCHAIN with wasm32-wasip2"
    rustup toolchain install "$MSRV_TOOLCHAIN" --profile minimal --target wasm32-wasip2
fi

# --- wasmtime ---------------------------------------------------------------------------------
wasmtime_ok() {
    local bin
    for bin in "$(command -v wasmtime || true)" "$CARGO_BIN/wasmtime"; do
        # `wasmtime --version` prints "wasmtime 48.0.8 (<commit> <date>)".
        if [ -n "$bin" ] && [ -x "$bin" ] &&
            [ "$("$bin" --version 2>/dev/null | awk '{print $2}')" = "$WASMTIME_VERSION" ]; then
            return 0
        fi
    done
    return 1
}

install_running() { pgrep -f "cargo install --locked wasmtime-cli" >/dev/null; }

if ! wasmtime_ok && install_running; then
    # Another install (a parallel setup run) is building it; a second one would only compete.
    log "waiting for the wasmtime-cli install already running"
    waited=0
    while install_running; do
        sleep 10
        waited=$((waited + 10))
        if [ $((waited % 120)) -eq 0 ]; then
            log "still waiting for the wasmtime-cli install (${waited}s)"
        fi
    done
fi
if wasmtime_ok; then
    log "wasmtime $WASMTIME_VERSION present"
else
    log "installing wasmtime-cli $WASMTIME_VERSION (builds from source; takes a while)"
    cargo install --locked "wasmtime-cli@$WASMTIME_VERSION"
    wasmtime_ok || {
        log "wasmtime $WASMTIME_VERSION still not found after install" >&2
        exit 1
    }
fi

# --- cargo-fuzz (the fuzz smoke of scripts/test.sh) -------------------------------------------
# It builds with the stable toolchain; the fuzz targets themselves need nightly or RUSTC_BOOTSTRAP=1.
if cargo fuzz --version >/dev/null 2>&1; then
    log "cargo-fuzz present ($(cargo fuzz --version))"
else
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
    cargo fuzz --version >/dev/null 2>&1 || {
        log "cargo-fuzz still not found after install" >&2
        exit 1
    }
fi

# --- wasm-tools (scripts/check-imports.sh lists the imports of the wasm32-wasip2 components) ---
WASM_TOOLS_VERSION=1.263.0
if [ "$(wasm-tools --version 2>/dev/null | awk '{print $2}')" = "$WASM_TOOLS_VERSION" ]; then
    log "wasm-tools $WASM_TOOLS_VERSION present"
else
    log "installing wasm-tools $WASM_TOOLS_VERSION"
    cargo install --locked "wasm-tools@$WASM_TOOLS_VERSION"
    [ "$(wasm-tools --version 2>/dev/null | awk '{print $2}')" = "$WASM_TOOLS_VERSION" ] || {
        log "wasm-tools $WASM_TOOLS_VERSION still not found after install" >&2
        exit 1
    }
fi

# --- PGlite for tests/pglite.rs: pglite-server from npm, pinned in tools/pglite/package-lock.json ---
PGLITE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tools/pglite"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    log "installing Node.js and npm"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
fi
# npm rewrites node_modules/.package-lock.json on every install: newer than the lock means installed from it.
if [ -f "$PGLITE_DIR/node_modules/@electric-sql/pglite-socket/dist/scripts/server.js" ] &&
    [ "$PGLITE_DIR/node_modules/.package-lock.json" -nt "$PGLITE_DIR/package-lock.json" ]; then
    log "pglite-server present in tools/pglite"
else
    log "installing pglite-server in tools/pglite (npm ci)"
    (cd "$PGLITE_DIR" && npm ci --omit=peer --no-audit --no-fund)
fi

log "ready"

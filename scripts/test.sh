#!/usr/bin/env bash
# The full test run, as CI does it: native tests (unit, transcript, live against a real
# PostgreSQL; the live tests also build the wasm32-wasip2 scenario runner and run it under
# wasmtime), every example built for wasm32-wasip2, then the doc tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

current_step=""
step() {
    current_step="$*"
    printf '\n==> %s\n' "$current_step"
}
report_failure() {
    local status=$?
    if [ "$status" -ne 0 ]; then
        printf '\n==> FAILED: %s (exit %s)\n' "$current_step" "$status" >&2
    fi
}
trap report_failure EXIT

step "setup (scripts/setup.sh)"
bash scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# C code in dependencies (ring) needs a wasm-capable C toolchain.
export CC_wasm32_wasip2="${CC_wasm32_wasip2:-clang-19}"
export AR_wasm32_wasip2="${AR_wasm32_wasip2:-llvm-ar-19}"

step "native tests (cargo test --all-targets)"
test_log="$(mktemp)"
cargo test --all-targets 2>&1 | tee "$test_log"
scenario_totals="$(sed -n '/^scenario totals:/,/wasm32-wasip2:/p' "$test_log")"
rm -f "$test_log"

step "wasm32-wasip2 examples (cargo build --release --target wasm32-wasip2 --examples)"
CARGO_TARGET_DIR=target/wasi cargo build --release --target wasm32-wasip2 --examples

step "fuzz targets build (cargo build in fuzz/ with --cfg fuzzing)"
RUSTFLAGS="--cfg fuzzing" cargo build --manifest-path fuzz/Cargo.toml

step "doc tests (cargo test --doc)"
cargo test --doc

printf '\n==> live %s\n' "$scenario_totals"
printf '\n==> all tests passed\n'

#!/usr/bin/env bash
# Runs examples/quickstart as a wasm32-wasip2 component under wasmtime.
#
# With DATABASE_URL set, it talks to that server. Otherwise it starts a throwaway
# PostgreSQL cluster (trust auth on 127.0.0.1, free port, temp dir), removed again on exit.
# Extra arguments are passed on to the example.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'demo: %s\n' "$*"; }

bash scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export CC_wasm32_wasip2="${CC_wasm32_wasip2:-clang-19}"
export AR_wasm32_wasip2="${AR_wasm32_wasip2:-llvm-ar-19}"

if [ -z "${DATABASE_URL:-}" ]; then
    # shellcheck source=scripts/throwaway-cluster.sh
    source scripts/throwaway-cluster.sh
    cluster_init demo
    log "starting a throwaway cluster in $cluster_dir on 127.0.0.1:$cluster_port"
    cluster_start
    DATABASE_URL="postgresql://postgres@127.0.0.1:$cluster_port/postgres"
fi

log "building examples/quickstart for wasm32-wasip2"
CARGO_TARGET_DIR=target/wasi cargo build --release --target wasm32-wasip2 --example quickstart

log "running it under wasmtime"
wasmtime run -S inherit-network -S allow-ip-name-lookup --env "DATABASE_URL=$DATABASE_URL" \
    target/wasi/wasm32-wasip2/release/examples/quickstart.wasm "$@"

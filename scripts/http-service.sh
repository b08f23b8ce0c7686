#!/usr/bin/env bash
# Serves examples/http-service (a wasi:http component) with `wasmtime serve` on a free loopback port,
# prints curl commands to try, and waits for Ctrl-C.
#
# With DATABASE_URL set, the component talks to that server. Otherwise a throwaway PostgreSQL cluster
# (trust auth on 127.0.0.1, free port, temp dir) is started and removed again on exit, with wasmtime.
# Extra arguments go to `wasmtime serve`, e.g. `--max-instance-reuse-count 100` to keep one instance
# (and its connection) for many requests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'http-service: %s\n' "$*"; }

bash scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export CC_wasm32_wasip2="${CC_wasm32_wasip2:-clang-19}"
export AR_wasm32_wasip2="${AR_wasm32_wasip2:-llvm-ar-19}"

# shellcheck source=scripts/throwaway-cluster.sh
source scripts/throwaway-cluster.sh

cleanup() {
    if [ -n "${serve_pid:-}" ]; then
        kill "$serve_pid" 2>/dev/null || true
        wait "$serve_pid" 2>/dev/null || true
    fi
    cluster_cleanup
}
# Make Ctrl-C and kill run the EXIT trap too.
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "${DATABASE_URL:-}" ]; then
    cluster_init http-service
    log "starting a throwaway cluster in $cluster_dir on 127.0.0.1:$cluster_port"
    cluster_start
    DATABASE_URL="postgresql://postgres@127.0.0.1:$cluster_port/postgres"
fi
# Set after cluster_init, which sets an EXIT trap of its own: ours also stops wasmtime.
trap cleanup EXIT

log "building examples/http-service for wasm32-wasip2"
CARGO_TARGET_DIR=target/wasi cargo build --release --target wasm32-wasip2 --example http-service
wasm=target/wasi/wasm32-wasip2/release/examples/http-service.wasm

addr="127.0.0.1:$(cluster_free_port)"
log "serving it on http://$addr/ (wasmtime serve)"
wasmtime serve -S cli -S inherit-network -S allow-ip-name-lookup --addr "$addr" \
    --env "DATABASE_URL=$DATABASE_URL" "$@" "$wasm" &
serve_pid=$!

# Ready once it accepts connections; wasmtime compiles the component first.
for _ in $(seq 600); do
    if (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null; then
        break
    fi
    if ! kill -0 "$serve_pid" 2>/dev/null; then
        log "wasmtime serve exited before it answered" >&2
        exit 1
    fi
    sleep 0.1
done

cat <<EXAMPLES

Try (each request is one line of wasmtime's log below):

  curl -i http://$addr/items
  curl -i http://$addr/items -H 'content-type: application/json' -d '{"name": "apple"}'
  curl -i http://$addr/items/1
  curl -i http://$addr/items/999           # 404
  curl -i http://$addr/items -d '{"nom": 1}' -H 'content-type: application/json'   # 400
  curl -i -X DELETE http://$addr/items/1   # 405

Ctrl-C stops wasmtime$([ -n "$cluster_started" ] && echo " and the cluster").

EXAMPLES
wait "$serve_pid"

#!/usr/bin/env bash
# Serves examples/http-shared (a wasi:http@0.3 handler, built with --features wasip3) with `wasmtime serve` on a
# free loopback port against a throwaway cluster, sends waves of concurrent requests, and reports what the host
# did with instances: how many served the requests, how many requests ran at once in one instance, and how
# many PostgreSQL connections they used. Fails if any request fails, or if a wave of concurrent /shared
# requests in one instance used more than one connection.
#
#   scripts/http-shared.sh [REQUESTS_PER_WAVE] [WAVES]      defaults: 8 requests, 3 waves
#
# Extra `wasmtime serve` options come from HTTP_SHARED_SERVE_ARGS (e.g. "--max-instance-concurrent-reuse-count 4").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

per_wave="${1:-8}"
waves="${2:-3}"
log() { printf 'http-shared: %s\n' "$*"; }

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export CC_wasm32_wasip2="${CC_wasm32_wasip2:-clang-19}"
export AR_wasm32_wasip2="${AR_wasm32_wasip2:-llvm-ar-19}"

# shellcheck source=scripts/throwaway-cluster.sh
source scripts/throwaway-cluster.sh
work="$(mktemp -d /tmp/wasi-pg-http-shared.XXXXXX)"
cleanup() {
    if [ -n "${serve_pid:-}" ]; then
        kill "$serve_pid" 2>/dev/null || true
        wait "$serve_pid" 2>/dev/null || true
    fi
    cluster_cleanup
    rm -rf -- "$work"
}
trap 'exit 130' INT
trap 'exit 143' TERM

cluster_init http-shared
trap cleanup EXIT
cluster_start
database_url="postgresql://postgres@127.0.0.1:$cluster_port/postgres"

log "building examples/http-shared for WASI 0.3 (wasm32-wasip2, --features wasip3)"
CARGO_TARGET_DIR=target/wasi cargo build --quiet --release --target wasm32-wasip2 --features wasip3 \
    --example http-shared
wasm="$work/http-shared.wasm"
# Copied: a WASI 0.2 build of the examples writes the same path.
cp target/wasi/wasm32-wasip2/release/examples/http-shared.wasm "$wasm"

addr="127.0.0.1:$(cluster_free_port)"
# shellcheck disable=SC2086
wasmtime serve -S cli -S inherit-network -S allow-ip-name-lookup --addr "$addr" \
    --env "DATABASE_URL=$database_url" ${HTTP_SHARED_SERVE_ARGS:-} "$wasm" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 600); do
    if (exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}") 2>/dev/null; then
        break
    fi
    if ! kill -0 "$serve_pid" 2>/dev/null; then
        log "wasmtime serve exited before it answered:" >&2
        cat "$work/serve.log" >&2
        exit 1
    fi
    sleep 0.1
done

failed=0
# One wave: per_wave concurrent requests to $1 that each sleep 300 ms in PostgreSQL.
wave() {
    local route="$1" n="$2" i curls=()
    for i in $(seq "$per_wave"); do
        curl -s -o "$work/$route-$n-$i.json" -w '%{http_code}\n' "http://$addr/$route?ms=300" \
            >"$work/$route-$n-$i.status" &
        curls+=("$!")
    done
    wait "${curls[@]}" || true
}
field() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p" "$2"; }

for route in shared pool; do
    for n in $(seq "$waves"); do
        started=$(date +%s%N)
        wave "$route" "$n"
        elapsed_ms=$(( ($(date +%s%N) - started) / 1000000 ))
        instances="" pids="" max_in_flight=0 ok=0
        for i in $(seq "$per_wave"); do
            body="$work/$route-$n-$i.json"
            if [ "$(cat "$work/$route-$n-$i.status")" != 200 ]; then
                log "FAIL /$route wave $n request $i: $(cat "$work/$route-$n-$i.status") $(cat "$body")" >&2
                failed=1
                continue
            fi
            ok=$((ok + 1))
            instances+="$(field instance "$body")"$'\n'
            pids+="$(field backend_pid "$body")"$'\n'
            in_flight="$(field in_flight "$body")"
            [ "$in_flight" -gt "$max_in_flight" ] && max_in_flight="$in_flight"
        done
        n_instances=$(sort -u <<<"$instances" | grep -c . || true)
        n_pids=$(sort -u <<<"$pids" | grep -c . || true)
        log "/$route wave $n: $ok/$per_wave ok in ${elapsed_ms} ms; instances $n_instances; most requests at once in one instance $max_in_flight; backend connections $n_pids"
        if [ "$route" = shared ] && [ "$n_pids" -gt "$n_instances" ]; then
            log "FAIL /shared wave $n: $n_pids connections for $n_instances instances (one shared client each)" >&2
            failed=1
        fi
    done
done
if [ "$failed" -ne 0 ]; then
    log "wasmtime serve log:" >&2
    grep -v "^ *[0-9]*: \\|^ *at " "$work/serve.log" | head -n 40 >&2
    exit 1
fi
log "ok"

#!/usr/bin/env bash
# What one round trip costs at the guest/host boundary, on WASI 0.2 and 0.3: runs the benchmark client's W1
# (`SELECT 1` round trips, see bench/src/workload.rs) under wasmtime with its trace log on, for N and 2N round
# trips against a throwaway cluster, and prints per round trip the difference of each kind of traced event:
#
# - WASI 0.2: one `call` event per WASI import call (wit-bindgen's `import{...}` spans of wasmtime-wasi);
# - WASI 0.3: wasmtime's component-model runtime events: `guest_read`/`guest_write` (one per stream.read or
#   stream.write), `waitable ... join set` (one per waitable.join), `received callback code` (the task going
#   back to the host to wait), `guest cancel read`, `waitable-set.poll`, and the work the host does to deliver
#   each event.
#
#   scripts/host-calls.sh [N]        default N = 100; needs target/bench/bench-client-p{2,3}.wasm (bench.sh)
#
# Trace lines are normalised (numbers, handles and arguments replaced by N) before counting; kinds under 0.05
# per round trip are left out.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
n="${1:-100}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
bench_dir="$PWD/target/bench"
for build in p2 p3; do
    if [ ! -f "$bench_dir/bench-client-$build.wasm" ]; then
        echo "host-calls: $bench_dir/bench-client-$build.wasm is missing: run scripts/bench.sh --quick first" >&2
        exit 2
    fi
done

# shellcheck source=scripts/throwaway-cluster.sh
source scripts/throwaway-cluster.sh
cluster_init host-calls
cluster_start
work="$cluster_dir"

# The kinds of event in the trace of `count` round trips, one `kind<TAB>count` line each, sorted.
trace_kinds() {
    local wasm="$1" contender="$2" count="$3"
    WASMTIME_LOG=trace NO_COLOR=1 wasmtime run -S inherit-network -S allow-ip-name-lookup "$wasm" \
        run "$contender" W1 "$count" --host 127.0.0.1 --port "$cluster_port" --user postgres \
        --dbname postgres 2>&1 >/dev/null |
        sed 's/\x1b\[[0-9;]*m//g' |
        grep -E 'wasmtime::runtime::component::concurrent|wasmtime_wasi|wit-bindgen import' |
        sed -E 's/^[0-9T:.Z-]+ +//; s/ (call|return) .*/ \1/; s/Resource \{[^}]*\}//g; s/0x[0-9a-f]+/X/g;
                s/[0-9]+/N/g' |
        sort | uniq -c | awk '{c = $1; $1 = ""; print substr($0, 2) "\t" c}' | sort
}

for build in p2 p3; do
    wasm="$bench_dir/bench-client-$build.wasm"
    contender=ours-wasi
    [ "$build" = p3 ] && contender=ours-wasip3
    # A first run compiles the component into wasmtime's cache, so its compiler's trace is not counted.
    wasmtime run -S inherit-network "$wasm" run "$contender" W1 1 --host 127.0.0.1 --port "$cluster_port" \
        --user postgres --dbname postgres >/dev/null
    trace_kinds "$wasm" "$contender" "$n" >"$work/$build-1"
    trace_kinds "$wasm" "$contender" "$((2 * n))" >"$work/$build-2"
    echo "WASI ${build/p/0.} ($contender): traced events per round trip ($((2 * n)) round trips minus $n)"
    join -t $'\t' -a 2 -e 0 -o 0,1.2,2.2 "$work/$build-1" "$work/$build-2" |
        awk -F '\t' -v n="$n" '{ d = ($3 - $2) / n; if (d >= 0.05) printf "  %6.2f  %s\n", d, substr($1, 1, 140) }' |
        sort -rn
done

#!/usr/bin/env bash
# The performance benchmark of issue 7 (see BENCHMARKS.md).
#
# Builds the benchmark crate in bench/ (release, natively and for wasm32-wasip2), starts a throwaway
# PostgreSQL cluster on loopback (TLS on, with a CA and server certificate made here, for W6; wal_level =
# logical and replication connections for W8's slots, each made before its changes; a SCRAM role for W9's
# connections), runs every
# workload for every contender in its own process, interleaved, and prints
#
#   bench <workload> <contender> ops_per_s=<n> client_cpu_s=<n> peak_rss_mb=<n>
#   ratio <workload> <a>/<b>=<x>
#
# on stdout (progress on stderr). Options are passed to bench-driver:
#   --quick            smaller workloads, one round (seconds once built)
#   --rounds N         rounds of the full run (default 5; the median is reported)
#   --only W1,W3       some workloads only;  --contenders ours,pgbench  some contenders only
#
# Writes nothing outside target/ (build output in target/bench) and one temp dir, removed on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'bench: %s\n' "$*" >&2; }

bash scripts/setup.sh >&2
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export CC_wasm32_wasip2="${CC_wasm32_wasip2:-clang-19}"
export AR_wasm32_wasip2="${AR_wasm32_wasip2:-llvm-ar-19}"
export CARGO_TARGET_DIR="$PWD/target/bench"

log "building bench/ (release, native, and wasm32-wasip2 for WASI 0.2 and 0.3)"
cargo build --release --manifest-path bench/Cargo.toml --bins >&2
# The two wasm builds write the same path: each is copied aside as soon as it is built.
wasm="$CARGO_TARGET_DIR/wasm32-wasip2/release/bench-client.wasm"
cargo build --release --manifest-path bench/Cargo.toml --target wasm32-wasip2 --bin bench-client >&2
cp "$wasm" "$CARGO_TARGET_DIR/bench-client-p2.wasm"
cargo build --release --manifest-path bench/Cargo.toml --target wasm32-wasip2 --features wasip3 \
    --bin bench-client >&2
cp "$wasm" "$CARGO_TARGET_DIR/bench-client-p3.wasm"
if cmp -s "$CARGO_TARGET_DIR/bench-client-p2.wasm" "$CARGO_TARGET_DIR/bench-client-p3.wasm"; then
    log "the WASI 0.2 and 0.3 builds of bench-client are the same file" >&2
    exit 1
fi
# Compiled ahead of time, so no run pays (or caches outside target/) the compilation of the component.
for build in p2 p3; do
    component="$CARGO_TARGET_DIR/bench-client-$build.wasm"
    precompiled="$CARGO_TARGET_DIR/bench-client-$build.cwasm"
    if [ ! -f "$precompiled" ] || ! cmp -s "$component" "$precompiled.source"; then
        wasmtime compile -C cache=n -o "$precompiled" "$component"
        cp "$component" "$precompiled.source"
    fi
done

# shellcheck source=scripts/throwaway-cluster.sh
source scripts/throwaway-cluster.sh
cluster_init bench
work="$cluster_dir"
mkdir "$work/certs" "$work/scripts"

# A CA and a server certificate for 127.0.0.1 signed by it, so every client verifies the server fully
# (verify-full) in W6, as a real deployment would.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=bench CA" \
    -keyout "$work/ca.key" -out "$work/certs/ca.crt" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n' >"$work/server.ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/certs/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
    -days 2 -extfile "$work/server.ext" -out "$work/server.crt" 2>/dev/null
chmod 600 "$work/server.key"
if [ "${#cluster_as_owner[@]}" -gt 0 ]; then
    chown -R postgres:postgres "$work"
fi

log "starting PostgreSQL ($cluster_bindir) in $work on 127.0.0.1:$cluster_port"
# The same settings for every contender. Durability is off because the client is measured, not the disk;
# autovacuum is off so it cannot wake up in the middle of one contender's run.
cat >>"$cluster_data/postgresql.conf" <<CONF
synchronous_commit = off
full_page_writes = off
autovacuum = off
max_wal_size = '8GB'
checkpoint_timeout = '1h'
ssl = on
ssl_cert_file = '$work/server.crt'
ssl_key_file = '$work/server.key'
wal_level = logical
max_replication_slots = 64
max_wal_senders = 10
CONF
# W9's role logs in with SCRAM-SHA-256 (its password is set by bench-client setup); everyone else trusted;
# W8's replication connections (ours and pg_recvlogical).
cat >"$cluster_data/pg_hba.conf" <<HBA
local all all trust
host all bench_scram 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
HBA
cluster_start

log "$(nproc) CPUs, $(awk '/model name/ {$1=$2=$3=""; print; exit}' /proc/cpuinfo | sed 's/^ *//'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$CARGO_TARGET_DIR/release/bench-driver" \
    --client "$CARGO_TARGET_DIR/release/bench-client" \
    --wasmtime "$(command -v wasmtime)" \
    --cwasm "$CARGO_TARGET_DIR/bench-client-p2.cwasm" \
    --cwasm-p3 "$CARGO_TARGET_DIR/bench-client-p3.cwasm" \
    --pgbench "$cluster_bindir/pgbench" \
    --pg-recvlogical "$cluster_bindir/pg_recvlogical" \
    --work-dir "$work/scripts" \
    --host 127.0.0.1 --port "$cluster_port" --user postgres --dbname postgres \
    --ca "$work/certs/ca.crt" \
    "$@"

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

# A TCP port nobody listens on: python3 asks the kernel; else probe random ports with bash.
free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        return
    fi
    local port
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 40000))
        # A refused connection means the port is free.
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    log "no free port found" >&2
    return 1
}

start_cluster() {
    local bindir
    bindir="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    # initdb refuses to run as root: run the cluster as the postgres user then.
    as_owner=()
    if [ "$(id -u)" -eq 0 ]; then
        as_owner=(runuser -u postgres --)
    fi

    cluster_dir="$(mktemp -d /tmp/wasi-pg-http-service.XXXXXX)"
    mkdir "$cluster_dir/sock"
    if [ "${#as_owner[@]}" -gt 0 ]; then
        chown -R postgres:postgres "$cluster_dir"
    fi

    local port
    port="$(free_port)"
    log "starting a throwaway cluster in $cluster_dir on 127.0.0.1:$port"
    (cd "$cluster_dir" && "${as_owner[@]}" "$bindir/initdb" -A trust -U postgres --no-sync \
        -E UTF8 --locale=C -D "$cluster_dir/data" >"$cluster_dir/initdb.log" 2>&1) || {
        cat "$cluster_dir/initdb.log" >&2
        return 1
    }
    cat >>"$cluster_dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$cluster_dir/sock'
fsync = off
CONF
    printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' >"$cluster_dir/data/pg_hba.conf"
    # Set first: if pg_ctl gives up waiting, the server may still be starting.
    cluster_bindir="$bindir"
    (cd "$cluster_dir" && "${as_owner[@]}" "$bindir/pg_ctl" -w -t 60 -D "$cluster_dir/data" \
        -l "$cluster_dir/server.log" start >/dev/null) || {
        tail -n 40 "$cluster_dir/server.log" >&2
        return 1
    }
    DATABASE_URL="postgresql://postgres@127.0.0.1:$port/postgres"
}

cleanup() {
    if [ -n "${serve_pid:-}" ]; then
        kill "$serve_pid" 2>/dev/null || true
        wait "$serve_pid" 2>/dev/null || true
    fi
    if [ -n "${cluster_bindir:-}" ]; then
        (cd / && "${as_owner[@]}" "$cluster_bindir/pg_ctl" stop -m immediate -w \
            -D "$cluster_dir/data" >/dev/null 2>&1) || true
    fi
    if [ -n "${cluster_dir:-}" ]; then
        rm -rf -- "$cluster_dir"
    fi
}
trap cleanup EXIT
# Make Ctrl-C and kill run the EXIT trap too.
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "${DATABASE_URL:-}" ]; then
    start_cluster
fi

log "building examples/http-service for wasm32-wasip2"
CARGO_TARGET_DIR=target/wasi cargo build --release --target wasm32-wasip2 --example http-service
wasm=target/wasi/wasm32-wasip2/release/examples/http-service.wasm

addr="127.0.0.1:$(free_port)"
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

Ctrl-C stops wasmtime$([ -n "${cluster_bindir:-}" ] && echo " and the cluster").

EXAMPLES
wait "$serve_pid"

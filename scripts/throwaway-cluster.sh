# Sourced, not run: a throwaway PostgreSQL cluster on 127.0.0.1 at a free port, in a temp dir that is stopped
# and removed when the shell exits.
#
#   source scripts/throwaway-cluster.sh
#   cluster_init NAME        # initdb in /tmp/wasi-pg-NAME.XXXXXX; sets cluster_dir, cluster_data, cluster_port
#                            # and an EXIT trap (a caller with a trap of its own calls cluster_cleanup from it)
#   ...                      # append to "$cluster_data/postgresql.conf", write "$cluster_data/pg_hba.conf"
#   cluster_start            # starts it; on failure prints the end of the server log and returns 1
#   cluster_psql [ARG]...    # psql as postgres over the Unix socket, stopping at the first error
#
# PostgreSQL 15 from /usr/lib/postgresql/15/bin, else the newest installed. initdb refuses to run as root, so
# as root the cluster runs as the postgres user. pg_hba.conf starts as trust for local and 127.0.0.1 only.

cluster_bindir=/usr/lib/postgresql/15/bin
if [ ! -x "$cluster_bindir/initdb" ]; then
    cluster_bindir="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
fi
cluster_as_owner=()
if [ "$(id -u)" -eq 0 ]; then
    cluster_as_owner=(runuser -u postgres --)
fi
cluster_dir=""
cluster_data=""
cluster_port=""
cluster_started=""

# A TCP port nobody listens on on 127.0.0.1.
cluster_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cluster_init() {
    cluster_dir="$(mktemp -d "/tmp/wasi-pg-$1.XXXXXX")"
    cluster_data="$cluster_dir/data"
    trap cluster_cleanup EXIT
    mkdir "$cluster_dir/sock"
    if [ "${#cluster_as_owner[@]}" -gt 0 ]; then
        chown -R postgres:postgres "$cluster_dir"
    fi
    cluster_port="$(cluster_free_port)"
    (cd "$cluster_dir" && "${cluster_as_owner[@]}" "$cluster_bindir/initdb" -A trust -U postgres --no-sync \
        -E UTF8 --locale=C -D "$cluster_data" >"$cluster_dir/initdb.log" 2>&1) || {
        cat "$cluster_dir/initdb.log" >&2
        return 1
    }
    cat >>"$cluster_data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $cluster_port
unix_socket_directories = '$cluster_dir/sock'
fsync = off
CONF
    printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' >"$cluster_data/pg_hba.conf"
}

cluster_start() {
    # Set first: if pg_ctl gives up waiting, the server may still be starting, and cleanup must stop it.
    cluster_started=1
    (cd "$cluster_dir" && "${cluster_as_owner[@]}" "$cluster_bindir/pg_ctl" -w -t 60 -D "$cluster_data" \
        -l "$cluster_dir/server.log" start >/dev/null) || {
        tail -n 40 "$cluster_dir/server.log" >&2
        return 1
    }
}

cluster_psql() {
    "$cluster_bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$cluster_dir/sock" -p "$cluster_port" -U postgres \
        -d postgres "$@"
}

cluster_cleanup() {
    if [ -n "$cluster_started" ]; then
        (cd / && "${cluster_as_owner[@]}" "$cluster_bindir/pg_ctl" stop -m immediate -w -D "$cluster_data" \
            >/dev/null 2>&1) || true
        cluster_started=""
    fi
    if [ -n "$cluster_dir" ]; then
        rm -rf -- "$cluster_dir"
        cluster_dir=""
    fi
}

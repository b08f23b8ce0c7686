#!/usr/bin/env bash
# Builds templates/wasm-app the way a new user's app is built and runs it over TLS with sslmode=verify-full.
#
#   bash scripts/template-app.sh PACKAGE.crate
#
# PACKAGE.crate is what `cargo package` made (target/package/wasi-pg-client-<version>.crate): the app depends on
# the crate as crates.io would serve it, unpacked next to the app in a temp dir outside this repository. The
# app is built for wasm32-wasip2 and natively in a clean environment (env -i: HOME, a PATH of cargo's bin and
# the system directories, CARGO_HOME/RUSTUP_HOME if set; no CC_*/AR_* variables, no CARGO_TARGET_DIR) where no
# .cargo/config.toml of this repository applies. ring's C code then needs what the README tells users to
# install: a plain `clang` on PATH.
#
# It runs against a throwaway cluster that accepts only hostssl + scram-sha-256, with a CA and a server
# certificate made here with openssl: under wasmtime and natively with verify-full and channel_binding=require,
# and under wasmtime once more with an unrelated CA, which must fail. The temp dir and cluster are removed on
# exit. Build times and sizes are printed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'template-app: %s\n' "$*"; }
fail() {
    printf 'template-app: %s\n' "$*" >&2
    exit 1
}

[ "$#" -eq 1 ] && [ -f "$1" ] || fail "usage: $0 PACKAGE.crate (made by cargo package)"
crate_file="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
command -v clang >/dev/null || fail "no clang on PATH: scripts/setup.sh installs it (apt package clang)"
command -v openssl >/dev/null || fail "no openssl on PATH (makes the test certificates)"
command -v wasmtime >/dev/null || fail "no wasmtime on PATH: scripts/setup.sh installs it"

# shellcheck source=scripts/throwaway-cluster.sh
source scripts/throwaway-cluster.sh
work="$(mktemp -d /tmp/wasi-pg-template.XXXXXX)"
cleanup() {
    cluster_cleanup
    rm -rf -- "$work"
}
trap cleanup EXIT

# --- the app and the packaged crate, outside the repository -----------------------------------
tar -xzf "$crate_file" -C "$work"
package_dir="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'wasi-pg-client-*')"
[ -n "$package_dir" ] || fail "$crate_file holds no wasi-pg-client-* directory"
cp -r templates/wasm-app "$work/app"
rm -rf "$work/app/target" "$work/app/Cargo.lock"
# The template's dependency path points into this repository; point it at the unpacked package instead.
sed -i "s|^wasi-pg-client = { path = \"[^\"]*\" }|wasi-pg-client = { path = \"../$(basename "$package_dir")\" }|" \
    "$work/app/Cargo.toml"
grep -q "^wasi-pg-client = { path = \"../$(basename "$package_dir")\" }" "$work/app/Cargo.toml" ||
    fail "could not point the template's wasi-pg-client dependency at the package"
# Start from the versions this repository's suite tests; cargo resolves what the app adds.
cp Cargo.lock "$work/app/Cargo.lock"

clean_env=(env -i "HOME=$HOME" "PATH=${CARGO_HOME:-$HOME/.cargo}/bin:/usr/local/bin:/usr/bin:/bin")
[ -n "${CARGO_HOME:-}" ] && clean_env+=("CARGO_HOME=$CARGO_HOME")
[ -n "${RUSTUP_HOME:-}" ] && clean_env+=("RUSTUP_HOME=$RUSTUP_HOME")
# No parent of the app dir may hold a cargo config: that would be set-up the user does not have.
dir="$work/app"
while [ "$dir" != / ]; do
    for config in "$dir/.cargo/config.toml" "$dir/.cargo/config"; do
        [ ! -e "$config" ] || fail "$config would apply to the app's build"
    done
    dir="$(dirname "$dir")"
done

build() {
    local what="$1" started=$SECONDS
    shift
    (cd "$work/app" && "${clean_env[@]}" cargo build --release "$@") || fail "cargo build --release $* failed"
    log "built for $what in $((SECONDS - started))s"
}
log "building the app for wasm32-wasip2 in a clean environment (clang: $(command -v clang))"
build wasm32-wasip2 --target wasm32-wasip2
log "building the app natively in the same clean environment"
build "the host"
wasm="$work/app/target/wasm32-wasip2/release/pg-app.wasm"
native="$work/app/target/release/pg-app"
log "sizes: $(stat -c %s "$wasm") bytes pg-app.wasm, $(stat -c %s "$native") bytes native pg-app"

# --- certificates: a CA, a server certificate for 127.0.0.1 and localhost, and an unrelated CA -------
certs="$work/certs"
mkdir "$certs"
make_ca() {
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -days 2 \
        -subj "/CN=$1" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout "$certs/$2.key" -out "$certs/$2.crt" 2>/dev/null
}
make_ca "wasi-pg-client template CA" root
make_ca "an unrelated CA" other
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -subj "/CN=localhost" \
    -keyout "$certs/server.key" -out "$certs/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' \
    >"$certs/server.ext"
openssl x509 -req -in "$certs/server.csr" -CA "$certs/root.crt" -CAkey "$certs/root.key" -CAcreateserial \
    -days 2 -extfile "$certs/server.ext" -out "$certs/server.crt" 2>/dev/null

# --- a cluster that takes TLS connections only ---------------------------------------------------
cluster_init template
trap cleanup EXIT # cluster_init set its own; ours calls cluster_cleanup too
cp "$certs/server.crt" "$certs/server.key" "$cluster_dir/"
chmod 600 "$cluster_dir/server.key"
if [ "${#cluster_as_owner[@]}" -gt 0 ]; then
    chown postgres:postgres "$cluster_dir/server.crt" "$cluster_dir/server.key"
fi
cat >>"$cluster_data/postgresql.conf" <<CONF
ssl = on
ssl_cert_file = '$cluster_dir/server.crt'
ssl_key_file = '$cluster_dir/server.key'
password_encryption = 'scram-sha-256'
CONF
printf 'local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\nhostnossl all all 127.0.0.1/32 reject\n' \
    >"$cluster_data/pg_hba.conf"
cluster_start
password="template-$RANDOM$RANDOM"
cluster_psql -c "CREATE ROLE app LOGIN PASSWORD '$password'"
log "cluster on 127.0.0.1:$cluster_port: hostssl + scram-sha-256 only"

conninfo() {
    printf 'host=127.0.0.1 port=%s user=app dbname=postgres sslmode=verify-full sslrootcert=%s channel_binding=require' \
        "$cluster_port" "$1"
}
check_output() {
    local what="$1" out="$2"
    printf '%s\n' "$out" | sed 's/^/    /'
    printf '%s\n' "$out" | grep -q '^tls: on (sslmode VerifyFull, the server reports TLSv1\.[23])$' ||
        fail "$what: the app did not report a verify-full TLS connection"
}

# --- runs -----------------------------------------------------------------------------------------
log "running pg-app.wasm under wasmtime (verify-full, channel_binding=require, roots from a preopened dir)"
out="$("${clean_env[@]}" wasmtime run -S inherit-network -S allow-ip-name-lookup --dir "$certs::/certs" \
    --env "DATABASE_URL=$(conninfo /certs/root.crt)" --env "PGPASSWORD=$password" "$wasm")" ||
    fail "pg-app.wasm failed under wasmtime"
check_output "wasm32-wasip2" "$out"

log "running the native pg-app (same settings)"
out="$("${clean_env[@]}" "DATABASE_URL=$(conninfo "$certs/root.crt")" "PGPASSWORD=$password" "$native")" ||
    fail "the native pg-app failed"
check_output "native" "$out"

log "running pg-app.wasm with an unrelated CA: verify-full must refuse the server"
if err="$("${clean_env[@]}" wasmtime run -S inherit-network -S allow-ip-name-lookup --dir "$certs::/certs" \
    --env "DATABASE_URL=$(conninfo /certs/other.crt)" --env "PGPASSWORD=$password" "$wasm" 2>&1)"; then
    fail "pg-app.wasm connected although the server's certificate is not signed by the given root: $err"
fi
printf '    %s\n' "$err"
printf '%s\n' "$err" | grep -qi 'certificate' || fail "the refusal does not name the certificate: $err"

log "ok"

#!/usr/bin/env bash
# Records the fuzz seed corpora from real sessions: starts a throwaway PostgreSQL cluster on 127.0.0.1 (see
# scripts/throwaway-cluster.sh) with one user per authentication method, runs fuzz/'s record_seeds against it
# and writes DIR/<target>/<name> for backend_stream, scram, values and replication (and the hand-written conninfo,
# pipeline and shared seeds). Fails, writing nothing, if the server cannot be started or a session does not go
# as planned.
#
#   scripts/record-seeds.sh [DIR]     # default fuzz/seeds: re-records the committed corpus
#
# Some bytes differ on every run (backend key data, the md5 salt, SCRAM nonces, salts and signatures, a
# notification's process id), and a few with the cluster's history (a temp table's OID in a RowDescription).
# record_seeds is built with --cfg fuzzing (the entry points of wasi_pg_client::fuzzing exist only there) into
# fuzz/target/record. Needs what scripts/setup.sh installs (PostgreSQL, a Rust toolchain).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(realpath -m -- "${1:-$repo/fuzz/seeds}")"
cd "$repo"

log() { printf 'record-seeds: %s\n' "$*" >&2; }

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

log "building fuzz/'s record_seeds (--cfg fuzzing, fuzz/target/record)"
RUSTFLAGS="--cfg fuzzing" cargo build --manifest-path fuzz/Cargo.toml --target-dir fuzz/target/record \
    --features record --bin record_seeds >&2

# shellcheck source=scripts/throwaway-cluster.sh
source scripts/throwaway-cluster.sh
cluster_init fuzz-seeds
# The users and password of src/fuzzing/backend.rs (USERS, PASSWORD), each with the method in its name.
cat >"$cluster_data/pg_hba.conf" <<HBA
local all all trust
host all fuzz_trust 127.0.0.1/32 trust
host all fuzz_password 127.0.0.1/32 password
host all fuzz_md5 127.0.0.1/32 md5
host all fuzz_scram 127.0.0.1/32 scram-sha-256
host replication fuzz_trust 127.0.0.1/32 trust
HBA
# The replication seeds (src/fuzzing/record_replication.rs): logical decoding, two-phase transactions.
cat >>"$cluster_data/postgresql.conf" <<CONF
wal_level = logical
max_prepared_transactions = 10
CONF
log "starting PostgreSQL ($cluster_bindir) in $cluster_dir on 127.0.0.1:$cluster_port"
cluster_start
# md5 authentication needs the password stored as md5; stored as SCRAM, the server would ask for SCRAM.
cluster_psql <<SQL
SET password_encryption = 'scram-sha-256';
CREATE ROLE fuzz_trust SUPERUSER LOGIN PASSWORD 'fuzz-pw';
CREATE ROLE fuzz_password SUPERUSER LOGIN PASSWORD 'fuzz-pw';
CREATE ROLE fuzz_scram SUPERUSER LOGIN PASSWORD 'fuzz-pw';
SET password_encryption = 'md5';
CREATE ROLE fuzz_md5 SUPERUSER LOGIN PASSWORD 'fuzz-pw';
SQL

log "recording into $out"
fuzz/target/record/debug/record_seeds "127.0.0.1:$cluster_port" "$out"

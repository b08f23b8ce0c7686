#!/usr/bin/env bash
# Checks that the wasm32-wasip2 components import nothing but WASI: every import of their world must be a
# `wasi:*` interface, so any WASI Preview 2 host (wasmtime, jco, ...) can run them without extra definitions.
#
#   scripts/check-imports.sh                 builds the examples psql, quickstart, otel and http-service (release,
#                                            wasm32-wasip2, in ${CARGO_TARGET_DIR:-target/wasi}) and checks them,
#                                            then builds psql, quickstart, otel and http-shared with --features wasip3
#                                            (WASI 0.3) and checks them too: those must also import no
#                                            wasi:sockets@0.2 interface (their sockets are all 0.3)
#   scripts/check-imports.sh FILE.wasm...    checks the given components as they are
#
# First, the imports between the crate's own source files (scripts/check-layers.py, python3): each file imports
# only its own layer and the layers below it, and no files import each other in a circle. `--source-only` stops
# there.
#
# Needs wasm-tools (scripts/setup.sh installs it). Prints each component's imports and fails, naming them,
# if any is not wasi:*.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

python3 scripts/check-layers.py
if [ "${1:-}" = "--source-only" ]; then
    exit 0
fi

EXAMPLES=(psql quickstart otel http-service)
EXAMPLES_P3=(psql quickstart otel http-shared)

if ! command -v wasm-tools >/dev/null; then
    echo "check-imports: wasm-tools not found; run scripts/setup.sh (cargo install --locked wasm-tools)" >&2
    exit 2
fi

artifacts=("$@")
p3_artifacts=()
if [ "${#artifacts[@]}" -eq 0 ]; then
    target_dir="${CARGO_TARGET_DIR:-target/wasi}"
    # ring's C code needs a wasm-capable C toolchain (as in scripts/test.sh).
    export CC_wasm32_wasip2="${CC_wasm32_wasip2:-clang-19}" AR_wasm32_wasip2="${AR_wasm32_wasip2:-llvm-ar-19}"
    build=(cargo build --release --target wasm32-wasip2)
    for example in "${EXAMPLES[@]}"; do
        build+=(--example "$example")
        artifacts+=("$target_dir/wasm32-wasip2/release/examples/$example.wasm")
    done
    CARGO_TARGET_DIR="$target_dir" "${build[@]}"
    # The WASI 0.3 builds write the same paths: copy the 0.2 ones aside first.
    mkdir -p "$target_dir/check-imports/wasip2" "$target_dir/check-imports/wasip3"
    for i in "${!artifacts[@]}"; do
        cp "${artifacts[$i]}" "$target_dir/check-imports/wasip2/"
        artifacts[i]="$target_dir/check-imports/wasip2/$(basename "${artifacts[$i]}")"
    done
    build=(cargo build --release --target wasm32-wasip2 --features wasip3)
    for example in "${EXAMPLES_P3[@]}"; do
        build+=(--example "$example")
    done
    CARGO_TARGET_DIR="$target_dir" "${build[@]}"
    for example in "${EXAMPLES_P3[@]}"; do
        cp "$target_dir/wasm32-wasip2/release/examples/$example.wasm" "$target_dir/check-imports/wasip3/"
        p3_artifacts+=("$target_dir/check-imports/wasip3/$example.wasm")
    done
    artifacts+=("${p3_artifacts[@]}")
fi

# The imports of the component's world, one per line: the name before `;` (an interface such as
# `wasi:io/poll@0.2.4`) or before `:` (a function or an inline interface, which are never WASI).
world_imports() {
    local wit
    wit="$(wasm-tools component wit "$1")" || return 1
    awk '
        /^world [^ ]+ \{$/ { in_world = 1; found = 1; next }
        in_world && /^\}/ { in_world = 0 }
        in_world && $1 == "import" {
            name = $2
            sub(/;$/, "", name)
            if (name ~ /:$/) { sub(/:$/, "", name) }
            print name
        }
        END { if (!found) exit 3 }
    ' <<<"$wit"
}

failed=0
for artifact in "${artifacts[@]}"; do
    if [ ! -f "$artifact" ]; then
        echo "check-imports: $artifact: no such file" >&2
        failed=1
        continue
    fi
    if ! imports="$(world_imports "$artifact")"; then
        echo "check-imports: $artifact: not a component, or its world could not be read" >&2
        failed=1
        continue
    fi
    foreign="$(grep -v '^wasi:' <<<"$imports" || true)"
    count="$(grep -c . <<<"$imports" || true)"
    printf '%s: %s imports\n' "$artifact" "$count"
    while IFS= read -r name; do
        [ -n "$name" ] || continue
        if [[ "$name" == wasi:* ]]; then
            printf '  ok       %s\n' "$name"
        else
            printf '  NOT WASI %s\n' "$name"
        fi
    done <<<"$imports"
    if [ -n "$foreign" ]; then
        echo "check-imports: $artifact imports interfaces other than wasi:*:" >&2
        sed 's/^/  /' <<<"$foreign" >&2
        failed=1
    fi
    if [[ " ${p3_artifacts[*]} " == *" $artifact "* ]]; then
        sockets_p2="$(grep '^wasi:sockets/.*@0\.2' <<<"$imports" || true)"
        sockets_p3="$(grep -c '^wasi:sockets/.*@0\.3' <<<"$imports" || true)"
        if [ -n "$sockets_p2" ] || [ "$sockets_p3" -eq 0 ]; then
            echo "check-imports: $artifact (a WASI 0.3 build) must use wasi:sockets@0.3 only:" >&2
            sed 's/^/  /' <<<"$sockets_p2" >&2
            failed=1
        fi
    fi
done

if [ "$failed" -ne 0 ]; then
    exit 1
fi
echo "check-imports: every import is wasi:* (${#artifacts[@]} components)"

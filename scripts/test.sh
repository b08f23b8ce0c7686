#!/usr/bin/env bash
# The full test run, as CI does it: native tests (unit, transcript, live against a real
# PostgreSQL; the live tests also build the wasm32-wasip2 scenario runner and run it under
# wasmtime, once on WASI 0.2 and once built with the `wasip3` feature on WASI 0.3), every example
# built for wasm32-wasip2 (both), the WASI 0.3 HTTP handler under `wasmtime serve`, a bounded fuzz
# smoke, the fuzz seed recorder against a throwaway cluster, then the doc tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

current_step=""
step() {
    current_step="$*"
    printf '\n==> %s\n' "$current_step"
}
report_failure() {
    local status=$?
    if [ "$status" -ne 0 ]; then
        printf '\n==> FAILED: %s (exit %s)\n' "$current_step" "$status" >&2
    fi
}
trap report_failure EXIT

if [ -n "${LIVE_ONLY:-}" ]; then
    echo "LIVE_ONLY is set: it filters the live scenarios, and a filtered run is not the suite; unset it" >&2
    exit 2
fi

step "setup (scripts/setup.sh)"
bash scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# C code in dependencies (ring) needs a wasm-capable C toolchain.
export CC_wasm32_wasip2="${CC_wasm32_wasip2:-clang-19}"
export AR_wasm32_wasip2="${AR_wasm32_wasip2:-llvm-ar-19}"

step "source layers: no file imports a higher layer, no import cycle (scripts/check-imports.sh --source-only)"
python3 scripts/check-layers.py --self-test
bash scripts/check-imports.sh --source-only

step "native tests (cargo test --all-targets)"
test_log="$(mktemp)"
cargo test --all-targets 2>&1 | tee "$test_log"
scenario_totals="$(sed -n '/^scenario totals:/,/wasm32-wasip2+p3:/p' "$test_log")"
rm -f "$test_log"

step "wasm32-wasip2 examples (cargo build --release --target wasm32-wasip2 --examples)"
CARGO_TARGET_DIR=target/wasi cargo build --release --target wasm32-wasip2 --examples

step "WASI 0.3 examples (cargo build --release --target wasm32-wasip2 --features wasip3 --examples)"
CARGO_TARGET_DIR=target/wasi cargo build --release --target wasm32-wasip2 --features wasip3 --examples

step "wasm32-wasip2 components import only wasi:*, WASI 0.3 ones no wasi:sockets@0.2 (scripts/check-imports.sh)"
CARGO_TARGET_DIR=target/wasi bash scripts/check-imports.sh

step "WASI 0.3 HTTP handler: concurrent requests share one instance's client and pool (scripts/http-shared.sh)"
bash scripts/http-shared.sh 8 2

step "sans-IO core for other hosts (cargo build --target wasm32-unknown-unknown --no-default-features)"
# .cargo/config.toml gives getrandom its custom backend for this target (a RUSTFLAGS variable would replace it).
cargo build --target wasm32-unknown-unknown --no-default-features

step "formatting (cargo fmt --check, and rustfmt on the modules declared inside with_runtime!, which cargo fmt skips)"
cargo fmt --check
git ls-files -z 'src/*.rs' | xargs -0 rustfmt --edition 2024 --check

step "docs (cargo doc --no-deps, warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps

# The fuzz smoke: every target of fuzz/ built with cargo-fuzz (libFuzzer) and run for FUZZ_SECONDS each (60
# under CI=true, 10 otherwise; 0 only builds), starting from its seeds. A crash, a hang (-timeout), an
# out-of-memory or an allocation over the targets' cap fails the run; each input that caused one is copied
# into fuzz/regressions/<target>/, which `cargo test` replays, so it can be committed with the fix.
# The toolchain is FUZZ_TOOLCHAIN if set, else nightly when rustup has it, else the current one (stable);
# RUSTC_BOOTSTRAP=1 lets a stable toolchain take cargo-fuzz's unstable flags. AddressSanitizer is used if its
# runtime is in the toolchain's sysroot, else no sanitizer. The targets are the files of fuzz/fuzz_targets/
# (`cargo fuzz list` also names fuzz/'s record_seeds, which is not one); fuzz_bin_dir is where they are built.
fuzz_targets=()
for target in fuzz/fuzz_targets/*.rs; do
    fuzz_targets+=("$(basename "$target" .rs)")
done
fuzz_bin_dir=""
fuzz_smoke() {
    local seconds="${FUZZ_SECONDS:-}"
    if [ -z "$seconds" ]; then
        if [ "${CI:-}" = "true" ]; then seconds=60; else seconds=10; fi
    fi
    local toolchain="${FUZZ_TOOLCHAIN:-}"
    if [ -z "$toolchain" ] && command -v rustup >/dev/null &&
        rustup toolchain list 2>/dev/null | grep -q '^nightly-'; then
        toolchain=nightly
    fi
    local -a cargo_fuzz=(env RUSTC_BOOTSTRAP=1 cargo) rustc_cmd=(rustc)
    if [ -n "$toolchain" ]; then
        cargo_fuzz+=("+$toolchain")
        rustc_cmd+=("+$toolchain")
    fi
    cargo_fuzz+=(fuzz)
    local sysroot sanitizer=none target_dir="fuzz/target/smoke-${toolchain:-default}"
    sysroot="$("${rustc_cmd[@]}" --print sysroot)"
    if compgen -G "$sysroot/lib/rustlib/x86_64-unknown-linux-gnu/lib/librustc-*_rt.asan.a" >/dev/null; then
        sanitizer=address
    fi
    local -a build=("${cargo_fuzz[@]}" build --fuzz-dir fuzz --target-dir "$target_dir")
    if ! "${build[@]}" --sanitizer "$sanitizer"; then
        [ "$sanitizer" = none ] && return 1
        printf 'fuzz smoke: the %s sanitizer build failed; building without a sanitizer\n' "$sanitizer"
        sanitizer=none
        "${build[@]}" --sanitizer none
    fi
    fuzz_bin_dir="$target_dir/$("${rustc_cmd[@]}" -vV | sed -n 's/^host: //p')/release"
    [ "$seconds" -gt 0 ] || return 0

    local target root="$PWD/fuzz" failed=() summary=()
    for target in "${fuzz_targets[@]}"; do
        mkdir -p "$root/corpus/$target" "$root/artifacts/$target" "$root/regressions/$target"
        # Artifacts of earlier runs are not this run's findings.
        rm -f "$root/artifacts/$target"/*
        local log started
        log="$(mktemp)"
        started=$SECONDS
        printf '\n--- fuzz %s for %ss (toolchain %s, sanitizer %s)\n' "$target" "$seconds" \
            "${toolchain:-default}" "$sanitizer"
        if "${cargo_fuzz[@]}" run --fuzz-dir fuzz --target-dir "$target_dir" --sanitizer "$sanitizer" \
            "$target" "$root/corpus/$target" "$root/seeds/$target" -- \
            -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
            -artifact_prefix="$root/artifacts/$target/" >"$log" 2>&1; then
            local execs
            execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
            summary+=("$target: ${execs:-?} executions in $((SECONDS - started))s, no crash")
        else
            tail -60 "$log"
            failed+=("$target")
            summary+=("$target: FAILED after $((SECONDS - started))s")
            local input
            for input in "$root/artifacts/$target"/{crash,oom,timeout,leak}-*; do
                [ -f "$input" ] || continue
                cp "$input" "$root/regressions/$target/"
                printf 'fuzz smoke: kept %s as fuzz/regressions/%s/%s (commit it with the fix)\n' \
                    "$input" "$target" "$(basename "$input")"
            done
        fi
        rm -f "$log"
    done
    printf '\nfuzz smoke:\n'
    printf '  %s\n' "${summary[@]}"
    [ "${#failed[@]}" -eq 0 ]
}

step "fuzz smoke (cargo fuzz: each target of fuzz/ from its seeds, FUZZ_SECONDS each)"
fuzz_smoke

# The seed recorder (scripts/record-seeds.sh: a throwaway cluster, real sessions) into a temp dir. Every fuzz
# target must get seeds, none of them empty, and each seed must run through its target's fuzzer as the smoke
# built it without a finding. What it records is not compared with fuzz/seeds: some bytes differ on every run.
seed_recorder() {
    local dir
    dir="$(mktemp -d /tmp/wasi-pg-seeds.XXXXXX)"
    if ! check_recorded_seeds "$dir"; then
        printf 'seed recorder: what it recorded is in %s\n' "$dir" >&2
        return 1
    fi
    rm -rf -- "$dir"
}
# Called in a condition, where set -e is off: every failure returns explicitly.
check_recorded_seeds() {
    local dir="$1" target empty log
    bash scripts/record-seeds.sh "$dir" || return 1
    for target in "${fuzz_targets[@]}"; do
        if ! compgen -G "$dir/$target/*" >/dev/null; then
            printf 'seed recorder: no seeds for %s\n' "$target" >&2
            return 1
        fi
        empty="$(find "$dir/$target" -type f -empty)"
        if [ -n "$empty" ]; then
            printf 'seed recorder: empty seeds:\n%s\n' "$empty" >&2
            return 1
        fi
        # Files, not a directory: libFuzzer runs each once and stops.
        log="$dir/$target.log"
        if ! "$fuzz_bin_dir/$target" -timeout=20 -rss_limit_mb=2048 "$dir/$target"/* >"$log" 2>&1; then
            tail -40 "$log" >&2
            printf 'seed recorder: a recorded %s seed fails its fuzzer\n' "$target" >&2
            return 1
        fi
        printf 'seed recorder: %s: %s seeds, each run through its fuzzer\n' "$target" \
            "$(find "$dir/$target" -type f | wc -l)"
    done
}

step "seed recorder (scripts/record-seeds.sh into a temp dir; seeds for every target, each run by its fuzzer)"
seed_recorder

step "doc tests (cargo test --doc)"
cargo test --doc

# The crate as a dependency (issue 17): what crates.io would get, what docs.rs would build, the oldest
# compiler it claims, and an app outside this repository that depends on it with none of this repo's set-up.
msrv="$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)"
msrv_toolchain="$msrv"
[[ "$msrv" =~ ^[0-9]+\.[0-9]+$ ]] && msrv_toolchain="$msrv.0"
step "MSRV $msrv (Cargo.toml rust-version): cargo +$msrv_toolchain check, every feature, native and wasm32-wasip2"
if command -v rustup >/dev/null; then
    msrv_cargo=(cargo "+$msrv_toolchain")
elif [ "$(rustc --version | awk '{print $2}')" = "$msrv_toolchain" ]; then
    msrv_cargo=(cargo)
else
    printf 'MSRV: no rustup and rustc on PATH is not %s\n' "$msrv_toolchain" >&2
    exit 1
fi
"${msrv_cargo[@]}" --version
CARGO_TARGET_DIR=target/msrv "${msrv_cargo[@]}" check --locked --all-features --all-targets
CARGO_TARGET_DIR=target/msrv "${msrv_cargo[@]}" check --locked --all-features --lib --target wasm32-wasip2

step "docs.rs build ([package.metadata.docs.rs]: every feature, both targets, --cfg docsrs, warnings denied)"
RUSTDOCFLAGS="--cfg docsrs -D warnings" cargo doc --no-deps --all-features
CARGO_TARGET_DIR=target/wasi RUSTDOCFLAGS="--cfg docsrs -D warnings" \
    cargo doc --no-deps --all-features --target wasm32-wasip2

# cargo package builds what it packed (the verification), so the dry run after it skips that second build.
step "package (cargo package, cargo publish --dry-run): only what a dependent needs, and it builds"
package_flags=()
# A clean clone in CI must package as it is; a working copy may carry uncommitted edits.
[ "${CI:-}" = "true" ] || package_flags+=(--allow-dirty)
cargo package --locked "${package_flags[@]}"
crate_file="target/package/wasi-pg-client-$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1).crate"
package_list="$(cargo package --list "${package_flags[@]}" 2>/dev/null)"
for needed in src/lib.rs README.md LICENSE-MIT LICENSE-APACHE Cargo.toml examples/quickstart.rs; do
    grep -qx "$needed" <<<"$package_list" || {
        printf 'package: %s is missing\n' "$needed" >&2
        exit 1
    }
done
unwanted="$(grep -E '^(tests|fuzz|bench|scripts|tools|templates|target|\.ci|\.cargo)/' <<<"$package_list" || true)"
if [ -n "$unwanted" ]; then
    printf 'package: holds files only this repository needs:\n%s\n' "$unwanted" >&2
    exit 1
fi
printf 'package: %s files, %s bytes (%s)\n' "$(wc -l <<<"$package_list")" "$(stat -c %s "$crate_file")" \
    "$crate_file"
cargo publish --dry-run --no-verify --locked "${package_flags[@]}"

step "downstream app (scripts/template-app.sh: templates/wasm-app outside the repo, clean env, both targets, verify-full)"
bash scripts/template-app.sh "$crate_file"

printf '\n==> live %s\n' "$scenario_totals"
printf '\n==> all tests passed\n'

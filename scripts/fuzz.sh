#!/usr/bin/env bash
# Bounded fuzz run of every cargo-fuzz (libFuzzer) target in fuzz/ (docs/fuzzing.md).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 15 s, every target
#
# Installs cargo-fuzz (pinned) when missing, builds all targets with AddressSanitizer on the pinned
# stable toolchain (RUSTC_BOOTSTRAP=1 lets it accept cargo-fuzz's -Z flags; no nightly is needed),
# then runs each target from a temporary copy of its committed seed corpus, so corpus growth never
# lands in the repository. Prints executions per target; exits non-zero on any crash, panic,
# failed invariant, leak, timeout or out-of-memory, with the reproducer and the log saved under
# fuzz/artifacts/<target>/ (replay and minimize: see docs/fuzzing.md).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${1:-15}
shift || true
CARGO_FUZZ_VERSION=0.13.1

log() { printf '==> %s\n' "$*"; }

# libfuzzer-sys compiles libFuzzer (C++) with the system compiler.
if ! command -v c++ >/dev/null 2>&1; then
    log "installing g++ (apt-get; libFuzzer is C++)"
    apt-get update -qq && apt-get install -y -qq g++ >/dev/null
fi

if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# cargo-fuzz passes nightly-only flags (-Zsanitizer, ...). The pinned stable compiler takes them
# with RUSTC_BOOTSTRAP=1; it ships the AddressSanitizer runtime for x86_64 Linux. Without that
# runtime, fall back to no sanitizer: the targets are safe Rust, so panics and failed invariants
# are still caught, only unsafe-code memory errors would not be.
export RUSTC_BOOTSTRAP=1
HOST=$(rustc -vV | sed -n 's/^host: //p')
SANITIZER=address
if [ ! -e "$(rustc --print sysroot)/lib/rustlib/$HOST/lib/librustc-stable_rt.asan.a" ]; then
    SANITIZER=none
fi

cd "$ROOT/fuzz"
if [ $# -gt 0 ]; then TARGETS=("$@"); else mapfile -t TARGETS < <(cargo fuzz list); fi

log "building ${#TARGETS[@]} fuzz targets (sanitizer: $SANITIZER)"
build_start=$(date +%s)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if ! cargo fuzz build --sanitizer "$SANITIZER" >"$WORK/build.log" 2>&1; then
    tail -40 "$WORK/build.log"
    echo "fuzz: build FAILED"
    exit 1
fi
log "built in $(( $(date +%s) - build_start )) s"
failed=()
summary=()
total_execs=0
for t in "${TARGETS[@]}"; do
    corpus="$WORK/corpus-$t"
    mkdir -p "$corpus" "$ROOT/fuzz/artifacts/$t"
    if [ -d "$ROOT/fuzz/corpus/$t" ]; then cp -r "$ROOT/fuzz/corpus/$t/." "$corpus/"; fi
    log "fuzzing $t for ${SECS}s"
    set +e
    cargo fuzz run --sanitizer "$SANITIZER" "$t" "$corpus" -- \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$WORK/$t.log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$WORK/$t.log" | tail -1)
    rate=$(grep -o 'exec/s: [0-9]*' "$WORK/$t.log" | tail -1 | cut -d' ' -f2)
    cov=$(grep -o 'cov: [0-9]*' "$WORK/$t.log" | tail -1 | cut -d' ' -f2)
    if [ $rc -ne 0 ]; then
        failed+=("$t")
        summary+=("$(printf '%-18s %12s %9s %6s  FAILED (exit %s)' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$rc")")
        grep -E "panicked at|^thread|assert|ERROR: |SUMMARY|Test unit written|^artifact" "$WORK/$t.log" | head -20 || true
        cp "$WORK/$t.log" "$ROOT/fuzz/artifacts/$t/last-run.log"
    else
        total_execs=$(( total_execs + ${execs:-0} ))
        summary+=("$(printf '%-18s %12s %9s %6s  ok' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}")")
    fi
done

printf '\n%-18s %12s %9s %6s  %s\n' target executions exec/s cov result
printf '%s\n' "${summary[@]}"
printf '%s\n' "total: ${total_execs} executions, ${#TARGETS[@]} targets x ${SECS}s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (reproducers and logs in fuzz/artifacts/<target>/, see docs/fuzzing.md)"
    exit 1
fi
echo "fuzz: ${#TARGETS[@]} passed, 0 failed"

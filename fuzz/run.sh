#!/usr/bin/env bash
# Fuzz every target (or the named ones) for a bounded time each.
#
#   fuzz/run.sh                      every target, 60 s each
#   fuzz/run.sh 300 cookie_verify    one target, 5 minutes
#   FUZZ_SANITIZER=none fuzz/run.sh 3600 h1_request_diff
#
# Targets: cookie_verify, write_back, form_decode, config_load, h1_head fuzz
# one parser each, in-process. The two differential targets run the REAL proxy
# (started once per process on 127.0.0.1:0) and check what comes out of it
# with an HTTP/1 parser of their own (fuzz_targets/h1diff/), never the
# proxy's codec:
#   h1_request_diff   the input is what a client writes; a recording upstream
#                     checks that the requests it gets are those of the input,
#                     one to one, in order (method, target, body), that no
#                     client session header and no doubled framing header
#                     reaches it, and that each answer goes back to the
#                     request it answers (request smuggling, desync).
#   h1_response_diff  the input is what the upstream answers to two pipelined
#                     GETs; the client must get at most one well-framed
#                     response per request, each the upstream's final response
#                     or a 502/504, no X-Session-* line, and no write-back
#                     taken from anywhere but the relayed head.
# The h1_* targets get the HTTP/1 dictionary h1.dict (-dict=h1.dict). A
# differential target fails with a report naming the broken invariant, the
# input, how it was parsed independently, and what each side saw;
# H1DIFF_VERBOSE=1 prints that summary for every input (e.g. with -runs=0 on
# a corpus).
#
# Environment:
#   FUZZ_SANITIZER   address (default) | none | memory ...; `none` runs faster
#                    (the library is #![forbid(unsafe_code)]: panics are what
#                    a run mostly finds)
#   FUZZ_JOBS        parallel libFuzzer jobs per target (default 1)
#   CARGO_TARGET_DIR defaults to fuzz/target, away from the main build's lock
#
# The committed seeds in fuzz/corpus/<target>/ are read, never written: what a
# run learns goes to fuzz/corpus-work/<target>/ (git-ignored), which later runs
# start from. A crash stops its target, leaves the input under
# fuzz/artifacts/<target>/, prints how to minimize it, and makes the script
# exit 1 after the remaining targets ran. Each target's last libFuzzer status
# line (executions, coverage) is printed at the end.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
FUZZ_DIR=$PWD

SECONDS_EACH=${1:-60}
shift || true
if ! [[ "$SECONDS_EACH" =~ ^[0-9]+$ ]] || ((SECONDS_EACH == 0)); then
    echo "usage: fuzz/run.sh [seconds-per-target] [target...]" >&2
    exit 2
fi
ALL_TARGETS=(cookie_verify write_back form_decode config_load h1_head h1_request_diff h1_response_diff)
TARGETS=("$@")
if ((${#TARGETS[@]} == 0)); then
    TARGETS=("${ALL_TARGETS[@]}")
fi

SANITIZER=${FUZZ_SANITIZER:-address}
JOBS=${FUZZ_JOBS:-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FUZZ_DIR/target}

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "error: cargo-fuzz is missing: rustup toolchain install nightly && cargo install cargo-fuzz --locked" >&2
    exit 2
fi

echo "==> building ${TARGETS[*]} (sanitizer: $SANITIZER)"
for target in "${TARGETS[@]}"; do
    cargo +nightly fuzz build -s "$SANITIZER" "$target"
done

LOGS=$(mktemp -d "${TMPDIR:-/tmp}/sessiongate-fuzz.XXXXXX")
trap 'rm -rf "$LOGS"' EXIT
declare -a FAILED=()
declare -A SUMMARY=()

for target in "${TARGETS[@]}"; do
    work="$FUZZ_DIR/corpus-work/$target"
    mkdir -p "$work" "$FUZZ_DIR/artifacts/$target"
    echo
    echo "==> $target: ${SECONDS_EACH}s"
    log="$LOGS/$target.log"
    started=$(date +%s)
    status=0
    # The HTTP/1 targets read HTTP tokens from a dictionary.
    dict=()
    if [[ "$target" == h1_* ]]; then
        dict=(-dict="$FUZZ_DIR/h1.dict")
    fi
    # -timeout: one input taking over 10 s is a finding (a hang), not a wait.
    cargo +nightly fuzz run -s "$SANITIZER" --jobs "$JOBS" "$target" \
        "$work" "$FUZZ_DIR/corpus/$target" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        "${dict[@]}" -print_final_stats=1 >"$log" 2>&1 || status=$?
    took=$(($(date +%s) - started))
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    runs=$(grep -E '^stat::number_of_executed_units' "$log" | tail -n 1 | awk '{print $2}' || true)
    SUMMARY[$target]="ran ${took}s, ${runs:-?} executions; last: ${last:-none}"
    if ((status != 0)); then
        FAILED+=("$target")
        echo "FAIL $target (exit $status); the end of its log:"
        tail -n 40 "$log" | sed 's/^/    | /'
        # The whole log (the finding's message comes well before its tail).
        cp "$log" "$FUZZ_DIR/artifacts/$target/last-failure.log"
        echo "    whole log: fuzz/artifacts/$target/last-failure.log"
        artifact=$(grep -oE 'artifacts/[^ ]+' "$log" | tail -n 1 || true)
        if [[ -n "$artifact" ]]; then
            echo "    minimize: cargo +nightly fuzz tmin -s $SANITIZER $target fuzz/$artifact"
        fi
    else
        echo "ok   $target: ${SUMMARY[$target]}"
    fi
done

echo
echo "==> summary"
for target in "${TARGETS[@]}"; do
    echo "$target: ${SUMMARY[$target]}"
done
if ((${#FAILED[@]} > 0)); then
    echo "crashed: ${FAILED[*]}" >&2
    exit 1
fi

#!/usr/bin/env bash
# The fuzz smoke run for CI: every target for about 15 s from the committed
# seeds, failing on any crash, hang or leak. Skips (exit 0, with a notice)
# when the nightly toolchain or cargo-fuzz is missing, unless
# FUZZ_SMOKE_REQUIRED=1.
#
#   fuzz/smoke.sh            15 s per target
#   FUZZ_SMOKE_SECONDS=5 fuzz/smoke.sh
#
# Uses no sanitizer (fast to build and run; the library forbids unsafe code,
# so a panic is what a short run can find) and its own target directory
# (fuzz/target unless CARGO_TARGET_DIR is set), so it never waits on the
# main build's lock. Nothing is written to the committed corpus.
#
# Besides the parser targets, two differential targets run the real proxy
# in-process against an upstream and a client of their own, and check the
# bytes on both sides with an independent HTTP/1 parser (see run.sh):
# h1_request_diff (client bytes: smuggling, desync, session headers reaching
# the upstream) and h1_response_diff (upstream bytes: framing, X-Session-*
# reaching the client, write-back from anywhere but the relayed head). The
# h1_* targets use the dictionary h1.dict.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    if [[ "${FUZZ_SMOKE_REQUIRED:-0}" == 1 ]]; then
        echo "error: cargo +nightly fuzz is not available" >&2
        exit 1
    fi
    echo "fuzz smoke skipped: cargo +nightly fuzz is not available" \
        "(rustup toolchain install nightly && cargo install cargo-fuzz --locked)"
    exit 0
fi
SMOKE_WORK=$(mktemp -d "${TMPDIR:-/tmp}/sessiongate-fuzz-smoke.XXXXXX")
trap 'rm -rf "$SMOKE_WORK"' EXIT

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
seconds=${FUZZ_SMOKE_SECONDS:-15}
failed=0
for target in cookie_verify write_back form_decode config_load h1_head \
    h1_request_diff h1_response_diff; do
    mkdir -p "$SMOKE_WORK/$target"
    echo "==> fuzz $target for ${seconds}s"
    dict=()
    if [[ "$target" == h1_* ]]; then
        dict=(-dict="$PWD/h1.dict")
    fi
    if ! cargo +nightly fuzz run -s none "$target" "$SMOKE_WORK/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 "${dict[@]}" \
        -print_final_stats=1 >"$SMOKE_WORK/$target.log" 2>&1; then
        failed=1
        echo "FAIL $target:"
        tail -n 40 "$SMOKE_WORK/$target.log" | sed 's/^/    | /'
    else
        runs=$(grep -E '^stat::number_of_executed_units' "$SMOKE_WORK/$target.log" | awk '{print $2}')
        echo "ok   $target: ${runs:-?} executions"
    fi
done
exit "$failed"

#!/usr/bin/env bash
# Builds sessiongate, starts two instances of the demo application and the
# proxy in front of both (examples/multi/config.yaml), and stops all three on
# Ctrl-C.
#
#   examples/multi/run.sh        then open http://127.0.0.1:8080/admin/
#
# Try: log in at /admin/ (tick "administrator") and you are sent back there;
# each page says which instance served it. Kill one instance
# (kill <pid printed below>): within two seconds its visitors are served by the
# other, logged in still. `curl -s 127.0.0.1:9091/upstreams` shows the state.
# shellcheck disable=SC2317 # cleanup runs from traps
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

PORTS=(3001 3002 8080 9091)   # must match examples/multi/config.yaml
CONFIG=examples/multi/config.yaml
BIN="${CARGO_TARGET_DIR:-target}/release/sessiongate"
pids=()

cleanup() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for_port() {
    for _ in $(seq 1 300); do
        kill -0 "$2" 2>/dev/null || { echo "error: $3 exited before listening on $1" >&2; return 1; }
        port_in_use "$1" && return 0
        sleep 0.1
    done
    echo "error: $3 did not listen on port $1 within 30s" >&2
    return 1
}

command -v python3 >/dev/null || { echo "error: python3 is needed for the demo app" >&2; exit 1; }
for port in "${PORTS[@]}"; do
    if port_in_use "$port"; then
        echo "error: port $port is already in use on 127.0.0.1; stop what listens there first" >&2
        exit 1
    fi
done

echo "building sessiongate (cargo build --release)"
cargo build --release --bin sessiongate

for n in 1 2; do
    name=$([ "$n" = 1 ] && echo one || echo two)
    python3 examples/demo/app.py --port "300$n" --name "$name" </dev/null &
    pids+=($!)
    wait_for_port "300$n" "$!" "demo app $name"
    echo "demo app '$name' on 127.0.0.1:300$n, pid $!"
done

args=(--config "$CONFIG")
if [[ -z "${SESSIONGATE_SECRET:-}" ]]; then
    args+=(--dev)
    echo "SESSIONGATE_SECRET is not set: running with --dev (ephemeral secret)"
fi
"$BIN" "${args[@]}" </dev/null &
pids+=($!)
wait_for_port 8080 "$!" "sessiongate"

echo
echo "open http://127.0.0.1:8080/admin/ (Ctrl-C stops everything)"
echo

while kill -0 "${pids[2]}" 2>/dev/null; do
    sleep 1 &
    wait $! || true
done
echo "error: sessiongate exited by itself; see its messages above" >&2
exit 1

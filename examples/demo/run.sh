#!/usr/bin/env bash
# Builds sessiongate, starts the demo application and the proxy in front of it,
# and stops both on Ctrl-C.
#
#   examples/demo/run.sh            then open http://127.0.0.1:8080/
#
# With SESSIONGATE_SECRET unset the proxy runs with --dev (an ephemeral random
# secret: sessions end with the process). Export a secret to run it for real:
#
#   export SESSIONGATE_SECRET="$(target/release/sessiongate gen-secret)"
# shellcheck disable=SC2317 # stop and cleanup run from traps
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

APP_PORT=3000     # must match upstream.url in examples/demo/config.yaml
PROXY_PORT=8080   # must match listen in examples/demo/config.yaml
CONFIG=examples/demo/config.yaml
BIN="${CARGO_TARGET_DIR:-target}/release/sessiongate"

app_pid=""
proxy_pid=""

# Stops one process by pid: TERM, then KILL if it is still there after 10s.
stop() {
    local pid=$1
    [[ -n "$pid" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    trap - EXIT INT TERM
    if [[ -n "$app_pid$proxy_pid" ]]; then
        echo
        echo "stopping the proxy and the demo app"
    fi
    stop "$proxy_pid"
    stop "$app_pid"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Waits until something accepts connections on the port, or the process dies.
wait_for_port() {
    local port=$1 pid=$2 name=$3
    for _ in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "error: $name exited before it listened on port $port" >&2
            return 1
        fi
        port_in_use "$port" && return 0
        sleep 0.1
    done
    echo "error: $name did not listen on port $port within 30s" >&2
    return 1
}

command -v python3 >/dev/null || { echo "error: python3 is needed for the demo app" >&2; exit 1; }
for port in "$APP_PORT" "$PROXY_PORT"; do
    if port_in_use "$port"; then
        echo "error: port $port is already in use on 127.0.0.1; stop what listens there first" >&2
        exit 1
    fi
done

echo "building sessiongate (cargo build --release)"
cargo build --release --bin sessiongate

python3 examples/demo/app.py --port "$APP_PORT" </dev/null &
app_pid=$!
wait_for_port "$APP_PORT" "$app_pid" "the demo app"

args=(--config "$CONFIG")
if [[ -z "${SESSIONGATE_SECRET:-}" ]]; then
    args+=(--dev)
    echo "SESSIONGATE_SECRET is not set: running with --dev (ephemeral secret)"
fi
"$BIN" "${args[@]}" </dev/null &
proxy_pid=$!
wait_for_port "$PROXY_PORT" "$proxy_pid" "sessiongate"

echo
echo "open http://127.0.0.1:$PROXY_PORT/"
echo "(the app itself is on http://127.0.0.1:$APP_PORT/, without sessions; Ctrl-C stops both)"
echo

# Runs until Ctrl-C, or until one of the two exits by itself.
while kill -0 "$app_pid" 2>/dev/null && kill -0 "$proxy_pid" 2>/dev/null; do
    sleep 1 &
    wait $! || true
done
echo "error: a process exited by itself; see its messages above" >&2
exit 1

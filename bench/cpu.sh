#!/usr/bin/env bash
# CPU time per proxied request, sessiongate beside nginx as a plain reverse proxy,
# both in front of one nginx upstream (one worker) on loopback. Reads user and
# system time from /proc/PID/stat around 200,000 requests (oha -c 64) and prints
# microseconds per request for each; with --latency, prints req/s, p50, p99 and
# p99.9 of a 5 s run of each instead.
#
#   bench/cpu.sh              # returning visitors (a valid cookie)
#   bench/cpu.sh --new        # new visitors (no cookie)
#   bench/cpu.sh --latency    # latency percentiles, returning visitors
#
# Every process it starts is stopped by pid on exit; every load run is bounded
# by a request count or by time.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SESSIONGATE_BIN:-$ROOT/target/release/sessiongate}
MODE=returning LATENCY=0
for arg in "$@"; do
  case $arg in
    --new) MODE=new ;;
    --latency) LATENCY=1 ;;
    -h|--help) sed -n 2,13p "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
N=${N:-200000}
RUN=$(mktemp -d /tmp/sessiongate-cpu.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$RUN"; }
trap cleanup EXIT
command -v oha >/dev/null || cargo install oha --locked
command -v nginx >/dev/null || { apt-get install -y -qq nginx >/dev/null; }
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --quiet)

wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

cat > "$RUN/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $RUN/upstream.pid; error_log $RUN/upstream.err warn;
events { worker_connections 1024; }
http { access_log off;
  server { listen 127.0.0.1:18600; location / { return 200 "hello\n"; } } }
CONF
cat > "$RUN/proxy.conf" <<CONF
worker_processes auto; daemon off; pid $RUN/proxy.pid; error_log $RUN/proxy.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  upstream app { server 127.0.0.1:18600; keepalive 128; }
  server { listen 127.0.0.1:18681;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$RUN/sg.yaml" <<CONF
listen: 127.0.0.1:18680
upstream: { url: "http://127.0.0.1:18600" }
session: { secrets: ["bench-secret-0123456789abcdef0123456789"], max_sessions: 2000000 }
admin: { listen: null }
log: { level: warn, access: false }
CONF
nginx -p "$RUN" -c "$RUN/upstream.conf" & PIDS+=($!)
nginx -p "$RUN" -c "$RUN/proxy.conf" & PIDS+=($!)
"$BIN" --config "$RUN/sg.yaml" 2>"$RUN/sg.err" & SG=$!; PIDS+=("$SG")
wait_port 18600; wait_port 18680; wait_port 18681

COOKIE=$(curl -s -D - -o /dev/null http://127.0.0.1:18680/ | tr -d '\r' | sed -n 's/^set-cookie: \([^;]*\).*/\1/p')
HEADER="Cookie: $COOKIE"
[ "$MODE" = new ] && HEADER="X-Bench: new"

# The nginx proxy's workers: children of the master that serves proxy.conf.
nginx_workers() { pgrep -P "$(cat "$RUN/proxy.pid")" | tr '\n' ' '; }
ticks() { # pids... -> "user system" clock ticks summed
  local u=0 s=0 a b
  for p in "$@"; do read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat"); u=$((u + a)); s=$((s + b)); done
  echo "$u $s"
}
per_request() { # name port pids...
  local name=$1 port=$2; shift 2
  oha --no-tui -n 20000 -c 64 -H "$HEADER" "http://127.0.0.1:$port/" >/dev/null
  local u0 s0 u1 s1 rps
  read -r u0 s0 < <(ticks "$@")
  rps=$(oha --no-tui -n "$N" -c 64 -H "$HEADER" --output-format json "http://127.0.0.1:$port/" |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["summary"]["requestsPerSec"]))')
  read -r u1 s1 < <(ticks "$@")
  python3 - "$name" "$rps" "$u0" "$s0" "$u1" "$s1" "$(getconf CLK_TCK)" "$N" <<'PY'
import sys
name, rps, u0, s0, u1, s1, hz, n = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
us = lambda t: t * 1e6 / hz / n
print(f"| {name} | {int(rps):,} | {us(u1-u0):.2f} | {us(s1-s0):.2f} | {us(u1-u0+s1-s0):.2f} |")
PY
}
latency() { # name port
  oha --no-tui -z 5s -c 64 -H "$HEADER" --output-format json "http://127.0.0.1:$2/" |
    python3 -c "
import json,sys; d=json.load(sys.stdin); p=d['latencyPercentiles']
print(f\"| $1 | {round(d['summary']['requestsPerSec']):,} | {p['p50']*1e3:.2f} | {p['p99']*1e3:.2f} | {p['p99.9']*1e3:.2f} |\")"
}

echo "# $(nproc) cores, $(uname -r), $(oha --version), $MODE visitors, -c 64"
if [ "$LATENCY" = 1 ]; then
  echo "| proxy | req/s | p50 ms | p99 ms | p99.9 ms |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  for rep in 1 2; do latency sessiongate 18680; latency nginx 18681; done
else
  echo "| proxy | req/s | user µs/req | system µs/req | total µs/req |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  per_request sessiongate 18680 "$SG"
  # shellcheck disable=SC2046
  per_request nginx 18681 $(nginx_workers)
fi

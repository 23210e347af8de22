#!/usr/bin/env bash
# Where a request's CPU goes, sessiongate on the memory store beside sessiongate
# on Redis (near cache on), both in front of one nginx upstream, under oha -c 50:
# microseconds of CPU per request for the proxy, the upstream, redis-server and
# oha itself, read from /proc/PID/stat (oha's from /usr/bin/time) around each
# run, with req/s. Scenarios: new (no cookie), writeback (a cookie; the upstream
# sets a key to a new value on every response), rewrite (the same, always to the
# value it holds), returning (a cookie).
#
#   bench/redis_cpu.sh                         # all three, one repetition
#   REPS=3 N=60000 bench/redis_cpu.sh new      # one scenario, three repetitions
#
# Each run is bounded by a request count (N, default 100000); the memory and the
# Redis proxy alternate within each repetition. Loopback only; every process
# started is stopped by pid on exit. Needs nginx, redis-server, oha, python3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SESSIONGATE_BIN:-$ROOT/target/release/sessiongate}
N=${N:-100000}
REPS=${REPS:-1}
SCENARIOS=${*:-new writeback returning}
RUN=$(mktemp -d /tmp/sessiongate-redis-cpu.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$RUN"; }
trap cleanup EXIT
command -v oha >/dev/null || cargo install oha --locked
command -v nginx >/dev/null || apt-get install -y -qq nginx >/dev/null
command -v redis-server >/dev/null || apt-get install -y -qq redis-server >/dev/null
[ -x /usr/bin/time ] || apt-get install -y -qq time >/dev/null
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --quiet)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
P_UP=$(free_port) P_REDIS=$(free_port) P_MEM=$(free_port) P_RED=$(free_port)

cat > "$RUN/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $RUN/upstream.pid; error_log $RUN/upstream.err warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:$P_UP;
    location / { return 200 "hello\n"; }
    location /write { add_header X-Session-Set "n=\$request_id" always; return 200 "hello\n"; }
    location /rewrite { add_header X-Session-Set "n=1" always; return 200 "hello\n"; } } }
CONF
nginx -p "$RUN" -c "$RUN/upstream.conf" & PIDS+=($!)
redis-server --port "$P_REDIS" --bind 127.0.0.1 --save "" --appendonly no >"$RUN/redis.log" 2>&1 & P_REDIS_PID=$!; PIDS+=("$P_REDIS_PID")
for kind in memory redis; do
  port=$P_MEM store=""
  if [ $kind = redis ]; then port=$P_RED; store="store: { type: redis, redis: { url: \"redis://127.0.0.1:$P_REDIS\" } }"; fi
  cat > "$RUN/$kind.yaml" <<CONF
listen: 127.0.0.1:$port
upstream: { url: "http://127.0.0.1:$P_UP" }
session: { secrets: ["bench-secret-0123456789abcdef0123456789"], max_sessions: 2000000 }
$store
admin: { listen: null }
log: { level: warn, access: false }
CONF
  "$BIN" --config "$RUN/$kind.yaml" 2>"$RUN/$kind.err" & PIDS+=($!)
  [ $kind = memory ] && PID_MEM=$! || PID_RED=$!
done
for p in "$P_UP" "$P_REDIS" "$P_MEM" "$P_RED"; do wait_port "$p"; done
UP_WORKERS=$(pgrep -P "$(cat "$RUN/upstream.pid")" | tr '\n' ' ')
ticks() { local t=0 a b; for p in "$@"; do read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat"); t=$((t + a + b)); done; echo "$t"; }

echo "# $(nproc) cores, $(uname -r), $(oha --version), oha -n $N -c 50, $REPS repetition(s)"
echo "| scenario | store | req/s | proxy µs | upstream µs | redis µs | oha µs | total µs |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for scenario in $SCENARIOS; do
  case $scenario in writeback) path=/write ;; rewrite) path=/rewrite ;; *) path=/ ;; esac
  for _ in $(seq 1 "$REPS"); do
    for kind in memory redis; do
      if [ $kind = memory ]; then port=$P_MEM pid=$PID_MEM; else port=$P_RED pid=$PID_RED; fi
      header=()
      if [ "$scenario" != new ]; then
        cookie=$(curl -s -D - -o /dev/null "http://127.0.0.1:$port$path" | tr -d '\r' | sed -n 's/^set-cookie: \([^;]*\).*/\1/ip')
        header=(-H "Cookie: $cookie")
      fi
      oha --no-tui -n 10000 -c 50 "${header[@]}" "http://127.0.0.1:$port$path" >/dev/null
      p0=$(ticks "$pid"); u0=$(ticks $UP_WORKERS); r0=$(ticks "$P_REDIS_PID")
      /usr/bin/time -f "%U %S" -o "$RUN/oha.time" oha --no-tui -n "$N" -c 50 "${header[@]}" \
        --output-format json "http://127.0.0.1:$port$path" > "$RUN/oha.json"
      p1=$(ticks "$pid"); u1=$(ticks $UP_WORKERS); r1=$(ticks "$P_REDIS_PID")
      python3 - "$scenario" "$kind" "$N" "$(getconf CLK_TCK)" "$p0" "$p1" "$u0" "$u1" "$r0" "$r1" \
        $(cat "$RUN/oha.time") "$RUN/oha.json" <<'PY'
import json, sys
scenario, kind = sys.argv[1:3]
n, hz, p0, p1, u0, u1, r0, r1, ou, os_ = map(float, sys.argv[3:13])
d = json.load(open(sys.argv[13]))
codes = d["statusCodeDistribution"]
if set(codes) != {"200"}:
    sys.exit(f"{scenario} {kind}: answers other than 200: {codes}")
us = lambda t: t * 1e6 / hz / n
proxy, up, redis, oha = us(p1 - p0), us(u1 - u0), us(r1 - r0), (ou + os_) * 1e6 / n
print(f"| {scenario} | {kind} | {d['summary']['requestsPerSec']:,.0f} | {proxy:.1f} | {up:.1f} | "
      f"{redis:.1f} | {oha:.1f} | {proxy + up + redis + oha:.1f} |")
PY
    done
  done
done

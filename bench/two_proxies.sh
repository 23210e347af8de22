#!/usr/bin/env bash
# Two sessiongate proxies on one Redis, behind a round-robin nginx, so that every
# visitor's requests alternate between them, under oha:
#
#   1. req/s of returning visitors, new visitors and write-backs through the two
#      Redis proxies, against one proxy on the memory store behind the same
#      balancer, in the same run (the ratio is the figure to read); for new
#      visitors also against two memory-store proxies (the same work, as a new
#      visitor needs no shared store); the CPU each process used per
#      request in each; and how often the two proxies' near caches read
#      Redis, per request and per invalidation the other proxy caused;
#   2. lost writes: while oha writes to one session through both proxies, 8
#      writers each write their own key of that same session, one value after
#      another, alternating proxies; every acknowledged value must be what the
#      session holds at the end, and no request may get a new session;
#   3. staleness: under returning-visitor load on both proxies, a session is
#      used on proxy B (so B caches it), then destroyed through proxy A (a
#      logout, or DELETE /sessions/{id} on A's admin API), and B is asked at
#      once, again and again, with the old cookie: how long, and how many
#      answers, B still served the destroyed session. The distribution is printed.
#
# Usage: bench/two_proxies.sh [--duration 5s] [--conns 64] [--rounds 300] [--reps 1]
#                             [--workers share|auto|N] [--pin]
#
# --reps N runs each scenario's load N times over, the balancers taking turns
# within each repetition (one memory proxy, then the two Redis proxies), so a
# drift of the machine's speed touches both sides alike; req/s are the mean
# over the repetitions, the ratio is of those means, and each repetition's
# own ratio is printed beside it to show the spread.
#
# --workers sets `workers` in the two Redis proxies' config. `share` (the
# default) gives each half of the machine's cores, at least one, as an operator
# running two proxies on one machine sets them (README, "Several proxies on one
# machine"): together they run as many worker threads as the one memory-store
# proxy they are compared with, which runs one per core. `auto` runs a worker
# per core in each, twice as many threads as cores between them; N, N each.
#
# --pin also gives each of the two Redis proxies half of the machine's cores
# (taskset), as two proxies on machines of their own would have; with
# `--workers auto`, each then runs one worker per core it may use.
# Loopback only; every load run is bounded by --duration and every loop by a
# count; every process started is stopped on exit. Needs redis-server, nginx, oha.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=5s
CONNS=64
ROUNDS=300
REPS=1
PIN=
WORKERS=share
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --pin) PIN=1; shift ;;
    --workers) WORKERS=$2; shift 2 ;;
    -h|--help) sed -n 2,43p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
case $REPS in ""|*[!0-9]*|0) echo "error: --reps takes a whole number of 1 or more" >&2; exit 2 ;; esac
case $WORKERS in
  share) WORKERS=$(( $(nproc) / 2 )); [ "$WORKERS" -ge 1 ] || WORKERS=1 ;;
  auto) ;;
  ""|*[!0-9]*|0) echo "error: --workers takes share, auto or a whole number of 1 or more" >&2; exit 2 ;;
esac
[ -n "$PIN" ] && { command -v taskset >/dev/null || { echo "error: --pin needs taskset (util-linux)" >&2; exit 1; }; }
[ -n "$PIN" ] && [ "$(nproc)" -lt 2 ] && { echo "error: --pin needs two cores or more" >&2; exit 1; }
for tool in redis-server redis-cli nginx oha curl python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool is needed (see bench/compare.sh)" >&2; exit 1; }
done

RUN=$(mktemp -d /tmp/sessiongate-two-proxies.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# SESSIONGATE_BIN=path runs that binary instead of building target/release.
if [ -n "${SESSIONGATE_BIN:-}" ]; then SG=$SESSIONGATE_BIN; else
  (cd "$ROOT" && cargo build --release --quiet)
  SG="$ROOT/target/release/sessiongate"
fi

read -r P_REDIS P_UP P_A P_B P_MEM P_LB P_LBM P_AA P_BA P_MA P_MEM2 P_MA2 P_LBM2 < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(13)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)

wait_port() { # port name
  for _ in $(seq 1 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "error: $2 does not listen on 127.0.0.1:$1 (logs in $RUN)" >&2
  exit 1
}

redis-server --port "$P_REDIS" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$RUN" --logfile "$RUN/redis.log" & PIDS+=($!)
REDIS_PID=$!
wait_port "$P_REDIS" redis-server

# The application: echoes the session's data; /w/K/V writes K=V; /write writes
# n to a new value each time; /logout ends it.
cat > "$RUN/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $RUN/upstream.pid; error_log $RUN/upstream.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$P_UP; keepalive_requests 10000000;
    location / { return 200 "\$http_x_session_data\n"; }
    location ~ ^/w/(?<k>[a-z0-9]+)/(?<v>[0-9]+)\$ { add_header X-Session-Set "\$k=\$v" always; return 200 "ok\n"; }
    location /write { add_header X-Session-Set "n=\$request_id" always; return 200 "ok\n"; }
    location /logout { add_header X-Session-Destroy "true" always; return 200 "bye\n"; }
  }
}
CONF
nginx -p "$RUN" -c "$RUN/upstream.conf" 2>>"$RUN/upstream.err" & PIDS+=($!)
wait_port "$P_UP" "the upstream nginx"

declare -A PID_OF=()
proxy() { # name port admin store-yaml
  cat > "$RUN/$1.yaml" <<YAML
listen: 127.0.0.1:$2
upstream: { url: "http://127.0.0.1:$P_UP" }
session: { secrets: ["bench-secret-0123456789abcdef0123456789"], max_data_bytes: 16384 }
store: $4
admin: { listen: "127.0.0.1:$3" }
log: { level: warn, access: false }
YAML
  case "$1" in a|b) echo "workers: $WORKERS" >> "$RUN/$1.yaml" ;; esac
  local pin=()
  if [ -n "$PIN" ]; then
    local half=$(( $(nproc) / 2 ))
    case "$1" in
      a) pin=(taskset -c "0-$((half - 1))") ;;
      b) pin=(taskset -c "$half-$(( $(nproc) - 1 ))") ;;
    esac
  fi
  "${pin[@]}" "$SG" --config "$RUN/$1.yaml" 2>"$RUN/$1.err" & PIDS+=($!)
  PID_OF[$1]=$!
  wait_port "$2" "sessiongate $1"
}
REDIS_STORE="{ type: redis, redis: { url: \"redis://127.0.0.1:$P_REDIS\" } }"
proxy a "$P_A" "$P_AA" "$REDIS_STORE"
proxy b "$P_B" "$P_BA" "$REDIS_STORE"
proxy mem "$P_MEM" "$P_MA" "{ type: memory }"
proxy mem2 "$P_MEM2" "$P_MA2" "{ type: memory }"

# The balancers: round robin over A and B; over the two memory-store proxies;
# and the same in front of the one memory-store proxy.
cat > "$RUN/lb.conf" <<CONF
worker_processes auto; daemon off; pid $RUN/lb.pid; error_log $RUN/lb.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream two { server 127.0.0.1:$P_A; server 127.0.0.1:$P_B; keepalive 128; }
  upstream one { server 127.0.0.1:$P_MEM; keepalive 128; }
  server { listen 127.0.0.1:$P_LB; keepalive_requests 10000000;
    location / { proxy_pass http://two; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  upstream two_memory { server 127.0.0.1:$P_MEM; server 127.0.0.1:$P_MEM2; keepalive 128; }
  server { listen 127.0.0.1:$P_LBM2; keepalive_requests 10000000;
    location / { proxy_pass http://two_memory; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$P_LBM; keepalive_requests 10000000;
    location / { proxy_pass http://one; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CONF
nginx -p "$RUN" -c "$RUN/lb.conf" 2>>"$RUN/lb.err" & PIDS+=($!)
wait_port "$P_LB" "the balancer"

cookie_of() { # url
  curl -si "$1" | tr -d '\r' | awk 'tolower($1)=="set-cookie:" && $2 ~ /^sessiongate=/ {sub(/;.*/, "", $2); print $2; exit}'
}
rps() { python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['summary']['requestsPerSec']))" "$1"; }
non200() { python3 -c "
import json,sys
d=json.load(open(sys.argv[1]))['statusCodeDistribution']
print(sum(n for s,n in d.items() if s!='200'))" "$1"; }
answered() { python3 -c "
import json,sys
print(sum(json.load(open(sys.argv[1]))['statusCodeDistribution'].values()))" "$1"; }
requests_on() { # admin port: requests the proxy answered so far
  curl -s "127.0.0.1:$1/metrics" | awk '/^sessiongate_requests_total/ {n += $NF} END {printf "%d", n}'
}
scripts_run() { # scripts Redis has run (EVALSHA): reads of a session, and writes
  redis-cli -p "$P_REDIS" info commandstats | tr -d '\r' \
    | awk -F'[=,]' '/^cmdstat_evalsha:/ {n = $2} END {printf "%d", n}'
}
ticks() { # pids: CPU ticks (user + system) they have used so far
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}
TICK=$(getconf CLK_TCK)
us_per() { # ticks requests: microseconds of CPU per request
  python3 -c "print(f'{$1 / $TICK * 1e6 / max(1, $2):.1f}')"
}
ratio() { # a b: a / b, to three places
  python3 -c "print(f'{$1 / $2:.3f}')"
}
near_on() { # admin port: the near cache's misses (lookups that read Redis) and invalidations so far
  curl -s "127.0.0.1:$1/metrics" | awk '/^sessiongate_near_cache_misses_total/ {m = $NF}
    /^sessiongate_near_cache_invalidations_total/ {i = $NF} END {printf "%d %d", m, i}'
}
created_on() {
  curl -s "127.0.0.1:$1/metrics" | awk '/^sessiongate_sessions_created_total/ {printf "%d", $NF}'
}

echo "# $(nproc) cores, oha -z $DURATION -c $CONNS, reps $REPS, each Redis proxy with workers: $WORKERS${PIN:+, pinned to half the cores}; logs in $RUN" >&2
echo
echo "## req/s through the balancer: two proxies on one Redis × one proxy on the memory store"
echo
NGINX_WORKERS=$(pgrep -P "$(cat "$RUN/upstream.pid")" | tr '\n' ' ')$(pgrep -P "$(cat "$RUN/lb.pid")" | tr '\n' ' ')
CPU_ROWS=()
NEAR_ROWS=()
cpu_of() { # balancer port: "proxies | Redis | nginx" µs per request, over the repetitions
  echo "$(us_per "${t_proxy[$1]}" "${answered_n[$1]}") | $(us_per "${t_redis[$1]}" "${answered_n[$1]}") | $(us_per "${t_nginx[$1]}" "${answered_n[$1]}")"
}
echo "| scenario | two proxies, Redis | one proxy, memory | ratio | each repetition | two proxies, memory | ratio to them | split A / B | non-200 | scripts in Redis per request |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for scenario in returning new writeback; do
  args=(--no-tui --output-format json -z "$DURATION" -c "$CONNS")
  path=/
  [ "$scenario" = writeback ] && path=/write
  # Per balancer, summed over the repetitions: req/s, requests answered, and
  # CPU ticks of its proxies, Redis and nginx.
  declare -A got=() answered_n=() t_proxy=() t_redis=() t_nginx=()
  each=() requests_a=0 requests_b=0 scripts=0 reads=0 invalidated=0 bad=0
  # New visitors need no shared store: two memory-store proxies behind the
  # same balancer do the same work, and tell the second process's own cost
  # from Redis's.
  lbs=("$P_LBM" "$P_LB")
  [ "$scenario" = new ] && lbs=("$P_LBM" "$P_LBM2" "$P_LB")
  for rep in $(seq 1 "$REPS"); do
    for lb in "${lbs[@]}"; do
      extra=()
      [ "$scenario" != new ] && extra=(-H "Cookie: $(cookie_of "http://127.0.0.1:$lb$path")")
      case $lb in
        "$P_LB") proxies=("${PID_OF[a]}" "${PID_OF[b]}") ;;
        "$P_LBM2") proxies=("${PID_OF[mem]}" "${PID_OF[mem2]}") ;;
        *) proxies=("${PID_OF[mem]}") ;;
      esac
      a0=$(requests_on "$P_AA"); b0=$(requests_on "$P_BA"); s0=$(scripts_run)
      read -r am0 ai0 <<< "$(near_on "$P_AA")"; read -r bm0 bi0 <<< "$(near_on "$P_BA")"
      c0=$(ticks "${proxies[@]}"); r0=$(ticks "$REDIS_PID"); n0=$(ticks $NGINX_WORKERS)
      out="$RUN/$scenario.$lb.$rep.json"
      oha "${args[@]}" "${extra[@]}" "http://127.0.0.1:$lb$path" > "$out" 2>>"$RUN/oha.err"
      c1=$(ticks "${proxies[@]}"); r1=$(ticks "$REDIS_PID"); n1=$(ticks $NGINX_WORKERS)
      a1=$(requests_on "$P_AA"); b1=$(requests_on "$P_BA"); s1=$(scripts_run)
      read -r am1 ai1 <<< "$(near_on "$P_AA")"; read -r bm1 bi1 <<< "$(near_on "$P_BA")"
      answered_n[$lb]=$(( ${answered_n[$lb]:-0} + $(answered "$out") ))
      t_proxy[$lb]=$(( ${t_proxy[$lb]:-0} + c1 - c0 ))
      t_redis[$lb]=$(( ${t_redis[$lb]:-0} + r1 - r0 ))
      t_nginx[$lb]=$(( ${t_nginx[$lb]:-0} + n1 - n0 ))
      this=$(rps "$out")
      got[$lb]=$(( ${got[$lb]:-0} + this ))
      [ "$lb" = "$P_LBM" ] && memory=$this
      if [ "$lb" = "$P_LB" ]; then
        requests_a=$((requests_a + a1 - a0)); requests_b=$((requests_b + b1 - b0))
        scripts=$((scripts + s1 - s0)); bad=$((bad + $(non200 "$out")))
        reads=$((reads + am1 - am0 + bm1 - bm0)); invalidated=$((invalidated + ai1 - ai0 + bi1 - bi0))
        each+=("$(ratio "$this" "$memory")")
      fi
    done
  done
  for lb in "${lbs[@]}"; do got[$lb]=$(( got[$lb] / REPS )); done
  n=$((requests_a + requests_b > 0 ? requests_a + requests_b : 1))
  per=$(python3 -c "print(f'{$scripts / $n:.2f}')")
  NEAR_ROWS+=("| $scenario | $(ratio "$reads" "$n") | $(ratio "$invalidated" "$n") | $([ "$scenario" = writeback ] && [ "$invalidated" -gt 0 ] && ratio "$reads" "$invalidated" || echo —) |")
  ratio=$(ratio "${got[$P_LB]}" "${got[$P_LBM]}")
  two="—" ratio2="—" cpu2="— | — | —"
  if [ -n "${got[$P_LBM2]:-}" ]; then
    two=${got[$P_LBM2]} cpu2=$(cpu_of "$P_LBM2")
    ratio2=$(ratio "${got[$P_LB]}" "${got[$P_LBM2]}")
  fi
  echo "| $scenario | ${got[$P_LB]} | ${got[$P_LBM]} | $ratio | $(IFS=/; echo "${each[*]}" | sed "s#/# / #g") | $two | $ratio2 | $requests_a / $requests_b | $bad | $per |"
  CPU_ROWS+=("| $scenario | $(cpu_of "$P_LB") | $(cpu_of "$P_LBM") | $cpu2 |")
  unset got answered_n t_proxy t_redis t_nginx
done
echo
echo "CPU per request, µs (from /proc; nginx is the balancer's and the application's workers; the machine is shared, so a process's figure grows when it is woken for fewer requests at a time):"
echo
echo "| scenario | two proxies, Redis: sessiongate (both) | Redis | nginx | one proxy, memory: sessiongate | Redis | nginx | two proxies, memory: sessiongate (both) | Redis | nginx |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
printf '%s\n' "${CPU_ROWS[@]}"
echo
echo "Near cache of the two Redis proxies, per request (reads: lookups that went to Redis, a joined read counted once; invalidations: changes by the other proxy it was told of; per invalidation for write-back only, where the other proxy's writes cause them):"
echo
echo "| scenario | reads per request | invalidations per request | reads per invalidation |"
echo "| --- | ---: | ---: | ---: |"
printf '%s\n' "${NEAR_ROWS[@]}"

# --- 2. lost writes -------------------------------------------------------------
COOKIE=$(cookie_of "http://127.0.0.1:$P_LB/w/n/1")
CREATED_BEFORE=$(( $(created_on "$P_AA") + $(created_on "$P_BA") ))
oha --no-tui --output-format json -z "$DURATION" -c "$CONNS" -H "Cookie: $COOKIE" \
  --rand-regex-url "http://127.0.0.1:$P_LB/w/[a-m]/[0-9]{1,6}" > "$RUN/lost.oha.json" 2>>"$RUN/oha.err" &
OHA=$!
sleep 0.5
python3 - "$P_LB" "$COOKIE" "$DURATION" > "$RUN/lost.txt" <<'PY'
import http.client, sys, threading, time
port, cookie, duration = int(sys.argv[1]), sys.argv[2], sys.argv[3]
# Writers start half a second into oha's run and stop half a second before its
# end; they write for a second at least, past the end of a shorter run.
seconds = max(float(duration.rstrip("s")) - 1.0, 1.0)
results, errors = {}, []
def writer(j):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    last, i, end = 0, 0, time.monotonic() + seconds
    while time.monotonic() < end and i < 100000:
        i += 1
        conn.request("GET", f"/w/t{j}/{i}", headers={"Cookie": cookie})
        r = conn.getresponse(); r.read()
        if r.status != 200 or r.getheader("Set-Cookie"):
            errors.append((j, i, r.status, r.getheader("Set-Cookie")))
            break
        last = i
    results[j] = last
threads = [threading.Thread(target=writer, args=(j,)) for j in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(" ".join(f"t{j}={results[j]}" for j in sorted(results)))
print("errors", len(errors), errors[:3])
PY
wait "$OHA"
# What the session holds now, read through each proxy.
python3 - "$P_A" "$P_B" "$COOKIE" "$RUN/lost.txt" "$(non200 "$RUN/lost.oha.json")" "$(rps "$RUN/lost.oha.json")" <<'PY'
import http.client, sys, urllib.parse
pa, pb, cookie, path, oha_bad, oha_rps = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
lines = open(path).read().splitlines()
acked = dict(kv.split("=") for kv in lines[0].split())
errors = lines[1]
writes = sum(int(v) for v in acked.values())
assert writes > 0, "no writer wrote anything"
lost = []
for port in (pa, pb):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/", headers={"Cookie": cookie}); r = c.getresponse()
    data = dict(urllib.parse.parse_qsl(r.read().decode().strip()))
    for k, v in acked.items():
        if v != "0" and data.get(k) != v:
            lost.append((port, k, v, data.get(k)))
print()
print("## lost writes: 8 writers, one key each, alternating proxies, beside oha writing to the same session")
print()
print(f"- acknowledged writes by the 8 writers: {writes} ({', '.join(f'{k}={v}' for k, v in sorted(acked.items()))})")
print(f"- oha's concurrent writes: {oha_rps} req/s, non-200: {oha_bad}")
print(f"- writers' errors (non-200 or a new cookie): {errors}")
print(f"- lost writes (an acknowledged last value not in the session, read through A and B): {len(lost)} {lost[:3]}")
PY
CREATED_AFTER=$(( $(created_on "$P_AA") + $(created_on "$P_BA") ))
echo "- sessions created on A and B during the run: $((CREATED_AFTER - CREATED_BEFORE)) (0 means no visitor lost its session)"

# --- 3. staleness ---------------------------------------------------------------
LOAD_COOKIE=$(cookie_of "http://127.0.0.1:$P_LB/")
oha --no-tui --output-format json -z 600s -c "$CONNS" -H "Cookie: $LOAD_COOKIE" \
  "http://127.0.0.1:$P_LB/" > "$RUN/stale.oha.json" 2>>"$RUN/oha.err" &
OHA=$!
sleep 0.5
python3 - "$P_A" "$P_B" "$P_AA" "$ROUNDS" <<'PY'
import http.client, sys, time
pa, pb, admin, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
A = http.client.HTTPConnection("127.0.0.1", pa, timeout=5)
B = http.client.HTTPConnection("127.0.0.1", pb, timeout=5)
ADMIN = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
def get(conn, path, cookie=None):
    conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
    r = conn.getresponse()
    return r.status, r.getheader("Set-Cookie"), r.read().decode().strip()
results = {"logout": [], "admin DELETE": []}
for i in range(rounds):
    how = "logout" if i % 2 == 0 else "admin DELETE"
    _, set_cookie, _ = get(A, f"/w/user/{i}")
    cookie = set_cookie.split(";")[0]
    sid = None
    # Used on B twice: read from Redis, then served from B's near cache.
    assert get(B, "/", cookie)[2] == f"user={i}"
    assert get(B, "/", cookie)[2] == f"user={i}"
    if how == "logout":
        status, _, _ = get(A, "/logout", cookie)
    else:
        # The session's ID, as the admin API wants it.
        value = cookie.split("=", 1)[1]
        sid = value.split(".")[0] if "." in value else value
        ADMIN.request("DELETE", f"/sessions/{sid}")
        r = ADMIN.getresponse(); r.read(); status = r.status
    done = time.perf_counter()
    assert status in (200, 204), (how, status)
    stale = 0
    for _ in range(10000):
        if get(B, "/", cookie)[2] != f"user={i}":
            break
        stale += 1
    results[how].append((time.perf_counter() - done, stale))
def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]
print()
print("## staleness: a session destroyed through proxy A, asked for at once on proxy B (which had it cached), under load")
print()
print("| destroyed by | rounds | answers B still served it: 0 / 1 / 2+ | time until B refused it: p50 | p90 | p99 | max |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for how, rs in results.items():
    assert rs, f"no round of {how}"
    stale = [s for _, s in rs]; t = [d * 1000 for d, _ in rs]
    dist = f"{stale.count(0)} / {stale.count(1)} / {sum(1 for s in stale if s >= 2)}"
    print(f"| {how} | {len(rs)} | {dist} | {pct(t,50):.2f} ms | {pct(t,90):.2f} ms | {pct(t,99):.2f} ms | {max(t):.2f} ms |")
print()
print("(the time includes the asking request's own round trip through B; 0 answers means B refused the very first request after the destroy was acknowledged)")
PY
kill "$OHA" 2>/dev/null || true

#!/usr/bin/env bash
# A cookie-less flood against `max_sessions: 100000`: reports resident memory over
# time and how many returning visitors' sessions survived it.
#
#   bench/flood.sh [REQUESTS]     # default 1,000,000 requests, capped at 120 s
#
# Loopback only; the flood is bounded in count and time; every process it starts is
# stopped by pid.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REQUESTS=${1:-1000000}
RETURNING=200
RUN=$(mktemp -d /tmp/sessiongate-flood.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$RUN"; }
trap cleanup EXIT
command -v oha >/dev/null || cargo install oha --locked
command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }
(cd "$ROOT" && cargo build --release --quiet)
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

cat > "$RUN/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $RUN/upstream.pid; error_log $RUN/upstream.err warn;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:18200; location / { return 200 "hello\n"; } } }
CONF
nginx -p "$RUN" -c "$RUN/upstream.conf" & PIDS+=($!)
wait_port 18200
cat > "$RUN/sg.yaml" <<CONF
listen: 127.0.0.1:18280
upstream: { url: "http://127.0.0.1:18200" }
session: { secrets: ["flood-secret-0123456789abcdef0123456789"], max_sessions: 100000 }
admin: { listen: null }
log: { level: warn, access: false }
CONF
"$ROOT/target/release/sessiongate" --config "$RUN/sg.yaml" 2>"$RUN/sg.err" & SG=$!; PIDS+=($SG)
wait_port 18280
rss() { awk '/VmRSS/ {print $2}' "/proc/$SG/status"; }

# Returning visitors: a cookie each, presented once more so the proxy knows it came back.
for i in $(seq 1 "$RETURNING"); do
  c=$(curl -s -D - -o /dev/null http://127.0.0.1:18280/ | tr -d '\r' | sed -n 's/^set-cookie: \([^;]*\).*/\1/p')
  curl -s -o /dev/null -H "Cookie: $c" http://127.0.0.1:18280/
  echo "$c" >> "$RUN/cookies"
done

echo "| t (s) | RSS (MiB) |"
echo "| ---: | ---: |"
echo "| 0 | $(( $(rss) / 1024 )) |"
timeout 150 oha --no-tui -n "$REQUESTS" -c 64 http://127.0.0.1:18280/ > "$RUN/oha.txt" &
OHA=$!; PIDS+=($OHA)
t=0
while kill -0 "$OHA" 2>/dev/null; do
  sleep 2; t=$((t + 2))
  kill -0 "$OHA" 2>/dev/null && echo "| $t | $(( $(rss) / 1024 )) |"
done
echo "| end | $(( $(rss) / 1024 )) |"
grep -E "Requests/sec|Success rate" "$RUN/oha.txt" | sed 's/^ */  /'

survived=0
while read -r c; do
  # A surviving session is reused: no new Set-Cookie.
  if ! curl -s -D - -o /dev/null -H "Cookie: $c" http://127.0.0.1:18280/ | grep -qi '^set-cookie'; then
    survived=$((survived + 1))
  fi
done < "$RUN/cookies"
echo "returning sessions surviving the flood: $survived of $RETURNING"

#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: repeatable on a noisy
# machine, unlike seconds. Runs sessiongate under valgrind twice in front of an nginx
# upstream on loopback (N1 and N2 requests) and reports (Ir2 - Ir1) / (N2 - N1),
# which cancels start-up and shutdown.
#
#   bench/instructions.sh [returning|new|writeback|h2] [BINARY]
#                          # h2: returning visitors over h2c, one stream per connection
#   KEEP=DIR bench/instructions.sh ...     # keeps both callgrind outputs in DIR
#   CONFIG_EXTRA="routes: [...]" bench/...  # YAML appended to sessiongate's config
#                                          # (its upstream is 127.0.0.1:18100)
#   SESSION_EXTRA="user_key: user" bench/... # keys added to sessiongate's session:
#   RAND_PATH=1 bench/...                  # each request to a random path of its own
#   COOKIE_PATH=/login bench/...           # the cookie from /login, whose answer
#                                          # sets user=bench (a logged-in visitor)
#   TARGET=nginx bench/instructions.sh     # nginx as a plain reverse proxy instead,
#                                          # one worker, same upstream and method
#   TARGET=haproxy bench/instructions.sh h2 # HAProxy, one thread, likewise
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCENARIO=${1:-returning}
BIN=${2:-$ROOT/target/release/sessiongate}
N1=${N1:-2000}
N2=${N2:-6000}
RUN=$(mktemp -d /tmp/sessiongate-ir.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$RUN"; }
trap cleanup EXIT
command -v valgrind >/dev/null || { apt-get install -y -qq valgrind >/dev/null; }
command -v oha >/dev/null || cargo install oha --locked
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --quiet)

wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

cat > "$RUN/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $RUN/upstream.pid; error_log $RUN/upstream.err warn;
events { worker_connections 1024; }
http { access_log off;
  server { listen 127.0.0.1:18100;
    location / { return 200 "hello\n"; }
    location /write { add_header X-Session-Set "n=\$request_id" always; return 200 "hello\n"; }
    location /login { add_header X-Session-Set "user=bench" always; return 200 "hello\n"; } } }
CONF
nginx -p "$RUN" -c "$RUN/upstream.conf" & PIDS+=($!)
wait_port 18100
cat > "$RUN/sg.yaml" <<CONF
listen: 127.0.0.1:18180
upstream: { url: "http://127.0.0.1:18100" }
session: { secrets: ["bench-secret-0123456789abcdef0123456789"]${SESSION_EXTRA:+, $SESSION_EXTRA} }
log: { level: warn, access: false }
${CONFIG_EXTRA:-}
CONF

cat > "$RUN/proxy.conf" <<CONF
worker_processes 1; master_process off; daemon off; pid $RUN/proxy.pid; error_log $RUN/proxy.err warn;
events { worker_connections 1024; }
http { access_log off; upstream app { server 127.0.0.1:18100; keepalive 128; }
  server { listen 127.0.0.1:18180$( [ "$SCENARIO" = h2 ] && echo " http2" );
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF

cat > "$RUN/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:18180$( [ "$SCENARIO" = h2 ] && echo " proto h2" )
  default_backend be
backend be
  server s1 127.0.0.1:18100
CONF

count() { # requests -> total Ir
  local n=$1 out="$RUN/cg.$1" pid cookie path=/ args=()
  if [ "${TARGET:-sessiongate}" = nginx ]; then
    valgrind --tool=callgrind --callgrind-out-file="$out" nginx -p "$RUN" -c "$RUN/proxy.conf" 2>"$RUN/vg.$n.err" &
  elif [ "${TARGET:-sessiongate}" = haproxy ]; then
    valgrind --tool=callgrind --callgrind-out-file="$out" haproxy -db -f "$RUN/haproxy.cfg" 2>"$RUN/vg.$n.err" &
  else
    valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" --config "$RUN/sg.yaml" 2>"$RUN/vg.$n.err" &
  fi
  pid=$!
  wait_port 18180
  cookie=$(curl -s -D - -o /dev/null "http://127.0.0.1:18180${COOKIE_PATH:-/}" | tr -d '\r' | sed -n 's/^set-cookie: \([^;]*\).*/\1/p')
  [ "$SCENARIO" = writeback ] && path=/write
  [ "$SCENARIO" != new ] && args=(-H "Cookie: $cookie")
  [ "$SCENARIO" = h2 ] && args+=(--http2)
  if [ -n "${RAND_PATH:-}" ]; then
    # Every request to a path of its own (nothing repeats). oha's regex
    # takes a dot literally.
    oha --no-tui -n "$n" -c 4 "${args[@]}" --rand-regex-url 'http://127.0.0.1:18180/[a-z]{16}' >/dev/null
  else
    oha --no-tui -n "$n" -c 4 "${args[@]}" "http://127.0.0.1:18180$path" >/dev/null
  fi
  case "${TARGET:-sessiongate}" in
    nginx) kill -QUIT "$pid" ;; haproxy) kill -USR1 "$pid" ;; *) kill -INT "$pid" ;;
  esac
  wait "$pid" || true
  [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$out" "$KEEP/"
  callgrind_annotate "$out" 2>/dev/null | sed -n 's/^\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,
}
a=$(count "$N1")
b=$(count "$N2")
name=$(basename "$BIN"); [ "${TARGET:-sessiongate}" != sessiongate ] && name="${TARGET} proxy"
echo "$SCENARIO: $(( (b - a) / (N2 - N1) )) instructions per request ($name)"

#!/usr/bin/env bash
# The oha comparison: sessiongate beside nginx, HAProxy and Apache mod_session,
# all in front of one fast upstream on loopback.
#
#   bench/compare.sh                      # defaults: -z 10s, -c 64, 3 repetitions
#   bench/compare.sh --duration 5s --reps 1 --targets "sessiongate nginx"
#
# Prints a markdown table (medians over repetitions) and writes every raw oha JSON
# under bench/results/<timestamp>/. Every process it starts is stopped by pid on exit.
# Loopback only; every load run is bounded by --duration.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=10s
REPS=3
CONNS=64
TARGETS="direct sessiongate sessiongate-redis nginx nginx-cookie haproxy apache"
SCENARIOS="returning new writeback single h2 tls"
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    --scenarios) SCENARIOS=$2; shift 2 ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

OUT="$ROOT/bench/results/$(date +%Y%m%d-%H%M%S)"
RUN="$OUT/run"
mkdir -p "$RUN"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# --- install what is missing -------------------------------------------------------
need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx)
command -v haproxy >/dev/null || need_apt+=(haproxy)
[ -x /usr/sbin/apache2 ] || need_apt+=(apache2)
command -v redis-server >/dev/null || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]}" >&2
  # Keep the packages' own services from starting on :80.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi
command -v oha >/dev/null || { echo "installing oha (several minutes)" >&2; cargo install oha --locked; }
export PATH="$HOME/.cargo/bin:$PATH"
(cd "$ROOT" && cargo build --release --quiet)
SG="$ROOT/target/release/sessiongate"

wait_port() { # host:port
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on $1" >&2; return 1
}

# --- the upstream: nginx answering "hello", and a write-back route ----------------
cat > "$RUN/upstream.conf" <<CONF
worker_processes auto; daemon off; pid $RUN/upstream.pid; error_log $RUN/upstream.err warn;
events { worker_connections 8192; }
http {
  access_log off; keepalive_requests 10000000; keepalive_timeout 75s;
  server {
    listen 127.0.0.1:18000 backlog=4096;
    location / { return 200 "hello\n"; }
    location /write { add_header X-Session-Set "n=1" always; return 200 "hello\n"; }
  }
}
CONF
nginx -p "$RUN" -c "$RUN/upstream.conf" & PIDS+=($!)
wait_port 127.0.0.1:18000

# --- a certificate for the TLS scenario (all TLS targets share it) -----------------
"$SG" gen-cert --dir "$RUN/certs" >/dev/null
cat "$RUN/certs/dev-cert.pem" "$RUN/certs/dev-key.pem" > "$RUN/certs/combined.pem"

# --- sessiongate (plain :18080, TLS :18480) -----------------------------------------
cat > "$RUN/sessiongate.yaml" <<CONF
listen: 127.0.0.1:18080
tls: { listen: "127.0.0.1:18480", cert: "$RUN/certs/dev-cert.pem", key: "$RUN/certs/dev-key.pem" }
upstream: { url: "http://127.0.0.1:18000" }
session: { secrets: ["bench-secret-0123456789abcdef0123456789"], max_sessions: 2000000 }
admin: { listen: null }
log: { level: warn, access: false }
CONF
"$SG" --config "$RUN/sessiongate.yaml" 2>"$RUN/sessiongate.err" & PIDS+=($!)
wait_port 127.0.0.1:18080

# --- sessiongate on Redis (:18090), with its own Redis (:18379) ---------------------
redis-server --port 18379 --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
  >"$RUN/redis.log" 2>&1 & PIDS+=($!)
wait_port 127.0.0.1:18379
cat > "$RUN/sessiongate-redis.yaml" <<CONF
listen: 127.0.0.1:18090
upstream: { url: "http://127.0.0.1:18000" }
session: { secrets: ["bench-secret-0123456789abcdef0123456789"] }
store: { type: redis, redis: { url: "redis://127.0.0.1:18379" } }
admin: { listen: null }
log: { level: warn, access: false }
CONF
"$SG" --config "$RUN/sessiongate-redis.yaml" 2>"$RUN/sessiongate-redis.err" & PIDS+=($!)
wait_port 127.0.0.1:18090

# --- nginx, a plain reverse proxy (h1 :18081, h2c :18091) ---------------------------
# --- nginx issuing a random unsigned id cookie (:18082) -----------------------------
cat > "$RUN/nginx.conf" <<'CONF'
worker_processes auto; daemon off; error_log stderr warn;
events { worker_connections 8192; }
http {
  access_log off; keepalive_requests 10000000; keepalive_timeout 75s;
  upstream app { server 127.0.0.1:18000; keepalive 128; keepalive_requests 10000000; }
  map $cookie_sid $sid_cookie { "" "sid=$request_id; Path=/; HttpOnly; SameSite=Lax"; default ""; }
  server {
    listen 127.0.0.1:18081 backlog=4096;
    listen 127.0.0.1:18091 http2;
    listen 127.0.0.1:18481 ssl;
    ssl_certificate CERTDIR/dev-cert.pem; ssl_certificate_key CERTDIR/dev-key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  server {
    listen 127.0.0.1:18082 backlog=4096;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
                 add_header Set-Cookie $sid_cookie; }
  }
}
CONF
sed -i "1s|^|pid $RUN/nginx.pid; |; s|CERTDIR|$RUN/certs|g" "$RUN/nginx.conf"
nginx -p "$RUN" -c "$RUN/nginx.conf" 2>"$RUN/nginx.err" & PIDS+=($!)
wait_port 127.0.0.1:18081

# --- HAProxy with cookie stickiness (h1 :18083, h2c :18093) -------------------------
cat > "$RUN/haproxy.cfg" <<CONF
global
  nbthread $(nproc)
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:18083
  bind 127.0.0.1:18093 proto h2
  bind 127.0.0.1:18483 ssl crt $RUN/certs/combined.pem alpn http/1.1
  default_backend be
backend be
  cookie SRV insert indirect nocache httponly
  server s1 127.0.0.1:18000 cookie s1
CONF
haproxy -db -f "$RUN/haproxy.cfg" 2>"$RUN/haproxy.err" & PIDS+=($!)
wait_port 127.0.0.1:18083

# --- Apache 2.4: mod_proxy + mod_session_crypto (:18084) ----------------------------
M=/usr/lib/apache2/modules
cat > "$RUN/apache.conf" <<CONF
ServerRoot "$RUN"
ServerName localhost
LoadModule mpm_event_module $M/mod_mpm_event.so
LoadModule authz_core_module $M/mod_authz_core.so
LoadModule proxy_module $M/mod_proxy.so
LoadModule proxy_http_module $M/mod_proxy_http.so
LoadModule session_module $M/mod_session.so
LoadModule session_cookie_module $M/mod_session_cookie.so
LoadModule session_crypto_module $M/mod_session_crypto.so
Listen 127.0.0.1:18084
PidFile $RUN/apache.pid
ErrorLog $RUN/apache.err
LogLevel warn
User www-data
Group www-data
StartServers 2
ServerLimit 4
ThreadsPerChild 64
MaxRequestWorkers 256
KeepAlive On
MaxKeepAliveRequests 0
Session On
SessionCookieName session path=/;httponly
SessionCryptoPassphrase bench-secret-0123456789abcdef
SessionHeader X-Session-Set
SessionMaxAge 86400
ProxyPass / http://127.0.0.1:18000/ keepalive=On
CONF
/usr/sbin/apache2 -f "$RUN/apache.conf" -DFOREGROUND & PIDS+=($!)
wait_port 127.0.0.1:18084

# --- cookies for the returning-visitor scenarios ----------------------------------
cookie_of() { # url name -> "name=value" from the first Set-Cookie of that name
  curl -s -o /dev/null -D - "$1" | tr -d '\r' | sed -n "s/^[Ss]et-[Cc]ookie: \($2=[^;]*\).*/\1/p" | head -1
}
SG_COOKIE=$(cookie_of http://127.0.0.1:18080/ 'sessiongate')
SG_TLS_COOKIE=$(curl -sk -o /dev/null -D - https://127.0.0.1:18480/ | tr -d '\r' | sed -n "s/^[Ss]et-[Cc]ookie: \(__Host-sessiongate=[^;]*\).*/\1/p" | head -1)
NGX_COOKIE=$(cookie_of http://127.0.0.1:18082/ sid)
SGR_COOKIE=$(cookie_of http://127.0.0.1:18090/ 'sessiongate')
HA_COOKIE="SRV=s1"
AP_COOKIE=$(cookie_of http://127.0.0.1:18084/write session)
[ -n "$SG_COOKIE" ] && [ -n "$NGX_COOKIE" ] && [ -n "$AP_COOKIE" ] || {
  echo "could not obtain a cookie from every target" >&2; exit 1; }

url_of() { # target scenario -> URL
  local port
  case "$1" in
    direct) port=18000 ;; sessiongate) port=18080 ;; sessiongate-redis) port=18090 ;; nginx) port=18081 ;;
    nginx-cookie) port=18082 ;; haproxy) port=18083 ;; apache) port=18084 ;;
  esac
  if [ "$2" = h2 ]; then
    case "$1" in nginx) port=18091 ;; haproxy) port=18093 ;; sessiongate) ;; *) return 1 ;; esac
  fi
  [ "$1" = sessiongate-redis ] && [ "$2" = single ] && return 1
  local path=/ scheme=http
  if [ "$2" = tls ]; then
    scheme=https
    case "$1" in sessiongate) port=18480 ;; nginx) port=18481 ;; haproxy) port=18483 ;; *) return 1 ;; esac
  fi
  [ "$2" = writeback ] && path=/write
  echo "$scheme://127.0.0.1:$port$path"
}
cookie_for() { # target scenario -> cookie header value or empty
  [ "$2" = new ] && return 0
  case "$1" in
    sessiongate) if [ "$2" = tls ]; then echo "$SG_TLS_COOKIE"; else echo "$SG_COOKIE"; fi ;;
    sessiongate-redis) echo "$SGR_COOKIE" ;; nginx-cookie) echo "$NGX_COOKIE" ;;
    haproxy) echo "$HA_COOKIE" ;; apache) echo "$AP_COOKIE" ;;
  esac
}

run_one() { # target scenario rep
  local url cookie args=(--no-tui --output-format json -z "$DURATION" -c "$CONNS")
  url=$(url_of "$1" "$2") || return 0
  cookie=$(cookie_for "$1" "$2")
  [ -n "$cookie" ] && args+=(-H "Cookie: $cookie")
  [ "$2" = single ] && args=(--no-tui --output-format json -z "$DURATION" -c 1 ${cookie:+-H "Cookie: $cookie"})
  [ "$2" = h2 ] && args+=(--http2)
  [ "$2" = tls ] && args+=(--insecure)
  oha "${args[@]}" "$url" > "$OUT/$2.$1.$3.json" 2>>"$OUT/oha.err" || echo "oha failed for $1 $2" >&2
}

echo "# $(nproc) cores, $(uname -r), oha $(oha --version | awk '{print $2}'), -z $DURATION -c $CONNS, reps $REPS" >&2
read -r -a target_list <<<"$TARGETS"
for rep in $(seq 1 "$REPS"); do
  for scenario in $SCENARIOS; do
    # Rotate the order every repetition so drift hits every target alike.
    n=${#target_list[@]}
    for i in $(seq 0 $((n - 1))); do
      t=${target_list[$(( (i + rep - 1) % n ))]}
      echo "rep $rep $scenario $t" >&2
      run_one "$t" "$scenario" "$rep"
    done
  done
done

python3 "$ROOT/bench/report.py" "$OUT" "$TARGETS" "$SCENARIOS" | tee "$OUT/table.md"
echo "raw oha JSON in $OUT" >&2

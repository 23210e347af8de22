#!/usr/bin/env bash
# The oha comparison: sessiongate beside nginx, HAProxy, Caddy and Apache
# mod_session, all in front of one fast upstream on loopback.
#
#   bench/compare.sh                      # defaults: -z 10s, -c 64, 3 repetitions
#   bench/compare.sh --duration 5s --reps 1 --targets "sessiongate nginx caddy"
#
# SESSIONGATE_BIN=PATH runs that sessiongate binary instead of this tree's
# release build (to compare two builds in turn).
# Options: --duration D (oha -z), --reps N, --conns N (oha -c), --targets "...",
# --scenarios "...". Targets: direct sessiongate sessiongate-redis
# sessiongate-routes sessiongate-gate nginx nginx-cookie haproxy caddy apache.
# Scenarios: returning new writeback single h2 tls unique (h2 and tls: sessiongate,
# nginx, haproxy and caddy only; unique: returning visitors, each request to a
# path of its own, so nothing a proxy keeps per request can be reused). sessiongate-routes has 50 routes, the last
# one matching, to a group of two servers with session affinity;
# sessiongate-gate has every path behind the login gate, its visitor logged in.
# sessiongate-login is the plain proxy with a logged-in visitor (user=bench);
# sessiongate-users adds session.user_key (and max_per_user), and
# sessiongate-assertion the signed assertion (HS256), each with that visitor.
# sessiongate-cluster is sessiongate-redis on a three-node Redis Cluster (started
# only when that target is asked for).
#
# Prints a markdown table (medians over repetitions) and writes every raw oha JSON
# under bench/results/<timestamp>/. Every process it starts is stopped by pid on exit.
# Loopback only, on ports found free at start-up (listed in <results>/run/ports);
# every load run is bounded by --duration. Installs what is missing with apt-get
# (nginx haproxy caddy apache2 redis-server) and oha with cargo.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=10s
REPS=3
CONNS=64
TARGETS="direct sessiongate sessiongate-redis sessiongate-routes sessiongate-gate sessiongate-login sessiongate-users sessiongate-assertion nginx nginx-cookie haproxy caddy apache"
SCENARIOS="returning new writeback single h2 tls"
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    --scenarios) SCENARIOS=$2; shift 2 ;;
    -h|--help) sed -n 2,17p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

for t in $TARGETS; do
  case "$t" in
    direct|sessiongate|sessiongate-redis|sessiongate-cluster|sessiongate-routes|sessiongate-gate|sessiongate-login|sessiongate-users|sessiongate-assertion|nginx|nginx-cookie|haproxy|caddy|apache) ;;
    *) echo "unknown target $t (see --help)" >&2; exit 2 ;;
  esac
done
for sc in $SCENARIOS; do
  case "$sc" in
    returning|new|writeback|single|h2|tls|unique) ;;
    *) echo "unknown scenario $sc (see --help)" >&2; exit 2 ;;
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
command -v caddy >/dev/null || need_apt+=(caddy)
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
SG=${SESSIONGATE_BIN:-$ROOT/target/release/sessiongate}

# --- ports: every listener on a loopback port that is free at start-up ------------
# free_ports N: N distinct ports free on 127.0.0.1 right now, on one line (bound to
# port 0 together, then released, as .ci/run does).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}
read -r P_UP P_SG P_SG_TLS P_SGR P_REDIS P_NGX P_NGX_H2 P_NGX_TLS P_NGX_COOKIE \
  P_HA P_HA_H2 P_HA_TLS P_CADDY P_CADDY_H2 P_CADDY_TLS P_AP P_UP2 P_SGRT P_SGG \
  P_SGL P_SGU P_SGA < <(free_ports 22)
[ -n "${P_SGA:-}" ] || { echo "error: could not find 22 free ports on 127.0.0.1" >&2; exit 1; }
for v in P_UP P_SG P_SG_TLS P_SGR P_REDIS P_NGX P_NGX_H2 P_NGX_TLS P_NGX_COOKIE \
  P_HA P_HA_H2 P_HA_TLS P_CADDY P_CADDY_H2 P_CADDY_TLS P_AP P_UP2 P_SGRT P_SGG P_SGL P_SGU P_SGA; do echo "$v=${!v}"; done > "$RUN/ports"

# listen_state PID PORT: 0 if process PID (or a descendant) listens on PORT; 1 if
# nobody does yet; 3 if another process does; 2 if PID is gone (or a zombie), 4 if
# it is gone and another process listens on PORT.
listen_state() {
  python3 - "$1" "$2" <<'PY'
import os, sys
root, port = int(sys.argv[1]), int(sys.argv[2])
def state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return rest[0], int(rest[1])
    except (OSError, IndexError, ValueError):
        return None, None
gone = state(root)[0] in (None, "Z")
listening = set()  # inodes of sockets listening on the port
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        with open(table) as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        continue
    for row in rows:
        col = row.split()
        if col[3] == "0A" and int(col[1].rsplit(":", 1)[1], 16) == port:
            listening.add(col[9])
if gone:
    sys.exit(4 if listening else 2)
if not listening:
    sys.exit(1)
children = {}
for d in os.listdir("/proc"):
    if d.isdigit():
        children.setdefault(state(d)[1], []).append(int(d))
todo, seen = [root], set()
while todo:
    pid = todo.pop()
    if pid in seen:
        continue
    seen.add(pid)
    todo += children.get(pid, [])
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        continue
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in listening:
            sys.exit(0)
sys.exit(3)
PY
}

# wait_listen NAME PID PORT LOG...: wait (10 s at most) until process PID listens on
# 127.0.0.1:PORT; otherwise say why, show the end of its logs and stop the run.
wait_listen() {
  local name=$1 pid=$2 port=$3 rc=1 why log; shift 3
  for _ in $(seq 1 100); do
    rc=0; listen_state "$pid" "$port" || rc=$?
    [ "$rc" = 0 ] && return 0
    [ "$rc" = 2 ] || [ "$rc" = 4 ] && break
    sleep 0.1
  done
  case "$rc" in
    2) why="exited before listening on 127.0.0.1:$port" ;;
    4) why="exited: 127.0.0.1:$port is taken by another process" ;;
    3) why="is not listening on 127.0.0.1:$port, which another process has taken" ;;
    *) why="is not listening on 127.0.0.1:$port after 10 s" ;;
  esac
  echo "error: $name (pid $pid) $why." >&2
  echo "  Its ports were free at start-up ($RUN/ports); if one was taken since, run again." >&2
  for log in "$@"; do
    [ -s "$log" ] && { echo "  --- last lines of $log:" >&2; tail -n 5 "$log" | sed 's/^/  /' >&2; }
  done
  exit 1
}

# --- the upstream: nginx answering "hello", and a write-back route ----------------
cat > "$RUN/upstream.conf" <<CONF
worker_processes auto; daemon off; pid $RUN/upstream.pid; error_log $RUN/upstream.err warn;
events { worker_connections 8192; }
http {
  access_log off; keepalive_requests 10000000; keepalive_timeout 75s;
  server {
    listen 127.0.0.1:$P_UP backlog=4096;
    listen 127.0.0.1:$P_UP2 backlog=4096;
    location / { return 200 "hello\n"; }
    # A new value on every response: each write-back is a write (one that sets
    # what the session holds already is skipped by sessiongate).
    location /write { add_header X-Session-Set "n=\$request_id" always; return 200 "hello\n"; }
    location /login { add_header X-Session-Set "user=bench" always; return 200 "hello\n"; }
  }
}
CONF
nginx -p "$RUN" -c "$RUN/upstream.conf" 2>>"$RUN/upstream.err" & PIDS+=($!)
wait_listen "upstream nginx" $! "$P_UP" "$RUN/upstream.err"

# --- a certificate for the TLS scenario (all TLS targets share it) -----------------
"$SG" gen-cert --dir "$RUN/certs" >/dev/null
cat "$RUN/certs/dev-cert.pem" "$RUN/certs/dev-key.pem" > "$RUN/certs/combined.pem"

# --- sessiongate (plain and h2c, TLS) ------------------------------------------------
cat > "$RUN/sessiongate.yaml" <<CONF
listen: 127.0.0.1:$P_SG
tls: { listen: "127.0.0.1:$P_SG_TLS", cert: "$RUN/certs/dev-cert.pem", key: "$RUN/certs/dev-key.pem" }
upstream: { url: "http://127.0.0.1:$P_UP" }
session: { secrets: ["bench-secret-0123456789abcdef0123456789"], max_sessions: 2000000 }
admin: { listen: null }
log: { level: warn, access: false }
CONF
"$SG" --config "$RUN/sessiongate.yaml" 2>"$RUN/sessiongate.err" & PIDS+=($!)
wait_listen sessiongate $! "$P_SG" "$RUN/sessiongate.err"
wait_listen "sessiongate (TLS)" $! "$P_SG_TLS" "$RUN/sessiongate.err"

# --- sessiongate with 50 routes and a group of two servers (the second port of the
# same upstream nginx), with session affinity; and sessiongate with the login gate --
{
  echo "listen: 127.0.0.1:$P_SGRT"
  echo "upstreams:"
  echo "  app:"
  echo "    servers: [\"http://127.0.0.1:$P_UP\", \"http://127.0.0.1:$P_UP2\"]"
  echo "    affinity: session"
  echo "routes:"
  # Half name a host (found by one lookup), half only a path (scanned in order).
  for i in $(seq 1 49); do
    if [ $((i % 2)) = 1 ]; then
      echo "  - {match: {host: \"h$i.example.test\", path: /p$i/}, upstream: app}"
    else
      echo "  - {match: {path: /p$i/}, upstream: app}"
    fi
  done
  echo "  - {match: {path: /}, upstream: app}"
  echo "session: { secrets: [\"bench-secret-0123456789abcdef0123456789\"], max_sessions: 2000000 }"
  echo "admin: { listen: null }"
  echo "log: { level: warn, access: false }"
} > "$RUN/sessiongate-routes.yaml"
"$SG" --config "$RUN/sessiongate-routes.yaml" 2>"$RUN/sessiongate-routes.err" & PIDS+=($!)
wait_listen sessiongate-routes $! "$P_SGRT" "$RUN/sessiongate-routes.err"
cat > "$RUN/sessiongate-gate.yaml" <<CONF
listen: 127.0.0.1:$P_SGG
upstream: { url: "http://127.0.0.1:$P_UP" }
routes: [{match: {path: /}, require: {key: user}, login_url: /login}]
session: { secrets: ["bench-secret-0123456789abcdef0123456789"], max_sessions: 2000000 }
admin: { listen: null }
log: { level: warn, access: false }
CONF
"$SG" --config "$RUN/sessiongate-gate.yaml" 2>"$RUN/sessiongate-gate.err" & PIDS+=($!)
wait_listen sessiongate-gate $! "$P_SGG" "$RUN/sessiongate-gate.err"

# --- a logged-in visitor: the plain proxy, then with the per-user index, then
# with the signed assertion --------------------------------------------------------
for variant in login users assertion; do
  case $variant in
    login) port=$P_SGL; extra=""; top="" ;;
    users) port=$P_SGU; extra=", user_key: user, max_per_user: 5"; top="" ;;
    assertion) port=$P_SGA; extra=""
      top="assertion: { header: X-Session-Assertion, keys: [\"bench-assertion-key-0123456789abcdef01234\"] }" ;;
  esac
  cat > "$RUN/sessiongate-$variant.yaml" <<CONF
listen: 127.0.0.1:$port
upstream: { url: "http://127.0.0.1:$P_UP" }
session: { secrets: ["bench-secret-0123456789abcdef0123456789"], max_sessions: 2000000$extra }
admin: { listen: null }
log: { level: warn, access: false }
$top
CONF
  "$SG" --config "$RUN/sessiongate-$variant.yaml" 2>"$RUN/sessiongate-$variant.err" & PIDS+=($!)
  wait_listen "sessiongate-$variant" $! "$port" "$RUN/sessiongate-$variant.err"
done

# --- sessiongate on Redis, with its own Redis ----------------------------------------
redis-server --port "$P_REDIS" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
  >"$RUN/redis.log" 2>&1 & PIDS+=($!)
wait_listen redis-server $! "$P_REDIS" "$RUN/redis.log"
cat > "$RUN/sessiongate-redis.yaml" <<CONF
listen: 127.0.0.1:$P_SGR
upstream: { url: "http://127.0.0.1:$P_UP" }
session: { secrets: ["bench-secret-0123456789abcdef0123456789"] }
store: { type: redis, redis: { url: "redis://127.0.0.1:$P_REDIS" } }
admin: { listen: null }
log: { level: warn, access: false }
CONF
"$SG" --config "$RUN/sessiongate-redis.yaml" 2>"$RUN/sessiongate-redis.err" & PIDS+=($!)
wait_listen sessiongate-redis $! "$P_SGR" "$RUN/sessiongate-redis.err"

# --- sessiongate on a three-node Redis Cluster, when asked for ----------------------
if [[ " $TARGETS " == *" sessiongate-cluster "* ]]; then
  # Each node also needs its port + 10000 free (the cluster bus).
  read -r P_SGC P_RC1 P_RC2 P_RC3 < <(python3 - <<'PY'
import socket
def free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port)); return True
    except OSError:
        return False
    finally:
        s.close()
found = []
while len(found) < 4:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    if port in found:
        continue
    if not found or (port <= 55535 and free(port + 10000)):
        found.append(port)
print(*found)
PY
)
  for port in "$P_RC1" "$P_RC2" "$P_RC3"; do
    mkdir -p "$RUN/cluster-$port"
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "$RUN/cluster-$port/nodes.conf" --dir "$RUN/cluster-$port" \
      --save "" --appendonly no --daemonize no >"$RUN/cluster-$port.log" 2>&1 & PIDS+=($!)
    wait_listen "redis cluster node" $! "$port" "$RUN/cluster-$port.log"
  done
  redis-cli --cluster create "127.0.0.1:$P_RC1" "127.0.0.1:$P_RC2" "127.0.0.1:$P_RC3" \
    --cluster-replicas 0 --cluster-yes >"$RUN/cluster-create.log" 2>&1
  for _ in $(seq 1 100); do
    redis-cli -p "$P_RC1" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
    sleep 0.1
  done
  cat > "$RUN/sessiongate-cluster.yaml" <<CONF
listen: 127.0.0.1:$P_SGC
upstream: { url: "http://127.0.0.1:$P_UP" }
session: { secrets: ["bench-secret-0123456789abcdef0123456789"] }
store: { type: redis, redis: { cluster: true, nodes: ["redis://127.0.0.1:$P_RC1", "redis://127.0.0.1:$P_RC2", "redis://127.0.0.1:$P_RC3"] } }
admin: { listen: null }
log: { level: warn, access: false }
CONF
  "$SG" --config "$RUN/sessiongate-cluster.yaml" 2>"$RUN/sessiongate-cluster.err" & PIDS+=($!)
  wait_listen sessiongate-cluster $! "$P_SGC" "$RUN/sessiongate-cluster.err"
fi

# --- nginx, a plain reverse proxy (h1, h2c, TLS) ------------------------------------
# --- nginx issuing a random unsigned id cookie --------------------------------------
cat > "$RUN/nginx.conf" <<'CONF'
worker_processes auto; daemon off; error_log stderr warn;
events { worker_connections 8192; }
http {
  access_log off; keepalive_requests 10000000; keepalive_timeout 75s;
  upstream app { server 127.0.0.1:UPPORT; keepalive 128; keepalive_requests 10000000; }
  map $cookie_sid $sid_cookie { "" "sid=$request_id; Path=/; HttpOnly; SameSite=Lax"; default ""; }
  server {
    listen 127.0.0.1:NGXPORT backlog=4096;
    listen 127.0.0.1:NGXH2PORT http2;
    listen 127.0.0.1:NGXTLSPORT ssl;
    ssl_certificate CERTDIR/dev-cert.pem; ssl_certificate_key CERTDIR/dev-key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  server {
    listen 127.0.0.1:NGXCOOKIEPORT backlog=4096;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
                 add_header Set-Cookie $sid_cookie; }
  }
}
CONF
sed -i -e "1s|^|pid $RUN/nginx.pid; |; s|CERTDIR|$RUN/certs|g; s|UPPORT|$P_UP|" \
  -e "s|NGXPORT|$P_NGX|; s|NGXH2PORT|$P_NGX_H2|; s|NGXTLSPORT|$P_NGX_TLS|; s|NGXCOOKIEPORT|$P_NGX_COOKIE|" \
  "$RUN/nginx.conf"
nginx -p "$RUN" -c "$RUN/nginx.conf" 2>"$RUN/nginx.err" & PIDS+=($!)
for port in "$P_NGX" "$P_NGX_H2" "$P_NGX_TLS" "$P_NGX_COOKIE"; do
  wait_listen nginx $! "$port" "$RUN/nginx.err"
done

# --- HAProxy with cookie stickiness (h1, h2c, TLS) ----------------------------------
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
  bind 127.0.0.1:$P_HA
  bind 127.0.0.1:$P_HA_H2 proto h2
  bind 127.0.0.1:$P_HA_TLS ssl crt $RUN/certs/combined.pem alpn http/1.1
  default_backend be
backend be
  cookie SRV insert indirect nocache httponly
  server s1 127.0.0.1:$P_UP cookie s1
CONF
haproxy -db -f "$RUN/haproxy.cfg" 2>"$RUN/haproxy.err" & PIDS+=($!)
for port in "$P_HA" "$P_HA_H2" "$P_HA_TLS"; do
  wait_listen haproxy $! "$port" "$RUN/haproxy.err"
done

# --- Caddy, a plain reverse proxy (h1, h2c, TLS) ------------------------------------
# JSON rather than a Caddyfile, to say exactly what each listener speaks (like nginx:
# HTTP/1.1 on one port, h2c on another, HTTPS with HTTP/1.1 on a third). Admin API
# off, no automatic HTTPS, no access logs (the process log at ERROR only), and
# HTTP/1.1 to the upstream with keep-alive (128 idle connections, as nginx keeps).
CADDY_ROUTE='{ "handle": [ { "handler": "reverse_proxy",
      "upstreams": [ { "dial": "127.0.0.1:'"$P_UP"'" } ],
      "transport": { "protocol": "http", "versions": ["1.1"],
        "keep_alive": { "enabled": true, "max_idle_conns_per_host": 128, "idle_timeout": "75s" } } } ] }'
cat > "$RUN/caddy.json" <<CONF
{
  "admin": { "disabled": true, "config": { "persist": false } },
  "logging": { "logs": { "default": { "level": "ERROR" } } },
  "storage": { "module": "file_system", "root": "$RUN/caddy-data" },
  "apps": {
    "http": { "servers": {
      "h1": { "listen": ["127.0.0.1:$P_CADDY"], "protocols": ["h1"],
              "automatic_https": { "disable": true }, "routes": [ $CADDY_ROUTE ] },
      "h2c": { "listen": ["127.0.0.1:$P_CADDY_H2"], "protocols": ["h1", "h2c"],
               "automatic_https": { "disable": true }, "routes": [ $CADDY_ROUTE ] },
      "tls": { "listen": ["127.0.0.1:$P_CADDY_TLS"], "protocols": ["h1"],
               "tls_connection_policies": [ {} ],
               "automatic_https": { "disable": true }, "routes": [ $CADDY_ROUTE ] }
    } },
    "tls": { "certificates": { "load_files": [
      { "certificate": "$RUN/certs/dev-cert.pem", "key": "$RUN/certs/dev-key.pem" } ] } }
  }
}
CONF
mkdir -p "$RUN/caddy-home"
XDG_CONFIG_HOME="$RUN/caddy-home" XDG_DATA_HOME="$RUN/caddy-home" \
  caddy run --config "$RUN/caddy.json" 2>"$RUN/caddy.err" & PIDS+=($!)
for port in "$P_CADDY" "$P_CADDY_H2" "$P_CADDY_TLS"; do
  wait_listen caddy $! "$port" "$RUN/caddy.err"
done

# --- Apache 2.4: mod_proxy + mod_session_crypto -------------------------------------
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
Listen 127.0.0.1:$P_AP
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
ProxyPass / http://127.0.0.1:$P_UP/ keepalive=On
CONF
# Apache reports a failed bind on stderr, before it opens its ErrorLog.
/usr/sbin/apache2 -f "$RUN/apache.conf" -DFOREGROUND 2>"$RUN/apache.stderr" & PIDS+=($!)
wait_listen apache $! "$P_AP" "$RUN/apache.stderr" "$RUN/apache.err"

# --- cookies for the returning-visitor scenarios ----------------------------------
cookie_of() { # url name -> "name=value" from the first Set-Cookie of that name
  curl -s -o /dev/null -D - "$1" | tr -d '\r' | sed -n "s/^[Ss]et-[Cc]ookie: \($2=[^;]*\).*/\1/p" | head -1
}
SG_COOKIE=$(cookie_of "http://127.0.0.1:$P_SG/" 'sessiongate')
SGC_COOKIE=""
if [ -n "${P_SGC:-}" ]; then
  SGC_COOKIE=$(cookie_of "http://127.0.0.1:$P_SGC/" 'sessiongate')
  [ -n "$SGC_COOKIE" ] || { echo "could not obtain a cookie from sessiongate-cluster" >&2; exit 1; }
fi
SG_TLS_COOKIE=$(curl -sk -o /dev/null -D - "https://127.0.0.1:$P_SG_TLS/" | tr -d '\r' | sed -n "s/^[Ss]et-[Cc]ookie: \(__Host-sessiongate=[^;]*\).*/\1/p" | head -1)
NGX_COOKIE=$(cookie_of "http://127.0.0.1:$P_NGX_COOKIE/" sid)
SGR_COOKIE=$(cookie_of "http://127.0.0.1:$P_SGR/" 'sessiongate')
SGRT_COOKIE=$(cookie_of "http://127.0.0.1:$P_SGRT/" 'sessiongate')
# Logged in: the login page (never gated) sets user=bench.
SGG_COOKIE=$(cookie_of "http://127.0.0.1:$P_SGG/login" 'sessiongate')
SGL_COOKIE=$(cookie_of "http://127.0.0.1:$P_SGL/login" 'sessiongate')
SGU_COOKIE=$(cookie_of "http://127.0.0.1:$P_SGU/login" 'sessiongate')
SGA_COOKIE=$(cookie_of "http://127.0.0.1:$P_SGA/login" 'sessiongate')
HA_COOKIE="SRV=s1"
AP_COOKIE=$(cookie_of "http://127.0.0.1:$P_AP/write" session)
[ -n "$SG_COOKIE" ] && [ -n "$NGX_COOKIE" ] && [ -n "$AP_COOKIE" ] && [ -n "$SGRT_COOKIE" ] \
  && [ -n "$SGG_COOKIE" ] && [ -n "$SGL_COOKIE" ] && [ -n "$SGU_COOKIE" ] && [ -n "$SGA_COOKIE" ] || {
  echo "could not obtain a cookie from every target" >&2; exit 1; }

url_of() { # target scenario -> URL
  local port
  case "$1" in
    direct) port=$P_UP ;; sessiongate) port=$P_SG ;; sessiongate-redis) port=$P_SGR ;; nginx) port=$P_NGX ;;
    sessiongate-cluster) port=$P_SGC ;;
    sessiongate-routes) port=$P_SGRT ;; sessiongate-gate) port=$P_SGG ;;
    sessiongate-login) port=$P_SGL ;; sessiongate-users) port=$P_SGU ;; sessiongate-assertion) port=$P_SGA ;;
    nginx-cookie) port=$P_NGX_COOKIE ;; haproxy) port=$P_HA ;; caddy) port=$P_CADDY ;; apache) port=$P_AP ;;
    *) echo "unknown target $1" >&2; return 1 ;;
  esac
  if [ "$2" = h2 ]; then
    case "$1" in nginx) port=$P_NGX_H2 ;; haproxy) port=$P_HA_H2 ;; caddy) port=$P_CADDY_H2 ;; sessiongate) ;; *) return 1 ;; esac
  fi
  case "$1" in sessiongate-redis|sessiongate-cluster) [ "$2" = single ] && return 1 ;; esac
  case "$1" in sessiongate-routes|sessiongate-gate)
    case "$2" in returning|new|writeback) ;; *) return 1 ;; esac ;;
  esac
  # The gate answers a new visitor 401, and the logged-in variants measure a
  # logged-in visitor: only returning visitors.
  case "$1" in sessiongate-gate|sessiongate-login|sessiongate-users|sessiongate-assertion)
    case "$2" in returning|unique) ;; *) return 1 ;; esac ;;
  esac
  local path=/ scheme=http
  if [ "$2" = tls ]; then
    scheme=https
    case "$1" in
      sessiongate) port=$P_SG_TLS ;; nginx) port=$P_NGX_TLS ;; haproxy) port=$P_HA_TLS ;;
      caddy) port=$P_CADDY_TLS ;; *) return 1 ;;
    esac
  fi
  [ "$2" = writeback ] && path=/write
  echo "$scheme://127.0.0.1:$port$path"
}
cookie_for() { # target scenario -> cookie header value or empty
  [ "$2" = new ] && return 0
  case "$1" in
    sessiongate) if [ "$2" = tls ]; then echo "$SG_TLS_COOKIE"; else echo "$SG_COOKIE"; fi ;;
    sessiongate-redis) echo "$SGR_COOKIE" ;; nginx-cookie) echo "$NGX_COOKIE" ;;
    sessiongate-cluster) echo "$SGC_COOKIE" ;;
    sessiongate-routes) echo "$SGRT_COOKIE" ;; sessiongate-gate) echo "$SGG_COOKIE" ;;
    sessiongate-login) echo "$SGL_COOKIE" ;; sessiongate-users) echo "$SGU_COOKIE" ;;
    sessiongate-assertion) echo "$SGA_COOKIE" ;;
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
  # oha's regex takes a dot literally.
  [ "$2" = unique ] && args+=(--rand-regex-url) && url="${url%/}/[a-z]{16}"
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

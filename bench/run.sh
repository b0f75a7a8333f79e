#!/usr/bin/env bash
# Portcullis benchmark: keep-alive GET of a 1 KiB file, directly from a local
# nginx, through Portcullis with Basic auth, and through the peers Squid and
# tinyproxy (Basic auth) and HAProxy (reverse proxy), measured side by side
# with wrk.
# Everything runs on 127.0.0.1; all processes started here are stopped on exit.
# See bench/README.md for the knobs and the meaning of each figure.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
OUT_DIR=$BENCH_DIR/out

DURATION=${DURATION:-6}
ROUNDS=${ROUNDS:-5}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-2}
# Portcullis sits between the two it is compared with most closely, so that each round
# measures them within seconds of each other.
TARGETS=${TARGETS:-direct proxy haproxy squid tinyproxy}
PORTCULLIS_BIN=${PORTCULLIS_BIN:-.build/release/portcullis}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1800}
HAPROXY_THREADS=${HAPROXY_THREADS:-}

AUTH_USER=bench
AUTH_PASS=benchpass
AUTH_B64=$(printf '%s:%s' "$AUTH_USER" "$AUTH_PASS" | base64)

WORK_DIR=""
CHILD_PIDS=()
NGINX=""
PORTCULLIS=""
PORTCULLIS_PID=""
SQUID=""
TINYPROXY=""
HAPROXY=""
ORIGIN_PORT=""
PROXY_PORT=""
ORIGIN_URL=""
HTPASSWD_FILE=""
SELECTED=()
USED_PORTS=()
# Per server target (proxy, squid, tinyproxy, haproxy): its port, pid and log.
declare -A TARGET_PORT=() TARGET_PID=() TARGET_LOG=()
ALL_TARGETS="direct proxy squid tinyproxy haproxy"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- lifecycle --

# True while the process exists and is not a zombie. `kill -0` is not enough:
# an exited child stays a zombie (and "alive" for kill -0) until we wait for it.
is_running() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $state != Z* ]]
}

stop_process() {
  local pid=$1 kids i
  kids=$(pgrep -P "$pid" 2>/dev/null || true)
  if is_running "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      is_running "$pid" || break
      sleep 0.1
    done
    is_running "$pid" && kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  # nginx workers outlive a SIGKILLed master; make sure none is left behind.
  for pid in $kids; do
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  done
}

cleanup() {
  local status=$? pid
  trap - EXIT
  for pid in ${CHILD_PIDS[@]+"${CHILD_PIDS[@]}"}; do
    stop_process "$pid"
  done
  [[ -n $WORK_DIR ]] && rm -rf "$WORK_DIR"
  exit "$status"
}

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------- setup --

validate_settings() {
  local name target
  [[ -z $HAPROXY_THREADS || $HAPROXY_THREADS =~ ^[1-9][0-9]*$ ]] ||
    die "HAPROXY_THREADS must be empty (HAProxy's default) or a positive whole number, got '$HAPROXY_THREADS'"
  for name in DURATION ROUNDS CONNECTIONS THREADS WARMUP BUILD_TIMEOUT; do
    [[ ${!name} =~ ^[0-9]+$ ]] || die "$name must be a whole number, got '${!name}'"
  done
  ((DURATION > 0 && ROUNDS > 0 && CONNECTIONS > 0 && THREADS > 0)) ||
    die "DURATION, ROUNDS, CONNECTIONS and THREADS must be positive"
  ((CONNECTIONS >= THREADS)) || die "CONNECTIONS must be >= THREADS (wrk requirement)"

  for target in ${TARGETS//,/ }; do
    case $target in
      direct | proxy | squid | tinyproxy | haproxy)
        wants "$target" && die "target '$target' is listed twice in TARGETS"
        SELECTED+=("$target")
        ;;
      *) die "unknown target '$target' in TARGETS (use: ${ALL_TARGETS// /, })" ;;
    esac
  done
  ((${#SELECTED[@]} > 0)) || die "TARGETS is empty"
}

wants() {
  local target
  for target in ${SELECTED[@]+"${SELECTED[@]}"}; do [[ $target == "$1" ]] && return 0; done
  return 1
}

# find_sbin NAME -> path of the program (also looked for in /usr/sbin, which
# is not on every user's PATH)
find_sbin() {
  local path
  path=$(command -v "$1" || true)
  [[ -z $path && -x /usr/sbin/$1 ]] && path=/usr/sbin/$1
  [[ -n $path ]] && echo "$path"
}

find_nginx() { NGINX=$(find_sbin nginx); }
find_peers() {
  if wants squid; then SQUID=$(find_sbin squid) || return 1; fi
  if wants tinyproxy; then TINYPROXY=$(find_sbin tinyproxy) || return 1; fi
  if wants haproxy; then HAPROXY=$(find_sbin haproxy) || return 1; fi
  return 0
}

ensure_tools() {
  local missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  find_nginx || missing+=(nginx-light)
  command -v curl >/dev/null || missing+=(curl)
  command -v jq >/dev/null || missing+=(jq)
  if wants proxy || wants squid; then
    command -v htpasswd >/dev/null || missing+=(apache2-utils)
  fi
  if wants squid; then
    { find_sbin squid >/dev/null && [[ -x /usr/lib/squid/basic_ncsa_auth ]]; } || missing+=(squid)
  fi
  if wants tinyproxy; then find_sbin tinyproxy >/dev/null || missing+=(tinyproxy); fi
  if wants haproxy; then find_sbin haproxy >/dev/null || missing+=(haproxy); fi
  if ((${#missing[@]} == 0)); then
    find_nginx && find_peers
    return 0
  fi

  [[ $(id -u) == 0 ]] || die "missing packages: ${missing[*]} (install them with apt-get as root)"
  log "installing missing packages: ${missing[*]}"
  # Another apt may be running; wait for its lock instead of failing.
  timeout 900 apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive timeout 900 \
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >&2
  find_nginx || die "nginx still not found after install"
  find_peers || die "squid, tinyproxy or haproxy still not found after install"
}

ensure_portcullis() {
  local bin=$PORTCULLIS_BIN
  [[ $bin == /* ]] || bin=$REPO_ROOT/$bin
  if [[ ! -x $bin ]]; then
    [[ $bin == "$REPO_ROOT/.build/release/portcullis" ]] ||
      die "PORTCULLIS_BIN=$PORTCULLIS_BIN does not exist or is not executable"
    command -v swift >/dev/null || die "$bin is missing and swift is not installed to build it"
    log "building portcullis (swift build -c release --product portcullis, up to ${BUILD_TIMEOUT}s)"
    (cd "$REPO_ROOT" && timeout --foreground -k 30 "$BUILD_TIMEOUT" \
      swift build -c release --product portcullis >&2) || die "swift build failed"
    [[ -x $bin ]] || die "build finished but $bin is missing"
  fi
  PORTCULLIS=$bin
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Any socket (listening, connected, TIME_WAIT, ...) with this local port?
port_taken() {
  port_in_use "$1" && return 0
  command -v ss >/dev/null || return 1
  [[ -n $(ss -Htan "( sport = :$1 )" 2>/dev/null) ]]
}

# Prints a free port, chosen below (or above) the kernel's ephemeral range:
# a port in that range can be the local end of some client connection (wrk's,
# or anyone's) at the moment a server tries to bind it.
pick_port() {
  local port i lo=32768 hi=60999 base=20000 span=10000
  read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  if ((lo - 1 >= 11000)); then
    span=$((lo - 1 - 10000 < 20000 ? lo - 1 - 10000 : 20000))
    base=$((lo - span))
  elif ((hi + 1 + 2000 <= 65535)); then
    base=$((hi + 1))
    span=$((65535 - hi))
  fi
  for ((i = 0; i < 100; i++)); do
    port=$((base + RANDOM % span))
    [[ " ${USED_PORTS[*]-} " == *" $port "* ]] && continue
    port_taken "$port" || { echo "$port"; return 0; }
  done
  die "could not find a free port on 127.0.0.1"
}

# new_port VAR: pick a free port, remember it as taken and store it in VAR.
# (pick_port runs in a subshell, so it cannot record the port itself.)
new_port() {
  local _new_port
  _new_port=$(pick_port)
  USED_PORTS+=("$_new_port")
  printf -v "$1" '%s' "$_new_port"
}

# wait_for_port PORT PID NAME LOGFILE
wait_for_port() {
  local port=$1 pid=$2 name=$3 logfile=$4 i
  for ((i = 0; i < 150; i++)); do
    is_running "$pid" || die "$name exited during startup; its log:"$'\n'"$(tail -n 20 "$logfile" 2>/dev/null)"
    port_in_use "$port" && return 0
    sleep 0.1
  done
  die "$name did not listen on 127.0.0.1:$port within 15 s; log:"$'\n'"$(tail -n 20 "$logfile" 2>/dev/null)"
}

start_nginx() {
  local dir=$WORK_DIR/nginx
  mkdir -p "$dir/www" "$dir/tmp"
  head -c 1024 /dev/zero | tr '\0' 'x' >"$dir/www/1k"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    keepalive_requests 100000;
    keepalive_timeout 65;
    default_type application/octet-stream;

    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;

    server {
        listen 127.0.0.1:$ORIGIN_PORT;
        root $dir/www;
        location = /1k { }
    }
}
EOF
  # Started as root, nginx workers run as nobody and must be able to read www/.
  chmod 755 "$WORK_DIR" "$dir" "$dir/www"
  chmod 644 "$dir/www/1k"

  "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stderr.log" 2>&1 &
  local pid=$!
  CHILD_PIDS+=("$pid")
  wait_for_port "$ORIGIN_PORT" "$pid" nginx "$dir/stderr.log"
  log "nginx listening on 127.0.0.1:$ORIGIN_PORT (pid $pid)"
}

# http_status OUTFILE CURL-ARGS... -> prints the HTTP status ("000" if no response)
http_status() {
  local out=$1
  shift
  curl -sS --max-time 10 -o "$out" -w '%{http_code}' "$@" 2>>"$WORK_DIR/curl.err" || true
}

check_direct() {
  local status size
  status=$(http_status "$WORK_DIR/direct.body" --noproxy '*' "$ORIGIN_URL")
  size=$(wc -c <"$WORK_DIR/direct.body" 2>/dev/null || echo 0)
  [[ $status == 200 && $size == 1024 ]] ||
    die "nginx check failed: GET $ORIGIN_URL returned status $status with $size bytes (expected 200, 1024 bytes)"
}

make_htpasswd() {
  [[ -n $HTPASSWD_FILE ]] && return 0
  HTPASSWD_FILE=$WORK_DIR/htpasswd
  htpasswd -cbBC 5 "$HTPASSWD_FILE" "$AUTH_USER" "$AUTH_PASS" 2>/dev/null ||
    die "htpasswd could not create $HTPASSWD_FILE"
  # Squid's basic_ncsa_auth helper runs as the unprivileged cache_effective_user.
  chmod 644 "$HTPASSWD_FILE"
}

# spawn TARGET LOGFILE COMMAND... : start a server target in the background
# and remember its pid, port and log.
spawn() {
  local target=$1 logfile=$2
  shift 2
  "$@" >"$logfile" 2>&1 &
  TARGET_PID[$target]=$!
  TARGET_LOG[$target]=$logfile
  CHILD_PIDS+=("$!")
}

start_portcullis() {
  local logfile=$WORK_DIR/portcullis.log
  make_htpasswd
  new_port PROXY_PORT
  TARGET_PORT[proxy]=$PROXY_PORT
  spawn proxy "$logfile" "$PORTCULLIS" serve --listen "127.0.0.1:$PROXY_PORT" \
    --htpasswd "$HTPASSWD_FILE" --allow-private-destinations --log-level warning
  PORTCULLIS_PID=${TARGET_PID[proxy]}
  wait_for_port "$PROXY_PORT" "$PORTCULLIS_PID" portcullis "$logfile"
  log "portcullis listening on 127.0.0.1:$PROXY_PORT (pid $PORTCULLIS_PID)"
}

start_squid() {
  local dir=$WORK_DIR/squid port
  make_htpasswd
  new_port port
  TARGET_PORT[squid]=$port
  mkdir -p "$dir"
  {
    echo "http_port 127.0.0.1:$port"
    echo "pid_filename $dir/squid.pid"
    echo "cache_log $dir/cache.log"
    echo "coredump_dir $dir"
    [[ $(id -u) == 0 ]] && echo "cache_effective_user proxy"
    cat <<CONF
access_log none
cache_store_log none
netdb_filename none
cache deny all
shutdown_lifetime 0 seconds
pinger_enable off
auth_param basic program /usr/lib/squid/basic_ncsa_auth $HTPASSWD_FILE
auth_param basic children 5
auth_param basic realm portcullis-bench
auth_param basic credentialsttl 2 hours
acl auth proxy_auth REQUIRED
http_access allow auth
http_access deny all
CONF
  } >"$dir/squid.conf"
  # Squid drops to the proxy user when started as root; it must be able to
  # write its log and pid file and read the config and the htpasswd file.
  chmod 755 "$dir"
  chmod 644 "$dir/squid.conf"
  [[ $(id -u) == 0 ]] && chown proxy: "$dir"

  spawn squid "$dir/stderr.log" "$SQUID" -N -f "$dir/squid.conf"
  wait_for_port "$port" "${TARGET_PID[squid]}" squid "$dir/stderr.log"
  TARGET_LOG[squid]=$dir/cache.log
  # Listening is not enough: the first request waits for an auth helper.
  wait_until_proxy_answers squid
  log "squid listening on 127.0.0.1:$port (pid ${TARGET_PID[squid]})"
}

start_tinyproxy() {
  local dir=$WORK_DIR/tinyproxy port
  new_port port
  TARGET_PORT[tinyproxy]=$port
  mkdir -p "$dir"
  cat >"$dir/tinyproxy.conf" <<CONF
Port $port
Listen 127.0.0.1
Timeout 600
MaxClients 200
LogLevel Warning
BasicAuth $AUTH_USER $AUTH_PASS
CONF
  [[ $(id -u) == 0 ]] && printf 'User nobody\nGroup nogroup\n' >>"$dir/tinyproxy.conf"
  chmod 755 "$dir"
  chmod 644 "$dir/tinyproxy.conf"

  spawn tinyproxy "$dir/stderr.log" "$TINYPROXY" -d -c "$dir/tinyproxy.conf"
  wait_for_port "$port" "${TARGET_PID[tinyproxy]}" tinyproxy "$dir/stderr.log"
  log "tinyproxy listening on 127.0.0.1:$port (pid ${TARGET_PID[tinyproxy]})"
}

start_haproxy() {
  local dir=$WORK_DIR/haproxy port
  new_port port
  TARGET_PORT[haproxy]=$port
  mkdir -p "$dir"
  # bench/haproxy.cfg.in, shared with floor.py; nbthread only if HAPROXY_THREADS is set.
  sed -e "s/@PORT@/$port/" -e "s/@ORIGIN_PORT@/$ORIGIN_PORT/" \
    -e "s/@NBTHREAD@/${HAPROXY_THREADS:+nbthread $HAPROXY_THREADS}/" \
    "$BENCH_DIR/haproxy.cfg.in" >"$dir/haproxy.cfg"
  "$HAPROXY" -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 ||
    die "haproxy rejected its config:"$'\n'"$(cat "$dir/check.log")"
  spawn haproxy "$dir/stderr.log" "$HAPROXY" -db -f "$dir/haproxy.cfg"
  wait_for_port "$port" "${TARGET_PID[haproxy]}" haproxy "$dir/stderr.log"
  log "haproxy listening on 127.0.0.1:$port (pid ${TARGET_PID[haproxy]})"
}

# proxy_get TARGET OUTFILE [CURL-ARGS...] -> status of GET ORIGIN_URL through the
# forward proxy TARGET with the bench credentials
proxy_get() {
  local target=$1 out=$2
  shift 2
  http_status "$out" --proxy "http://127.0.0.1:${TARGET_PORT[$target]}" \
    --proxy-user "$AUTH_USER:$AUTH_PASS" --proxy-basic "$@" "$ORIGIN_URL"
}

# wait_until_proxy_answers TARGET: poll (up to 20 s) until an authenticated GET
# through TARGET returns 200.
wait_until_proxy_answers() {
  local target=$1 deadline=$((SECONDS + 20)) status
  while :; do
    is_running "${TARGET_PID[$target]}" ||
      die "$target exited during startup; its log:"$'\n'"$(tail -n 20 "${TARGET_LOG[$target]}" 2>/dev/null)"
    status=$(proxy_get "$target" /dev/null --max-time 2)
    [[ $status == 200 ]] && return 0
    ((SECONDS < deadline)) || break
    sleep 0.2
  done
  die "$target did not answer 200 within 20 s (last status $status); log:"$'\n'"$(tail -n 20 "${TARGET_LOG[$target]}" 2>/dev/null)"
}

pretty_name() {
  case $1 in
    proxy) echo portcullis ;;
    *) echo "$1" ;;
  esac
}

# check_forward_proxy TARGET: one authenticated GET must return 200 and 1024
# bytes; one without credentials should get 407.
check_forward_proxy() {
  local target=$1 name body=$WORK_DIR/$1.body status size
  local proxy=http://127.0.0.1:${TARGET_PORT[$target]}
  name=$(pretty_name "$target")
  status=$(proxy_get "$target" "$body")
  size=$(wc -c <"$body" 2>/dev/null || echo 0)
  if [[ $status != 200 || $size != 1024 ]]; then
    [[ -s $WORK_DIR/curl.err ]] && log "curl: $(tail -n 3 "$WORK_DIR/curl.err")"
    [[ -s ${TARGET_LOG[$target]} ]] &&
      log "$name log (last 20 lines):"$'\n'"$(tail -n 20 "${TARGET_LOG[$target]}")"
    die "$name check failed: GET $ORIGIN_URL via $proxy with Basic auth" \
      "returned status $status with $size bytes (expected 200 and 1024 bytes)"
  fi
  # Without credentials the proxy must refuse; otherwise we would not be measuring the auth path.
  status=$(http_status /dev/null --proxy "$proxy" "$ORIGIN_URL")
  [[ $status == 407 ]] || log "warning: without credentials $name answered $status (expected 407)"
}

check_haproxy() {
  local url=http://127.0.0.1:${TARGET_PORT[haproxy]}/1k status size
  status=$(http_status "$WORK_DIR/haproxy.body" --noproxy '*' "$url")
  size=$(wc -c <"$WORK_DIR/haproxy.body" 2>/dev/null || echo 0)
  if [[ $status != 200 || $size != 1024 ]]; then
    log "haproxy log (last 20 lines):"$'\n'"$(tail -n 20 "${TARGET_LOG[haproxy]}" 2>/dev/null)"
    die "haproxy check failed: GET $url returned status $status with $size bytes (expected 200, 1024 bytes)"
  fi
}

# --------------------------------------------------------------- measuring --

# run_wrk TARGET SECONDS OUTFILE
run_wrk() {
  local target=$1 seconds=$2 out=$3
  local args=(-t"$THREADS" -c"$CONNECTIONS" -d"${seconds}s" --latency)
  case $target in
    direct) args+=("$ORIGIN_URL") ;;
    proxy | squid | tinyproxy)
      args+=(-s "$BENCH_DIR/proxy.lua" "http://127.0.0.1:${TARGET_PORT[$target]}") ;;
    haproxy) args+=("http://127.0.0.1:${TARGET_PORT[haproxy]}/1k") ;;
  esac
  BENCH_ORIGIN_URL=$ORIGIN_URL \
    BENCH_ORIGIN_HOST=127.0.0.1:$ORIGIN_PORT \
    BENCH_PROXY_AUTH="Basic $AUTH_B64" \
    timeout --foreground -k 5 $((seconds + 30)) wrk "${args[@]}" >"$out" 2>&1 ||
    die "wrk failed for $target:"$'\n'"$(tail -n 10 "$out")"
}

# parse_wrk FILE -> one tab-separated line:
# req/s  p50_ms  p99_ms  non_2xx_3xx  sock_connect  sock_read  sock_write  sock_timeout  requests
parse_wrk() {
  awk '
    function to_ms(value,   number, unit) {
      number = value + 0
      unit = value
      sub(/^[0-9.]+/, "", unit)
      if (unit == "us") return number / 1000
      if (unit == "ms") return number
      if (unit == "s")  return number * 1000
      if (unit == "m")  return number * 60000
      if (unit == "h")  return number * 3600000
      return "bad-unit:" value
    }
    BEGIN { non2xx = 0; sc = 0; sr = 0; sw = 0; st = 0 }
    /^Requests\/sec:/               { rps = $2 }
    /^[ \t]+50%[ \t]/               { p50 = to_ms($2) }
    /^[ \t]+99%[ \t]/               { p99 = to_ms($2) }
    /requests in/                   { requests = $1 }
    /Non-2xx or 3xx responses:/     { non2xx = $NF }
    /Socket errors:/ {
      # Socket errors: connect 0, read 0, write 0, timeout 0
      sc = $4 + 0; sr = $6 + 0; sw = $8 + 0; st = $10 + 0
    }
    END {
      if (rps == "" || p50 == "" || p99 == "" || requests == "") exit 1
      if (p50 ~ /bad/ || p99 ~ /bad/) exit 1
      printf "%s\t%.4f\t%.4f\t%d\t%d\t%d\t%d\t%d\t%d\n", rps, p50, p99, non2xx, sc, sr, sw, st, requests
    }
  ' "$1"
}

measure() {
  local results=$1 raw_dir=$OUT_DIR/raw round target line i=0 total
  total=$((ROUNDS * ${#SELECTED[@]}))
  rm -rf "$raw_dir"
  mkdir -p "$raw_dir"
  : >"$results"

  if ((WARMUP > 0)); then
    for target in "${SELECTED[@]}"; do
      log "warm-up: $target (${WARMUP}s)"
      run_wrk "$target" "$WARMUP" "$raw_dir/$target-warmup.txt"
    done
    sleep 1
  fi

  # The order reverses every round (A B C, C B A, ...) so that drift (thermal, noisy
  # neighbours) hits every target alike; ratios are also taken round by round (paired).
  local order=()
  for ((round = 1; round <= ROUNDS; round++)); do
    order=("${SELECTED[@]}")
    if ((round % 2 == 0)); then
      order=()
      for ((j = ${#SELECTED[@]} - 1; j >= 0; j--)); do order+=("${SELECTED[j]}"); done
    fi
    for target in "${order[@]}"; do
      i=$((i + 1))
      log "run $i/$total: $target, round $round (${DURATION}s)"
      run_wrk "$target" "$DURATION" "$raw_dir/$target-$round.txt"
      line=$(parse_wrk "$raw_dir/$target-$round.txt") ||
        die "could not parse wrk output:"$'\n'"$(cat "$raw_dir/$target-$round.txt")"
      printf '%s\t%d\t%s\n' "$target" "$round" "$line" >>"$results"
      log "  $(awk -F'\t' '{ printf "%s req/s, p50 %.3f ms, p99 %.3f ms, non-2xx/3xx %d, socket errors %d",
        $1, $2, $3, $4, $5 + $6 + $7 + $8 }' <<<"$line")"
      if ((i < total)); then sleep 1; fi
    done
  done
}

# ---------------------------------------------------------------- reporting --

first_line() { "$@" 2>&1 | head -n 1 || true; }

write_json() {
  local results=$1 json=$2 commit dirty=false swift_version target pid rss
  local peak_rss='{}' versions='{}' bin_built=""
  commit=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo "none")
  [[ -n $(git -C "$REPO_ROOT" status --porcelain 2>/dev/null) ]] && dirty=true
  if command -v swift >/dev/null; then
    swift_version=$(first_line swift --version)
  else
    swift_version=unavailable
  fi
  # Peak resident memory (VmHWM) of each server target's main process.
  for target in ${SELECTED[@]+"${SELECTED[@]}"}; do
    pid=${TARGET_PID[$target]-}
    [[ -n $pid && -r /proc/$pid/status ]] || continue
    rss=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
    [[ $rss =~ ^[0-9]+$ ]] && peak_rss=$(jq -c --arg t "$target" --argjson v "$rss" '.[$t] = $v' <<<"$peak_rss")
  done
  # The binary may be older than HEAD (built before the last commits).
  if wants proxy && [[ -n $PORTCULLIS ]]; then
    bin_built=$(date -u -r "$PORTCULLIS" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || true)
  fi
  [[ -n $SQUID ]] && versions=$(jq -c --arg v "$(first_line "$SQUID" -v | sed 's/^Squid Cache: Version /Squid /')" '.squid = $v' <<<"$versions")
  [[ -n $TINYPROXY ]] && versions=$(jq -c --arg v "$(first_line "$TINYPROXY" -v)" '.tinyproxy = $v' <<<"$versions")
  [[ -n $HAPROXY ]] && versions=$(jq -c --arg v "$(first_line "$HAPROXY" -v | awk '{ print "HAProxy " $3 }')" '.haproxy = $v' <<<"$versions")

  jq -n \
    --rawfile tsv "$results" \
    --argjson nproc "$(nproc)" \
    --arg kernel "$(uname -r)" \
    --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --arg commit "$commit" \
    --argjson dirty "$dirty" \
    --arg swift "$swift_version" \
    --arg wrk "$(first_line wrk --version | awk '{ print $2 }')" \
    --arg nginx "$(first_line "$NGINX" -v | sed 's/^nginx version: //')" \
    --arg cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
    --argjson duration "$DURATION" --argjson rounds "$ROUNDS" \
    --argjson connections "$CONNECTIONS" --argjson threads "$THREADS" \
    --argjson warmup "$WARMUP" \
    --arg portcullis "${PORTCULLIS:-}" \
    --arg bin_built "$bin_built" \
    --argjson peak_rss "$peak_rss" \
    --argjson versions "$versions" \
    --argjson targets "$(printf '%s\n' "${SELECTED[@]}" | jq -R . | jq -s .)" '
    def median: sort | if length == 0 then null
      elif length % 2 == 1 then .[length / 2 | floor]
      else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def r(n): if . == null then null else (. * pow(10; n) | round) / pow(10; n) end;
    def ratio(a; b): if a == null or b == null or b == 0 then null else a / b | r(3) end;
    # The median over rounds of a / b within each round: robust to the machine getting
    # faster or slower between rounds, which the ratio of medians is not.
    def paired($a; $b): [$a.rounds[] as $x | $b.rounds[] | select(.round == $x.round)
        | select(.requests_per_sec > 0) | $x.requests_per_sec / .requests_per_sec] | median | r(3);
    "tinyproxy answers HTTP/1.1 without Connection: close and then closes the connection after every response; wrk counts each close as a socket read error and reconnects, so up to one read error per request is expected and is not a failed request" as $tinyproxy_note
    | def describe: {
      direct: "wrk -> nginx",
      proxy: "wrk -> Portcullis (forward proxy, Basic auth, bcrypt cost 5 htpasswd) -> nginx",
      squid: "wrk -> Squid (forward proxy, Basic auth via basic_ncsa_auth on the same htpasswd, credentialsttl 2 hours, no cache) -> nginx",
      tinyproxy: "wrk -> tinyproxy (forward proxy, BasicAuth; closes the client connection after every response) -> nginx",
      haproxy: "wrk -> HAProxy (mode http reverse proxy, no auth, keep-alive both sides, http-reuse always) -> nginx"
    }[.];

    ($tsv | split("\n") | map(select(length > 0) | split("\t")
      | {target: .[0], round: (.[1] | tonumber),
         requests_per_sec: (.[2] | tonumber),
         latency_p50_ms: (.[3] | tonumber), latency_p99_ms: (.[4] | tonumber),
         non_2xx_3xx: (.[5] | tonumber),
         socket_errors: {connect: (.[6] | tonumber), read: (.[7] | tonumber),
                         write: (.[8] | tonumber), timeout: (.[9] | tonumber)},
         requests: (.[10] | tonumber)}
      | .socket_errors.total = (.socket_errors | add))) as $rows

    | (reduce $targets[] as $t ({};
        ($rows | map(select(.target == $t)) | map(del(.target))) as $mine
        | .[$t] = {
            description: ($t | describe),
            rounds: $mine,
            median: {
              requests_per_sec: ($mine | map(.requests_per_sec) | median | r(2)),
              latency_p50_ms: ($mine | map(.latency_p50_ms) | median | r(3)),
              latency_p99_ms: ($mine | map(.latency_p99_ms) | median | r(3))
            },
            total_requests: ($mine | map(.requests) | add),
            total_non_2xx_3xx: ($mine | map(.non_2xx_3xx) | add),
            total_socket_errors: ($mine | map(.socket_errors.total) | add)
          }
        | if $t == "tinyproxy" then .[$t].note = $tinyproxy_note else . end
        | if $peak_rss[$t] then .[$t].peak_rss_kib = $peak_rss[$t] else . end)) as $by_target

    # target / direct, for every target measured next to direct
    | (if $by_target.direct then
        reduce ($targets[] | select(. != "direct")) as $t ({};
          .[$t] = {
            throughput_ratio: ratio($by_target[$t].median.requests_per_sec; $by_target.direct.median.requests_per_sec),
            throughput_ratio_paired: paired($by_target[$t]; $by_target.direct),
            added_p50_ms: ($by_target[$t].median.latency_p50_ms - $by_target.direct.median.latency_p50_ms | r(3)),
            added_p99_ms: ($by_target[$t].median.latency_p99_ms - $by_target.direct.median.latency_p99_ms | r(3))
          })
      else null end) as $vs_direct

    # Portcullis / each peer: > 1 throughput means Portcullis serves more;
    # < 1 latency means Portcullis answers faster.
    | (if $by_target.proxy then
        reduce ($targets[] | select(. == "squid" or . == "tinyproxy" or . == "haproxy")) as $t ({};
          .[$t] = {
            throughput_ratio: ratio($by_target.proxy.median.requests_per_sec; $by_target[$t].median.requests_per_sec),
            throughput_ratio_paired: paired($by_target.proxy; $by_target[$t]),
            p50_ratio: ratio($by_target.proxy.median.latency_p50_ms; $by_target[$t].median.latency_p50_ms),
            p99_ratio: ratio($by_target.proxy.median.latency_p99_ms; $by_target[$t].median.latency_p99_ms)
          })
        | if length == 0 then null else . end
      else null end) as $portcullis_vs

    | {
        benchmark: "keep-alive GET 1 KiB, Basic auth",
        machine: {nproc: $nproc, kernel: $kernel, cpu: $cpu, date: $date,
                  git_commit: $commit, git_dirty: $dirty, swift_version: $swift,
                  wrk_version: $wrk, nginx_version: $nginx, peer_versions: $versions},
        settings: {duration_s: $duration, rounds: $rounds, connections: $connections,
                   threads: $threads, warmup_s: $warmup, targets: $targets,
                   portcullis_bin: (if $targets | index("proxy") then $portcullis else null end),
                   portcullis_bin_modified: (if $bin_built == "" then null else $bin_built end)},
        targets: $by_target,
        comparison: (if $by_target.direct and $by_target.proxy then {
            throughput_ratio_proxy_over_direct: $vs_direct.proxy.throughput_ratio,
            throughput_ratio_proxy_over_direct_paired: $vs_direct.proxy.throughput_ratio_paired,
            added_p50_ms: $vs_direct.proxy.added_p50_ms,
            added_p99_ms: $vs_direct.proxy.added_p99_ms
          } else null end),
        vs_direct: $vs_direct,
        portcullis_vs: $portcullis_vs
      }' >"$json"
}

render_markdown() {
  jq -r '
    def pretty: {direct: "direct (nginx)", proxy: "proxy (Portcullis, Basic auth)",
      squid: "squid (Squid, Basic auth)", tinyproxy: "tinyproxy (tinyproxy, Basic auth)",
      haproxy: "haproxy (HAProxy reverse proxy, no auth)"}[.];
    def short: {proxy: "Portcullis", squid: "Squid", tinyproxy: "tinyproxy", haproxy: "HAProxy"}[.];
    # Fixed decimals (jq 1.6 has no printf): 1.8 | f(3) -> "1.800".
    def f(n): if . == null then "n/a" elif n == 0 then round | tostring else
      (. * pow(10; n) | round) as $i
      | ($i | fabs | tostring) as $digits
      | ((("0" * (n + 1 - ($digits | length))) // "") + $digits)
      | (if $i < 0 then "-" else "" end) + .[0:length - n] + "." + .[length - n:]
      end;
    def signed(n): if . == null then "n/a" elif . >= 0 then "+" + f(n) else f(n) end;
    .settings as $s | .machine as $m |
    "## Portcullis bench — \(.benchmark)",
    "",
    "- \($m.date) · commit `\($m.git_commit)`\(if $m.git_dirty then " (dirty)" else "" end) · \($m.swift_version)\(
      if $s.portcullis_bin_modified then " · Portcullis binary modified \($s.portcullis_bin_modified)" else "" end)",
    "- \($m.nproc) CPUs (\($m.cpu)), kernel \($m.kernel), wrk \($m.wrk_version), \($m.nginx_version)\(
      ($m.peer_versions // {}) | to_entries | map(", " + .value) | join(""))",
    "- `wrk -t\($s.threads) -c\($s.connections) -d\($s.duration_s)s --latency`, \($s.rounds) round(s) per target, order reversed every round, \($s.warmup_s) s warm-up; medians over rounds (paired: median of the ratios within each round), errors summed over rounds",
    "",
    "| target | req/s | p50 (ms) | p99 (ms) | non-2xx/3xx | socket errors |",
    "| --- | ---: | ---: | ---: | ---: | ---: |",
    (.settings.targets[] as $t | .targets[$t] |
      "| \($t | pretty) | \(.median.requests_per_sec | f(0)) | \(.median.latency_p50_ms | f(3)) | \(.median.latency_p99_ms | f(3)) | \(.total_non_2xx_3xx) | \(.total_socket_errors) |"),
    (if .vs_direct and (.vs_direct | length > 0) then
      "",
      "| target / direct | throughput (medians) | throughput (paired) | added p50 (ms) | added p99 (ms) |",
      "| --- | ---: | ---: | ---: | ---: |",
      (.vs_direct as $v | .settings.targets[] | select(. != "direct") as $t | $v[$t] |
        "| \($t | short) / direct | \(.throughput_ratio | f(3)) | \(.throughput_ratio_paired | f(3)) | \(.added_p50_ms | signed(3)) | \(.added_p99_ms | signed(3)) |")
    else empty end),
    (if .portcullis_vs then
      "",
      "| Portcullis / peer | throughput (medians) | throughput (paired) | p50 | p99 |",
      "| --- | ---: | ---: | ---: | ---: |",
      (.portcullis_vs as $v | .settings.targets[] | select($v[.] != null) as $t | $v[$t] |
        "| Portcullis / \($t | short) | \(.throughput_ratio | f(3)) | \(.throughput_ratio_paired | f(3)) | \(.p50_ratio | f(3)) | \(.p99_ratio | f(3)) |")
    else empty end),
    # tinyproxy closes after every response, which wrk counts as read errors
    # (at most one per request); only other errors make its figures suspect.
    def unexpected_errors($t): if $t == "tinyproxy" then
        (.rounds | map(.socket_errors | .connect + .write + .timeout) | add)
        + (.rounds | map([.socket_errors.read - .requests, 0] | max) | add)
      else .total_socket_errors end;
    (.settings.targets[] as $t | .targets[$t] |
      select(.total_non_2xx_3xx > 0 or unexpected_errors($t) > 0) |
      "", "**Warning:** \($t | pretty) had \(.total_non_2xx_3xx) non-2xx/3xx responses and \(.total_socket_errors) socket errors; its figures are not comparable."),
    (if .targets.tinyproxy then "", "Note: \(.targets.tinyproxy.note)." else empty end),
    "",
    "<details><summary>Per round</summary>",
    "",
    "| target | round | req/s | p50 (ms) | p99 (ms) | non-2xx/3xx | socket errors (c/r/w/t) |",
    "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ([.settings.targets[] as $t | .targets[$t].rounds[] | . + {target: $t}] | sort_by(.round)[] |
      "| \(.target | pretty) | \(.round) | \(.requests_per_sec | f(0)) | \(.latency_p50_ms | f(3)) | \(.latency_p99_ms | f(3)) | \(.non_2xx_3xx) | \(.socket_errors | "\(.connect)/\(.read)/\(.write)/\(.timeout)") |"),
    "",
    "</details>"
  ' "$1"
}

# -------------------------------------------------------------------- main --

main() {
  validate_settings
  ensure_tools
  wants proxy && ensure_portcullis

  WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench.XXXXXX")
  # nginx workers (nobody), Squid (proxy) and tinyproxy (nobody) drop root and
  # must still reach their files in here.
  chmod 755 "$WORK_DIR"
  mkdir -p "$OUT_DIR"

  new_port ORIGIN_PORT
  ORIGIN_URL=http://127.0.0.1:$ORIGIN_PORT/1k
  start_nginx
  check_direct

  if wants proxy; then
    start_portcullis
    check_forward_proxy proxy
  fi
  if wants squid; then
    start_squid
    check_forward_proxy squid
  fi
  if wants tinyproxy; then
    start_tinyproxy
    check_forward_proxy tinyproxy
  fi
  if wants haproxy; then
    start_haproxy
    check_haproxy
  fi

  measure "$WORK_DIR/results.tsv"
  write_json "$WORK_DIR/results.tsv" "$OUT_DIR/latest.json"
  render_markdown "$OUT_DIR/latest.json" >"$OUT_DIR/latest.md"
  cat "$OUT_DIR/latest.md"
  log "wrote $OUT_DIR/latest.md, $OUT_DIR/latest.json and raw wrk output in $OUT_DIR/raw/"
}

main "$@"

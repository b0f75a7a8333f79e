#!/usr/bin/env bash
# Portcullis benchmark: keep-alive GET of a 1 KiB file, directly from a local
# nginx and through Portcullis with Basic auth, measured side by side with wrk.
# Everything runs on 127.0.0.1; all processes started here are stopped on exit.
# See bench/README.md for the knobs and the meaning of each figure.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
OUT_DIR=$BENCH_DIR/out

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-2}
TARGETS=${TARGETS:-direct proxy}
PORTCULLIS_BIN=${PORTCULLIS_BIN:-.build/release/portcullis}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1800}

AUTH_USER=bench
AUTH_PASS=benchpass
AUTH_B64=$(printf '%s:%s' "$AUTH_USER" "$AUTH_PASS" | base64)

WORK_DIR=""
CHILD_PIDS=()
NGINX=""
PORTCULLIS=""
PORTCULLIS_PID=""
ORIGIN_PORT=""
PROXY_PORT=""
ORIGIN_URL=""
SELECTED=()

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
  for name in DURATION ROUNDS CONNECTIONS THREADS WARMUP BUILD_TIMEOUT; do
    [[ ${!name} =~ ^[0-9]+$ ]] || die "$name must be a whole number, got '${!name}'"
  done
  ((DURATION > 0 && ROUNDS > 0 && CONNECTIONS > 0 && THREADS > 0)) ||
    die "DURATION, ROUNDS, CONNECTIONS and THREADS must be positive"
  ((CONNECTIONS >= THREADS)) || die "CONNECTIONS must be >= THREADS (wrk requirement)"

  for target in ${TARGETS//,/ }; do
    case $target in
      direct | proxy) SELECTED+=("$target") ;;
      *) die "unknown target '$target' in TARGETS (use: direct, proxy)" ;;
    esac
  done
  ((${#SELECTED[@]} > 0)) || die "TARGETS is empty"
}

wants() {
  local target
  for target in "${SELECTED[@]}"; do [[ $target == "$1" ]] && return 0; done
  return 1
}

find_nginx() {
  NGINX=$(command -v nginx || true)
  [[ -z $NGINX && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
  [[ -n $NGINX ]]
}

ensure_tools() {
  local missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  find_nginx || missing+=(nginx-light)
  command -v curl >/dev/null || missing+=(curl)
  command -v jq >/dev/null || missing+=(jq)
  if wants proxy; then
    command -v htpasswd >/dev/null || missing+=(apache2-utils)
  fi
  ((${#missing[@]} == 0)) && return 0

  [[ $(id -u) == 0 ]] || die "missing packages: ${missing[*]} (install them with apt-get as root)"
  log "installing missing packages: ${missing[*]}"
  # Another apt may be running; wait for its lock instead of failing.
  timeout 900 apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive timeout 900 \
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >&2
  find_nginx || die "nginx still not found after install"
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

pick_port() {
  local port i
  for ((i = 0; i < 100; i++)); do
    port=$((20000 + RANDOM % 30000))
    [[ $port == "$ORIGIN_PORT" || $port == "$PROXY_PORT" ]] && continue
    port_in_use "$port" || { echo "$port"; return 0; }
  done
  die "could not find a free port on 127.0.0.1"
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

start_portcullis() {
  local htpasswd_file=$WORK_DIR/htpasswd logfile=$WORK_DIR/portcullis.log
  htpasswd -cbBC 5 "$htpasswd_file" "$AUTH_USER" "$AUTH_PASS" 2>/dev/null ||
    die "htpasswd could not create $htpasswd_file"

  "$PORTCULLIS" serve --listen "127.0.0.1:$PROXY_PORT" --htpasswd "$htpasswd_file" \
    --allow-private-destinations --log-level warning >"$logfile" 2>&1 &
  PORTCULLIS_PID=$!
  CHILD_PIDS+=("$PORTCULLIS_PID")
  wait_for_port "$PROXY_PORT" "$PORTCULLIS_PID" portcullis "$logfile"
  log "portcullis listening on 127.0.0.1:$PROXY_PORT (pid $PORTCULLIS_PID)"
}

check_proxy() {
  local proxy=http://127.0.0.1:$PROXY_PORT status size
  status=$(http_status "$WORK_DIR/proxy.body" --proxy "$proxy" \
    --proxy-user "$AUTH_USER:$AUTH_PASS" --proxy-basic "$ORIGIN_URL")
  size=$(wc -c <"$WORK_DIR/proxy.body" 2>/dev/null || echo 0)
  if [[ $status != 200 || $size != 1024 ]]; then
    [[ -s $WORK_DIR/curl.err ]] && log "curl: $(tail -n 3 "$WORK_DIR/curl.err")"
    [[ -s $WORK_DIR/portcullis.log ]] &&
      log "portcullis log (last 20 lines):"$'\n'"$(tail -n 20 "$WORK_DIR/portcullis.log")"
    die "proxy check failed: GET $ORIGIN_URL via $proxy with Basic auth" \
      "returned status $status with $size bytes (expected 200 and 1024 bytes)"
  fi
  # Without credentials the proxy must refuse; otherwise we would not be measuring the auth path.
  status=$(http_status /dev/null --proxy "$proxy" "$ORIGIN_URL")
  [[ $status == 407 ]] || log "warning: without credentials the proxy answered $status (expected 407)"
}

# --------------------------------------------------------------- measuring --

# run_wrk TARGET SECONDS OUTFILE
run_wrk() {
  local target=$1 seconds=$2 out=$3
  local args=(-t"$THREADS" -c"$CONNECTIONS" -d"${seconds}s" --latency)
  case $target in
    direct) args+=("$ORIGIN_URL") ;;
    proxy) args+=(-s "$BENCH_DIR/proxy.lua" "http://127.0.0.1:$PROXY_PORT") ;;
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

  # Alternate targets so drift (thermal, noisy neighbours) hits both alike.
  for ((round = 1; round <= ROUNDS; round++)); do
    for target in "${SELECTED[@]}"; do
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
  local results=$1 json=$2 commit dirty=false swift_version peak_rss=null
  commit=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo "none")
  [[ -n $(git -C "$REPO_ROOT" status --porcelain 2>/dev/null) ]] && dirty=true
  if command -v swift >/dev/null; then
    swift_version=$(first_line swift --version)
  else
    swift_version=unavailable
  fi
  if [[ -n $PORTCULLIS_PID && -r /proc/$PORTCULLIS_PID/status ]]; then
    peak_rss=$(awk '/^VmHWM:/ { print $2 }' "/proc/$PORTCULLIS_PID/status")
  fi

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
    --argjson peak_rss "${peak_rss:-null}" \
    --argjson targets "$(printf '%s\n' "${SELECTED[@]}" | jq -R . | jq -s .)" '
    def median: sort | if length == 0 then null
      elif length % 2 == 1 then .[length / 2 | floor]
      else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def r(n): if . == null then null else (. * pow(10; n) | round) / pow(10; n) end;

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
            rounds: $mine,
            median: {
              requests_per_sec: ($mine | map(.requests_per_sec) | median | r(2)),
              latency_p50_ms: ($mine | map(.latency_p50_ms) | median | r(3)),
              latency_p99_ms: ($mine | map(.latency_p99_ms) | median | r(3))
            },
            total_non_2xx_3xx: ($mine | map(.non_2xx_3xx) | add),
            total_socket_errors: ($mine | map(.socket_errors.total) | add)
          })
      | if .proxy then .proxy.peak_rss_kib = $peak_rss else . end) as $by_target

    | {
        benchmark: "keep-alive GET 1 KiB, Basic auth",
        machine: {nproc: $nproc, kernel: $kernel, cpu: $cpu, date: $date,
                  git_commit: $commit, git_dirty: $dirty, swift_version: $swift,
                  wrk_version: $wrk, nginx_version: $nginx},
        settings: {duration_s: $duration, rounds: $rounds, connections: $connections,
                   threads: $threads, warmup_s: $warmup, targets: $targets,
                   portcullis_bin: (if $targets | index("proxy") then $portcullis else null end)},
        targets: $by_target,
        comparison: (if $by_target.direct and $by_target.proxy then {
            throughput_ratio_proxy_over_direct:
              ($by_target.proxy.median.requests_per_sec / $by_target.direct.median.requests_per_sec | r(3)),
            added_p50_ms: ($by_target.proxy.median.latency_p50_ms - $by_target.direct.median.latency_p50_ms | r(3)),
            added_p99_ms: ($by_target.proxy.median.latency_p99_ms - $by_target.direct.median.latency_p99_ms | r(3))
          } else null end)
      }' >"$json"
}

render_markdown() {
  jq -r '
    def pretty: {direct: "direct (nginx)", proxy: "proxy (Portcullis, Basic auth)"}[.];
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
    "- \($m.date) · commit `\($m.git_commit)`\(if $m.git_dirty then " (dirty)" else "" end) · \($m.swift_version)",
    "- \($m.nproc) CPUs (\($m.cpu)), kernel \($m.kernel), wrk \($m.wrk_version), \($m.nginx_version)",
    "- `wrk -t\($s.threads) -c\($s.connections) -d\($s.duration_s)s --latency`, \($s.rounds) round(s) per target, alternating, \($s.warmup_s) s warm-up; medians over rounds, errors summed over rounds",
    "",
    "| target | req/s | p50 (ms) | p99 (ms) | non-2xx/3xx | socket errors |",
    "| --- | ---: | ---: | ---: | ---: | ---: |",
    (.settings.targets[] as $t | .targets[$t] |
      "| \($t | pretty) | \(.median.requests_per_sec | f(0)) | \(.median.latency_p50_ms | f(3)) | \(.median.latency_p99_ms | f(3)) | \(.total_non_2xx_3xx) | \(.total_socket_errors) |"),
    (if .comparison then
      "",
      "| proxy/direct throughput | added p50 (ms) | added p99 (ms) |",
      "| ---: | ---: | ---: |",
      "| \(.comparison.throughput_ratio_proxy_over_direct | f(3)) | \(.comparison.added_p50_ms | signed(3)) | \(.comparison.added_p99_ms | signed(3)) |"
    else empty end),
    (.settings.targets[] as $t | .targets[$t] |
      select(.total_non_2xx_3xx > 0 or .total_socket_errors > 0) |
      "", "**Warning:** \($t | pretty) had \(.total_non_2xx_3xx) non-2xx/3xx responses and \(.total_socket_errors) socket errors; its figures are not comparable."),
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
  mkdir -p "$OUT_DIR"

  ORIGIN_PORT=$(pick_port)
  ORIGIN_URL=http://127.0.0.1:$ORIGIN_PORT/1k
  start_nginx
  check_direct

  if wants proxy; then
    PROXY_PORT=$(pick_port)
    start_portcullis
    check_proxy
  fi

  measure "$WORK_DIR/results.tsv"
  write_json "$WORK_DIR/results.tsv" "$OUT_DIR/latest.json"
  render_markdown "$OUT_DIR/latest.json" >"$OUT_DIR/latest.md"
  cat "$OUT_DIR/latest.md"
  log "wrote $OUT_DIR/latest.md, $OUT_DIR/latest.json and raw wrk output in $OUT_DIR/raw/"
}

main "$@"

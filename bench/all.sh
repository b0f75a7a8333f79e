#!/usr/bin/env bash
# Every figure of the benchmark issue in one command, about 15 minutes on 2 cores:
#   1. bench/run.sh     keep-alive GET 1 KiB: direct, Portcullis (Basic), Squid, tinyproxy, HAProxy
#   2. bench/digest.py  Digest vs Basic: Portcullis (MD5, SHA-256) and Squid (MD5)
#   3. bench/extras.py  start-up, CONNECT bulk vs Squid and socat, idle tunnels' RSS,
#                       Connection: close handshakes/s, login storm
#   4. bench/negotiate.py  NTLM and Negotiate keep-alive vs Basic; new-connection Kerberos
#                       handshakes vs Squid's negotiate_kerberos_auth (issue 19; its own throwaway
#                       KDC from scripts/kdc-test-server.sh; skipped with a note if it cannot run)
# run.sh installs what is missing (wrk, nginx-light, squid, tinyproxy, haproxy, …) and builds the
# release binary; socat is installed here for the extras. Loopback only; every script stops what
# it started. Writes bench/out/all.md (the reports, in that order) next to each script's own
# Markdown and JSON. The knobs of each script still apply (e.g. DURATION/ROUNDS for run.sh);
# QUICK=1 makes all four short (a smoke run of about 4 minutes, not figures to keep).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[all] %s\n' "$*" >&2; }

quick=()
if [[ ${QUICK:-0} == 1 ]]; then
  export DURATION=${DURATION:-3} ROUNDS=${ROUNDS:-1} WARMUP=${WARMUP:-1}
  quick=(--quick)
fi

bash bench/run.sh
if ! command -v socat >/dev/null; then
  [[ $(id -u) == 0 ]] || { log "socat is missing (apt-get install -y socat as root)"; exit 1; }
  log "installing socat"
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get -o DPkg::Lock::Timeout=600 install -y -qq socat >&2
fi
python3 bench/digest.py "${quick[@]}"
python3 bench/extras.py "${quick[@]}"
rm -f bench/out/negotiate.md
python3 bench/negotiate.py "${quick[@]}" || log "bench/negotiate.py failed (see above): no Negotiate/NTLM figures in all.md"
{
  cat bench/out/latest.md
  echo
  cat bench/out/digest.md
  echo
  cat bench/out/extras.md
  if [[ -f bench/out/negotiate.md ]]; then
    echo
    cat bench/out/negotiate.md
  fi
} > bench/out/all.md
log "wrote bench/out/all.md"

#!/usr/bin/env bash
# The whole test suite: unit tests (swift test) and integration tests that drive the real
# binary on 127.0.0.1 with curl, Python requests and local origins.
# Installs the Debian packages the tests need when they are missing (needs root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null || need+=(curl)
command -v git >/dev/null || need+=(git)
command -v wget >/dev/null || need+=(wget)
# npm: a real client of client-config's tests.
command -v npm >/dev/null || need+=(npm)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v mkpasswd >/dev/null || need+=(whois)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3 python3-pip)
[ -e /usr/include/crypt.h ] || need+=(libcrypt-dev)
[ -e /usr/include/sqlite3.h ] || need+=(libsqlite3-dev)
command -v squid >/dev/null || [ -x /usr/sbin/squid ] || need+=(squid)
command -v tinyproxy >/dev/null || [ -x /usr/bin/tinyproxy ] || need+=(tinyproxy)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql)
[ -e /usr/include/gssapi/gssapi.h ] || need+=(libkrb5-dev)
[ -e /usr/include/ldap.h ] || need+=(libldap-dev)
[ -e /usr/include/duktape.h ] || need+=(duktape-dev)
[ -x /usr/sbin/slapd ] || need+=(slapd)
command -v ldappasswd >/dev/null || need+=(ldap-utils)
# Real clients of the client matrix (Tests/integration/test_clients_*.py, docs/CLIENTS.md).
command -v go >/dev/null || need+=(golang-go)
[ -x /usr/lib/chromium/chromium ] || need+=(chromium)
command -v javac >/dev/null || need+=(openjdk-17-jdk-headless)
[ -d /usr/share/nodejs/undici ] || need+=(node-undici)
# The fleet (examples/fleet) and the graceful-restart scenario: HAProxy in front, nginx origins.
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
[ -x /usr/sbin/krb5kdc ] || need+=(krb5-kdc)
[ -x /usr/sbin/kadmin.local ] || need+=(krb5-admin-server)
command -v kinit >/dev/null || need+=(krb5-user)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi
# pyspnego (NTLM) and gssapi (Kerberos, built against libkrb5-dev) are the second clients of
# the Negotiate/NTLM tests; h2 is the HTTP/2 client of the TLS listener's; cryptography reads
# and makes test certificates.
# httpx and aiohttp are clients of the matrix; playwright drives Debian's Chromium (no browser
# download: the tests pass its executable).
python3 - <<'PY' || python3 -m pip install --quiet pytest requests prometheus-client pyspnego gssapi h2 cryptography httpx aiohttp playwright
import pytest, requests, prometheus_client, spnego, gssapi, h2, cryptography, httpx, aiohttp, playwright
PY

swift build --build-tests
# Unit and integration tests run with a throwaway PostgreSQL 15 (PORTCULLIS_TEST_POSTGRES_URL)
# and a throwaway Kerberos KDC (PORTCULLIS_TEST_KRB5_*) up; here their tests must run, never
# skip: a server that cannot start fails the run.
export PORTCULLIS_REQUIRE_POSTGRES=1 PORTCULLIS_REQUIRE_KDC=1 PORTCULLIS_REQUIRE_CLIENTS=1
PORTCULLIS_BIN="$(swift build --show-bin-path)/portcullis"
export PORTCULLIS_BIN
bash scripts/kdc-test-server.sh run bash scripts/postgres-test-server.sh run bash -c '
    set -euo pipefail
    swift test --skip-build
    python3 -m pytest -q Tests/integration "$@"
' test-suite "$@"
# The request/response/auth parsers under libFuzzer + ASan for a bounded time (FUZZ_SECONDS=0 skips).
if [ "${FUZZ_SECONDS:-60}" != 0 ]; then
    FUZZ_SECONDS=${FUZZ_SECONDS:-60} bash scripts/fuzz.sh
fi

#!/usr/bin/env bash
# Run `portcullis serve` on its embedded defaults (127.0.0.1:3128, users in
# <data dir>/portcullis.db, created on first run with a generated admin password).
# Installs the Debian libraries the build links against when they are missing (needs root or
# sudo), then builds in release mode and runs. Extra arguments go to `portcullis serve`.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -e /usr/include/crypt.h ] || need+=(libcrypt-dev)
[ -e /usr/include/sqlite3.h ] || need+=(libsqlite3-dev)
[ -e /usr/include/gssapi/gssapi.h ] || need+=(libkrb5-dev)
[ -e /usr/include/ldap.h ] || need+=(libldap-dev)
[ -e /usr/include/duktape.h ] || need+=(duktape-dev)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi
exec swift run -c release portcullis serve "$@"

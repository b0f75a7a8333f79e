#!/usr/bin/env bash
# A throwaway PostgreSQL 15 for the tests: a fresh data directory, a free loopback port, a
# database and a password-authenticated role (scram-sha-256) for portcullis.
#
#   postgres-test-server.sh run CMD [ARGS…]  start one in a temporary directory, run CMD with
#                                            PORTCULLIS_TEST_POSTGRES_* exported, then stop it
#                                            and delete it (also on failure or Ctrl-C)
#   postgres-test-server.sh start DIR        create one in DIR (first time) and start it; prints
#                                            the export lines (also kept in DIR/env)
#   postgres-test-server.sh stop DIR         stop it (the data stays; start DIR brings it back
#                                            on the same port: the tests use this to lose and
#                                            regain the database)
#
# PostgreSQL refuses to run as root: when run as root (the session and CI are), the server runs
# as the `postgres` user, which owns DIR.
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
SCRIPT="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"

as_server_user() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local dir=$1
    [ -x "$PG_BIN/initdb" ] || { echo "no PostgreSQL 15 in $PG_BIN (apt-get install postgresql)" >&2; return 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi
    if [ ! -f "$dir/env" ]; then
        local port password encoded
        port=$(free_port)
        # '@' and '/' make the URL need percent-encoding: the store must decode it.
        password="pc-$(head -c 18 /dev/urandom | base64 | tr -d '/+=')@/x"
        encoded=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$password")
        as_server_user "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
            -E UTF8 --no-instructions >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
        cat >>"$dir/data/postgresql.conf" <<EOF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
        as_server_user "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start >/dev/null
        as_server_user "$PG_BIN/psql" -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
            -v pw="$password" >/dev/null <<'SQL'
CREATE ROLE portcullis LOGIN CREATEDB PASSWORD :'pw';
CREATE DATABASE portcullis OWNER portcullis;
SQL
        cat >"$dir/env" <<EOF
export PORTCULLIS_TEST_POSTGRES_URL='postgres://portcullis:$encoded@127.0.0.1:$port/portcullis?sslmode=disable'
export PORTCULLIS_TEST_POSTGRES_PASSWORD='$password'
export PORTCULLIS_TEST_POSTGRES_DIR='$dir'
EOF
        chmod 600 "$dir/env"
    else
        as_server_user "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start >/dev/null
    fi
    cat "$dir/env"
}

stop() {
    as_server_user "$PG_BIN/pg_ctl" -D "$1/data" -m fast -w -t 30 stop >/dev/null
}

case "${1:-}" in
start) start "$2" ;;
stop) stop "$2" ;;
run)
    shift
    dir=$(mktemp -d /tmp/portcullis-pg.XXXXXX)
    cleanup() {
        stop "$dir" 2>/dev/null || true
        rm -rf "$dir"
    }
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    if start "$dir" >/dev/null; then
        # shellcheck disable=SC1091
        source "$dir/env"
        echo "PostgreSQL test server up: ${PORTCULLIS_TEST_POSTGRES_URL%%:*}://portcullis:***@${PORTCULLIS_TEST_POSTGRES_URL#*@}"
    else
        echo "PostgreSQL test server could not start (see above); its tests will skip, or fail under CI" >&2
    fi
    "$@"
    ;;
*)
    echo "usage: $SCRIPT run CMD… | start DIR | stop DIR" >&2
    exit 2
    ;;
esac

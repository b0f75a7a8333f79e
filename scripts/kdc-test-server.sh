#!/usr/bin/env bash
# A throwaway MIT Kerberos KDC for the tests: realm PORTCULLIS.TEST on a free loopback port,
# its own krb5.conf, a user principal with a password and a keytab for the proxy's HTTP/
# service principals (HTTP/localhost and HTTP/<this host's name>, beside host/localhost).
#
#   kdc-test-server.sh run CMD [ARGS…]  start one in a temporary directory, run CMD with
#                                       KRB5_CONFIG and PORTCULLIS_TEST_KRB5_* exported, then
#                                       stop it and delete it (also on failure or Ctrl-C)
#   kdc-test-server.sh start DIR        create one in DIR (first time) and start it; prints the
#                                       export lines (also kept in DIR/env)
#   kdc-test-server.sh stop DIR         stop it (the database stays)
#
# Exported: KRB5_CONFIG (clients and the proxy read it), KRB5CCNAME (a ticket cache in DIR, so
# the caller's own is never touched), PORTCULLIS_TEST_KRB5_REALM, _KDC (host:port), _USER and
# _PASSWORD (a principal to kinit), _KEYTAB (the service keys), _WRONG_KEYTAB (HTTP/localhost
# with a key the KDC does not have: a proxy using it must fail with a clear reason).
# Needs krb5-kdc, krb5-admin-server (kadmin.local) and krb5-user (kinit); no root needed.
set -euo pipefail

SCRIPT="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
REALM=PORTCULLIS.TEST
SBIN=${KRB5_SBIN:-/usr/sbin}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local dir=$1
    [ -x "$SBIN/krb5kdc" ] || { echo "no MIT KDC in $SBIN (apt-get install krb5-kdc krb5-admin-server krb5-user)" >&2; return 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ ! -f "$dir/env" ]; then
        local port host password master
        port=$(free_port)
        host=$(hostname -f 2>/dev/null || hostname)
        password="pc-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')"
        master="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
        cat >"$dir/krb5.conf" <<EOF
[libdefaults]
    default_realm = $REALM
    dns_lookup_kdc = false
    dns_lookup_realm = false
    rdns = false
    udp_preference_limit = 1
    default_ccache_name = FILE:$dir/ccache

[realms]
    $REALM = {
        kdc = 127.0.0.1:$port
        admin_server = 127.0.0.1:$port
    }

[domain_realm]
    localhost = $REALM
    $host = $REALM
EOF
        cat >"$dir/kdc.conf" <<EOF
[kdcdefaults]
    kdc_listen = 127.0.0.1:$port
    kdc_tcp_listen = 127.0.0.1:$port

[realms]
    $REALM = {
        database_name = $dir/principal
        key_stash_file = $dir/stash
        acl_file = $dir/kadm5.acl
        max_life = 10h
        max_renewable_life = 1d
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    }

[logging]
    kdc = FILE:$dir/kdc.log
EOF
        : >"$dir/kadm5.acl"
        export KRB5_CONFIG="$dir/krb5.conf" KRB5_KDC_PROFILE="$dir/kdc.conf"
        "$SBIN/kdb5_util" create -s -r "$REALM" -P "$master" >"$dir/create.log" 2>&1 \
            || { cat "$dir/create.log" >&2; return 1; }
        {
            echo "addprinc -pw $password alice"
            echo "addprinc -randkey HTTP/localhost"
            [ "$host" = localhost ] || echo "addprinc -randkey HTTP/$host"
            # A keytab often holds other services' keys too: a ticket for one is not for the proxy.
            echo "addprinc -randkey host/localhost"
            echo "ktadd -k $dir/http.keytab HTTP/localhost"
            echo "ktadd -k $dir/http.keytab host/localhost"
            [ "$host" = localhost ] || echo "ktadd -k $dir/http.keytab HTTP/$host"
            # Same name, a key the KDC never had: what a stale keytab looks like.
            echo "addprinc -randkey HTTP/wrong.invalid"
        } | "$SBIN/kadmin.local" -r "$REALM" >"$dir/kadmin.log" 2>&1 || { cat "$dir/kadmin.log" >&2; return 1; }
        python3 - "$dir/wrong.keytab" <<'PY'
# A keytab (format 0x502) with one entry HTTP/localhost@PORTCULLIS.TEST, kvno 1, aes256, random key.
import os, struct, sys, time
def s(b): return struct.pack(">H", len(b)) + b
body = struct.pack(">H", 2) + s(b"PORTCULLIS.TEST") + s(b"HTTP") + s(b"localhost")
body += struct.pack(">IIBH", 1, int(time.time()), 1, 18) + s(os.urandom(32))
with open(sys.argv[1], "wb") as f:
    f.write(b"\x05\x02" + struct.pack(">i", len(body)) + body)
PY
        cat >"$dir/env" <<EOF
export KRB5_CONFIG='$dir/krb5.conf'
export KRB5_KDC_PROFILE='$dir/kdc.conf'
export KRB5CCNAME='FILE:$dir/ccache'
export PORTCULLIS_TEST_KRB5_DIR='$dir'
export PORTCULLIS_TEST_KRB5_REALM='$REALM'
export PORTCULLIS_TEST_KRB5_KDC='127.0.0.1:$port'
export PORTCULLIS_TEST_KRB5_USER='alice'
export PORTCULLIS_TEST_KRB5_PASSWORD='$password'
export PORTCULLIS_TEST_KRB5_KEYTAB='$dir/http.keytab'
export PORTCULLIS_TEST_KRB5_WRONG_KEYTAB='$dir/wrong.keytab'
EOF
        chmod 600 "$dir/env" "$dir/http.keytab" "$dir/wrong.keytab"
    fi
    # shellcheck disable=SC1091
    source "$dir/env"
    "$SBIN/krb5kdc" -n >>"$dir/kdc.out" 2>&1 &
    echo $! >"$dir/kdc.pid"
    # Ready when it answers: an AS request for an unknown principal gets "not found", not a timeout.
    local i
    for i in $(seq 1 100); do
        local answer
        answer=$(kinit nobody@"$REALM" </dev/null 2>&1 || true)
        case "$answer" in
        *"not found"*)
            cat "$dir/env"
            return 0
            ;;
        esac
        sleep 0.1
    done
    echo "the KDC did not answer within 10 s; its log:" >&2
    cat "$dir/kdc.log" "$dir/kdc.out" >&2 2>/dev/null || true
    return 1
}

stop() {
    local pid
    pid=$(cat "$1/kdc.pid" 2>/dev/null || true)
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
}

case "${1:-}" in
start) start "$2" ;;
stop) stop "$2" ;;
run)
    shift
    dir=$(mktemp -d /tmp/portcullis-kdc.XXXXXX)
    cleanup() {
        stop "$dir" 2>/dev/null || true
        rm -rf "$dir"
    }
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    if start "$dir" >/dev/null; then
        # shellcheck disable=SC1091
        source "$dir/env"
        echo "Kerberos test KDC up: realm $PORTCULLIS_TEST_KRB5_REALM at $PORTCULLIS_TEST_KRB5_KDC"
    else
        echo "Kerberos test KDC could not start (see above); its tests will skip, or fail under CI" >&2
    fi
    "$@"
    ;;
*)
    echo "usage: $SCRIPT run CMD… | start DIR | stop DIR" >&2
    exit 2
    ;;
esac

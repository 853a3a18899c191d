#!/usr/bin/env bash
# Prints the URL of a PostgreSQL server the tests may use (they work in schemas of their own,
# dropped afterwards): $RASTERCAST_TEST_DATABASE_URL when set; else the server on
# 127.0.0.1:5432 when it lets user postgres in without a password; else a throwaway cluster in
# /tmp on port 25432, started now (and Debian's postgresql installed first when missing).
set -euo pipefail

if [ -n "${RASTERCAST_TEST_DATABASE_URL:-}" ]; then
    echo "$RASTERCAST_TEST_DATABASE_URL"
    exit 0
fi
# Overridable so that the throwaway path can be tried on a machine that has a server.
PORT=${RASTERCAST_TEST_PG_PORT:-5432}
answers() {
    command -v psql >/dev/null 2>&1 &&
        PGCONNECT_TIMEOUT=3 psql -w -h 127.0.0.1 -p "$1" -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1
}
if answers "$PORT"; then
    echo "postgres://postgres@127.0.0.1:$PORT/postgres"
    exit 0
fi

# Below the ephemeral port range (32768 and up), where a client socket could hold it.
OWN_PORT=25432
if ! answers "$OWN_PORT"; then
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "Installing postgresql for the tests" >&2
        $sudo apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >&2
    fi
    BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    DIR=/tmp/rastercast-test-pg-$(id -u)
    # PostgreSQL refuses to run as root: as root, the cluster belongs to user postgres.
    as_owner() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
    if [ ! -f "$DIR/PG_VERSION" ]; then
        rm -rf "$DIR"
        mkdir -p "$DIR"
        [ "$(id -u)" -ne 0 ] || chown postgres "$DIR"
        as_owner "$BIN/initdb" -D "$DIR" -U postgres --auth=trust >/dev/null
    fi
    as_owner "$BIN/pg_ctl" -D "$DIR" -l "$DIR/log" -w \
        -o "-p $OWN_PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
fi
echo "postgres://postgres@127.0.0.1:$OWN_PORT/postgres"

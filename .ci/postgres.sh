# Sourced by .ci/run: start a throw-away PostgreSQL server on 127.0.0.1 and export its URL for
# the sweep tests (VECO2_TEST_PG_URL).  Stopped when the CI script exits.
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
PG_PORT=${PG_PORT:-55432}
PGDATA=$(mktemp -d /tmp/veco2-pg.XXXXXX)
chown postgres "$PGDATA"
su postgres -s /bin/sh -c "'$PG_BIN/initdb' -D '$PGDATA' -A trust -U postgres" >/dev/null
su postgres -s /bin/sh -c "'$PG_BIN/pg_ctl' -D '$PGDATA' -l '$PGDATA/server.log' -w \
  -o '-c listen_addresses=127.0.0.1 -p $PG_PORT -k /tmp' start" >/dev/null
su postgres -s /bin/sh -c "'$PG_BIN/createdb' -h 127.0.0.1 -p $PG_PORT veco2_test"
export VECO2_TEST_PG_URL="postgresql+psycopg2://postgres@127.0.0.1:$PG_PORT/veco2_test"
trap "su postgres -s /bin/sh -c \"'$PG_BIN/pg_ctl' -D '$PGDATA' -m fast stop\" >/dev/null 2>&1 || true" EXIT

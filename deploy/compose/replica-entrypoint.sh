#!/bin/sh
# replica-entrypoint.sh NAME - a streaming replica on slot NAME of the primary, started as
# the postgres user. The first time, its data directory is cloned with pg_basebackup (or,
# with RESTORE_FROM_ARCHIVE=1, restored from the archive's newest base backup by walhalla
# restore, loading the primary not at all); after that it just starts. Its restore_command
# asks walhalla's fetch server first, then the archive, for WAL the primary no longer has.
set -eu
name=$1
primary=${PRIMARY_HOST:-primary}
# The walreceiver's libpq reads the password from the server's environment.
PGPASSWORD=$(cat /run/secrets/replicator-password)
export PGPASSWORD
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ "${RESTORE_FROM_ARCHIVE:-0}" = 1 ]; then
    walhalla restore --to "$PGDATA" --standby --server "$WALHALLA_SERVER"
  else
    pg_basebackup -h "$primary" -U replicator -D "$PGDATA" -X stream -c fast
    touch "$PGDATA/standby.signal"
  fi
  cat >>"$PGDATA/postgresql.auto.conf" <<CONF
primary_conninfo = 'host=$primary user=replicator application_name=$name'
primary_slot_name = '$name'
restore_command = 'walhalla fetch --server $WALHALLA_SERVER %f %p'
recovery_target_timeline = 'latest'
CONF
fi
# The image makes $PGDATA world-writable for its own entrypoint, which this one replaces.
chmod 0700 "$PGDATA"
exec postgres

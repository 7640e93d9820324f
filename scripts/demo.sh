#!/usr/bin/env bash
# demo.sh - walhalla's archive hooks on a throwaway PostgreSQL: initdb a cluster in a temporary
# directory, archive its WAL with archive_command = 'walhalla push %p' into a local archive
# directory, generate some WAL, show what was archived, fetch a segment back as restore_command
# would and compare it with the server's, then clean everything up.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

pg_bin=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
if [ ! -x "$pg_bin/pg_ctl" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  else
    echo "demo: PostgreSQL server binaries not found; install them (apt-get install postgresql) or set PG_BIN" >&2
    exit 1
  fi
fi

echo "== building walhalla"
cargo build --release --quiet --manifest-path "$root/Cargo.toml"

work=$(mktemp -d /tmp/walhalla-demo.XXXXXX)
chmod 755 "$work"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres: "$work"
cleanup() {
  [ -f "$work/data/postmaster.pid" ] && as_pg "$pg_bin/pg_ctl" -D "$work/data" -m immediate -w stop >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
install -m 755 "$root/target/release/walhalla" "$work/walhalla"
wh=$work/walhalla archive=$work/archive
psql() { "$pg_bin/psql" -X -A -t -q -h "$work" -p 5432 -U postgres -d postgres -c "$1"; }

echo "== a throwaway PostgreSQL in $work/data, archiving to $archive"
as_pg "$pg_bin/initdb" -A trust -U postgres --wal-segsize=1 -D "$work/data" >/dev/null
cat >> "$work/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$work'
archive_mode = on
archive_command = '$wh --archive $archive push %p'
wal_keep_size = '64MB'
CONF
as_pg "$pg_bin/pg_ctl" -D "$work/data" -l "$work/server.log" -w start >/dev/null

echo "== generating WAL"
psql "CREATE TABLE demo AS SELECT g AS id, md5(g::text) AS payload FROM generate_series(1, 100000) g"
for _ in 1 2 3; do psql "INSERT INTO demo SELECT id, payload FROM demo LIMIT 20000" ; last=$(psql "SELECT pg_walfile_name(pg_switch_wal())"); done
until [ "$(psql "SELECT coalesce(last_archived_wal, '') >= '$last' FROM pg_stat_archiver")" = t ]; do sleep 0.2; done

echo "== pg_stat_archiver"
psql "SELECT 'archived ' || archived_count || ', failed ' || failed_count || ', last ' || last_archived_wal FROM pg_stat_archiver"
echo "== the archive (compressed, checksummed, under the cluster's system identifier)"
(cd "$archive" && find . -type f -printf '%10s  %P\n' | sort -k2)

echo "== restore_command: walhalla fetch $last"
(cd "$work/data" && as_pg "$wh" --archive "$archive" fetch "$last" "$work/restored")
cmp "$work/restored" "$work/data/pg_wal/$last" && echo "fetched $last: identical to the server's $(stat -c %s "$work/restored")-byte segment"
echo "== done; cleaning up"

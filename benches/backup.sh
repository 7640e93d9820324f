#!/usr/bin/env bash
# backup.sh - base backup and restore, walhalla beside pg_basebackup, in ONE run on one database.
#
#   sudo benches/backup.sh
#
# Builds a pgbench database (SCALE, default 150: about 2.2 GiB) on PostgreSQL 15 (Debian's), with
# archive_command = walhalla push, then times REPS rounds (default 2) of, interleaved:
#   pg_basebackup -Ft -Xnone               (tar, no compression)
#   pg_basebackup -Ft -Xnone -Z client-zstd:3
#   walhalla backup --fast                 (zstd-3 into a local archive)
#   tar -x of the uncompressed backup      (the restore pg_basebackup users do by hand)
#   walhalla restore                       (into an empty directory, every file verified)
# and prints wall time, CPU time, peak RSS (GNU time) and stored size of each.
# Env: SCALE, REPS, WORK (scratch, default /tmp/walhalla-backup-bench; removed at the end).
# Needs root, Debian's postgresql-15, GNU time (/usr/bin/time).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SCALE=${SCALE:-150}
REPS=${REPS:-2}
WORK=${WORK:-/tmp/walhalla-backup-bench}
PG=/usr/lib/postgresql/15/bin
PORT=5493

cargo build --release --quiet --manifest-path "$root/Cargo.toml"
rm -rf "$WORK"
mkdir -p "$WORK"
chown postgres: "$WORK"
install -m 755 "$root/target/release/walhalla" "$WORK/walhalla"
as_pg() { runuser -u postgres -- "$@"; }
stop() { as_pg "$PG/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null 2>&1 || true; }
trap 'stop; rm -rf "$WORK"' EXIT

as_pg "$PG/initdb" -A trust -U postgres -D "$WORK/data" >/dev/null
cat >>"$WORK/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_wal_size = '4GB'
archive_mode = on
archive_command = '$WORK/walhalla --archive $WORK/archive push %p'
EOF
as_pg "$PG/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
echo "pgbench -i -s $SCALE ..."
as_pg "$PG/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres 2>&1 | tail -n 1
as_pg "$PG/psql" -h "$WORK" -p "$PORT" -U postgres -qc CHECKPOINT
size=$(as_pg "$PG/psql" -h "$WORK" -p "$PORT" -U postgres -Atc "SELECT pg_size_pretty(sum(pg_database_size(oid))) FROM pg_database")
echo "database size: $size"
conn="host=127.0.0.1 port=$PORT user=postgres"

results=$WORK/results
: >"$results"
# measure NAME COMMAND... : appends "name wall cpu rss_kib" (as user postgres, page cache warm).
measure() {
  local name=$1
  shift
  sync
  as_pg /usr/bin/time -f "%e %U %S %M" -o "$WORK/time" "$@" >/dev/null 2>"$WORK/err" ||
    { cat "$WORK/err" >&2; exit 1; }
  read -r wall user sys rss <"$WORK/time"
  echo "$name $wall $(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}') $rss" >>"$results"
}
for rep in $(seq "$REPS"); do
  rm -rf "$WORK"/tar "$WORK"/tarzst "$WORK"/restored "$WORK"/untar
  measure "pg_basebackup-none" "$PG/pg_basebackup" -d "$conn" -c fast -Ft -Xnone -D "$WORK/tar"
  measure "pg_basebackup-zstd3" "$PG/pg_basebackup" -d "$conn" -c fast -Ft -Xnone \
    --compress=client-zstd:3 -D "$WORK/tarzst"
  measure "walhalla-backup" "$WORK/walhalla" --archive "$WORK/archive" backup -d "$conn" --fast
  as_pg mkdir -m 700 "$WORK/untar"
  measure "tar-x" tar -xf "$WORK/tar/base.tar" -C "$WORK/untar"
  measure "walhalla-restore" "$WORK/walhalla" --archive "$WORK/archive" restore --to "$WORK/restored"
  sleep 1  # backup ids are per second
done
sizes() { du -sb "$@" | awk '{s += $1} END {printf "%.0f", s / 1048576}'; }
stored=$(du -sb "$WORK"/archive/*/backups/* | tail -n 1 | awk '{printf "%.0f", $1 / 1048576}')
echo
echo "stored MiB: pg_basebackup none $(sizes "$WORK/tar"), client-zstd:3 $(sizes "$WORK/tarzst"), walhalla (last backup) $stored"
echo "medians over $REPS rounds (wall s, CPU s, peak RSS MiB):"
for name in pg_basebackup-none pg_basebackup-zstd3 walhalla-backup tar-x walhalla-restore; do
  grep "^$name " "$results" | sort -k2 -n | awk -v n="$name" '{w[NR]=$2; c[NR]=$3; r[NR]=$4}
    END {m = int((NR + 1) / 2); printf "  %-22s %7.2f %7.2f %7.1f\n", n, w[m], c[m], r[m] / 1024}'
done

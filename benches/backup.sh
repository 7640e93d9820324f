#!/usr/bin/env bash
# backup.sh - base backup and restore, walhalla beside pg_basebackup and pgBackRest, in ONE run on
# one database.
#
#   sudo benches/backup.sh
#
# Builds a pgbench database (SCALE, default 150: about 2.2 GiB) on PostgreSQL 15 (Debian's), then
# times REPS rounds (default 2) of, interleaved:
#   pg_basebackup -Ft -Xnone               (tar, no compression)
#   pg_basebackup -Ft -Xnone -Z client-zstd:3
#   walhalla backup --fast                 (zstd-3 into a local archive)
#   pgbackrest backup --type=full          (zst-3, process-max=2, start-fast, into a local repo)
#   tar -x of the uncompressed backup      (the restore pg_basebackup users do by hand)
#   -- load: pgbench -n -c 2 -j 2, LOAD_TX transactions in all (untimed), pg_switch_wal(), and a
#      wait until that segment is archived: the WAL both restores below replay --
#   walhalla restore                       (into an empty directory, every file verified)
#     + open: pg_ctl start on a spare port, restore_command = walhalla fetch (its readahead on)
#   pgbackrest restore                     (into an empty directory, process-max=2)
#     + open: pg_ctl start, restore_command = pgbackrest archive-get, archive-async=y, process-max=2
# and prints wall time, CPU time, peak RSS (GNU time) and stored size of each, and the ratios
# issue 11 asks for.
#
# Archiving: archive_command = 'walhalla push %p && pgbackrest archive-push %p': one WAL archive
# for each tool, both must succeed. pgBackRest's backup keeps archive-check=y (it waits for the
# backup's WAL in its own repo, as in production) and its restore needs that WAL to recover at all.
# The cost: every backup here (pg_basebackup -Xnone and walhalla backup also wait for their last
# segment to be archived) waits for both pushes of that segment, a constant added to all four.
#
# Time to open = the restore (as timed in its own row) + from `pg_ctl start` until
# `SELECT pg_is_in_recovery()` returns f (psql polls every 0.1 s, for both). No recovery target:
# each recovers to the end of its archive, promotes, and is open for writes. The restored servers
# run with archive_mode=off (no timeline 2 pushed into the archives) on port PORT+1.
# Order within a round: the two backups back to back (walhalla first in odd rounds, pgBackRest
# first in even ones: the one taken first replays the other's few backup records too), then the
# load, then both restores-to-open (walhalla first in odd rounds): the replayed WAL is the same
# load for both, and neither timing includes pgbench.
# Both readaheads start cold (pgBackRest's spool emptied) and stop before the next measurement.
# Readahead depth: walhalla's default 8 segments; pgBackRest's default archive-get-queue-max 128MiB
# (8 segments).
# CPU of "open" = the restore's + the postmaster's own and reaped children's (the startup process
# and every restore_command call) at the moment recovery ended; the detached readahead workers
# (walhalla's prefetch worker, pgBackRest's async archive-get process) are not counted, for either.
# RSS of "open" is not measured (-).
#
# Env: SCALE, REPS, LOAD_TX (default 50000), WORK (scratch, default /tmp/walhalla-backup-bench;
# removed at the end), PORT (default 5493; PORT+1 for the restored servers).
# Needs root, Debian's postgresql-15, pgbackrest (apt-get install pgbackrest), GNU time.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SCALE=${SCALE:-150}
REPS=${REPS:-2}
LOAD_TX=${LOAD_TX:-50000}
WORK=${WORK:-/tmp/walhalla-backup-bench}
PG=/usr/lib/postgresql/15/bin
PORT=${PORT:-5493}
SPARE=$((PORT + 1))
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed (apt-get install pgbackrest)" >&2; exit 1; }

# In the checkout, so that its .cargo/config.toml applies (cargo reads it from the current directory).
(cd "$root" && cargo build --release --quiet)
rm -rf "$WORK"
mkdir -p "$WORK"
chown postgres: "$WORK"
install -m 755 "$root/target/release/walhalla" "$WORK/walhalla"
as_pg() { runuser -u postgres -- "$@"; }
stop() {
  local d
  for d in "$WORK/restored" "$WORK/pgbr-restored" "$WORK/data"; do
    [ ! -f "$d/postmaster.pid" ] || as_pg "$PG/pg_ctl" -D "$d" -m fast -w stop >/dev/null 2>&1 || true
  done
}
# pgBackRest: its own config, repo, lock, spool and log paths under $WORK (nothing in /etc or /var).
PGBR_CONF=$WORK/pgbackrest.conf
mkdir -p "$WORK/pgbr-repo" "$WORK/pgbr-lock" "$WORK/pgbr-spool" "$WORK/pgbr-log"
cat >"$PGBR_CONF" <<EOF
[global]
repo1-path=$WORK/pgbr-repo
repo1-retention-full=9999
compress-type=zst
compress-level=3
process-max=2
start-fast=y
lock-path=$WORK/pgbr-lock
spool-path=$WORK/pgbr-spool
log-path=$WORK/pgbr-log
log-level-console=warn
log-level-stderr=warn
log-level-file=off

[global:archive-get]
archive-async=y

[bench]
pg1-path=$WORK/data
pg1-port=$PORT
pg1-socket-path=$WORK
EOF
chown -R postgres: "$WORK"
pgbr() { as_pg pgbackrest --config="$PGBR_CONF" --stanza=bench "$@"; }
# settle_pgbr: wait for detached pgBackRest async workers (they hold flocks in the lock dir).
settle_pgbr() {
  local l
  for l in "$WORK"/pgbr-lock/*.lock; do [ ! -e "$l" ] || flock -w 300 "$l" true || true; done
}
trap 'stop; settle_pgbr; rm -rf "$WORK"' EXIT

as_pg "$PG/initdb" -A trust -U postgres -D "$WORK/data" >/dev/null
cat >>"$WORK/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_wal_size = '4GB'
archive_mode = on
archive_command = '$WORK/walhalla --archive $WORK/archive push %p && pgbackrest --config=$PGBR_CONF --stanza=bench archive-push %p'
EOF
as_pg "$PG/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
pgbr stanza-create >/dev/null
echo "pgbench -i -s $SCALE ..."
as_pg "$PG/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres 2>&1 | tail -n 1
sql() { as_pg "$PG/psql" -X -h "$WORK" -p "$PORT" -U postgres -Atqc "$1"; }
sql CHECKPOINT
size=$(sql "SELECT pg_size_pretty(sum(pg_database_size(oid))) FROM pg_database")
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
now() { date +%s.%N; }
tick=$(getconf CLK_TCK)

# open_db NAME RESTORE_NAME DIR : starts the restored cluster in DIR and waits until recovery has
# ended; appends "NAME wall cpu -" with the restore's last row (RESTORE_NAME) added in.
open_db() {
  local name=$1 restored=$2 dir=$3 t0 t1 pm state cpu row n=0
  [ "$rep" != 1 ] || echo "  $name: $(grep '^restore_command' "$dir/postgresql.auto.conf" | tail -n 1)"
  t0=$(now)
  as_pg "$PG/pg_ctl" -D "$dir" -l "$dir.log" -W -o "-p $SPARE -c archive_mode=off" start >/dev/null
  until state=$(as_pg "$PG/psql" -X -h "$WORK" -p "$SPARE" -U postgres -Atqc \
    "SELECT pg_is_in_recovery()" 2>/dev/null) && [ "$state" = f ]; do
    if [ $((n++ % 50)) = 49 ] && ! as_pg "$PG/pg_ctl" -D "$dir" status >/dev/null; then
      echo "$name: the server stopped:" >&2
      tail -n 20 "$dir.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  t1=$(now)
  pm=$(head -n 1 "$dir/postmaster.pid")
  # The startup process exits at the end of recovery; once reaped, its CPU (and its
  # restore_command children's) is in the postmaster's cutime/cstime.
  for _ in $(seq 100); do
    pgrep -P "$pm" -f '^postgres: startup' >/dev/null || break
    sleep 0.1
  done
  cpu=$(awk -v t="$tick" '{sub(/^.*\) /, ""); print ($12 + $13 + $14 + $15) / t}' "/proc/$pm/stat")
  row=$(grep "^$restored " "$results" | tail -n 1)
  awk -v n="$name" -v w="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" -v c="$cpu" \
    '{printf "%s %.2f %.2f -\n", n, $2 + w, $3 + c}' <<<"$row" >>"$results"
  echo "  $name: recovery ended after $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s of $(basename "$dir") start" \
    "($(grep -c 'restored log file' "$dir.log" || true) WAL files restored)"
}
# close_db DIR : stops the restored cluster, removes it and waits for its readahead worker to end.
close_db() {
  local dir=$1 fd lock=$1/pg_wal/walhalla-prefetch/worker.lock
  as_pg "$PG/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
  if [ -e "$lock" ]; then
    exec {fd}<"$lock"
    rm -rf "$dir" "$dir.log"
    flock -w 60 "$fd" || true  # the worker sees its directory gone within 25 ms
    exec {fd}<&-
  fi
  rm -rf "$dir" "$dir.log"
  settle_pgbr
}
walhalla_open() {
  measure "walhalla-restore" "$WORK/walhalla" --archive "$WORK/archive" restore --to "$WORK/restored"
  open_db walhalla-open walhalla-restore "$WORK/restored"
  close_db "$WORK/restored"
}
pgbackrest_open() {
  as_pg mkdir -m 700 "$WORK/pgbr-restored"
  rm -rf "$WORK/pgbr-spool/archive"  # a cold readahead, like walhalla's in a new data directory
  measure "pgbackrest-restore" pgbackrest --config="$PGBR_CONF" --stanza=bench \
    --pg1-path="$WORK/pgbr-restored" restore
  open_db pgbackrest-open pgbackrest-restore "$WORK/pgbr-restored"
  [ -d "$WORK/pgbr-spool/archive/bench/in" ] ||
    { echo "pgbackrest archive-get did not run asynchronously (no spool queue)" >&2; exit 1; }
  close_db "$WORK/pgbr-restored"
}
walhalla_backup() { measure "walhalla-backup" "$WORK/walhalla" --archive "$WORK/archive" backup -d "$conn" --fast; }
pgbackrest_backup() { measure "pgbackrest-backup" pgbackrest --config="$PGBR_CONF" --stanza=bench --type=full backup; }

for rep in $(seq "$REPS"); do
  echo "round $rep of $REPS"
  rm -rf "$WORK"/tar "$WORK"/tarzst "$WORK"/untar
  measure "pg_basebackup-none" "$PG/pg_basebackup" -d "$conn" -c fast -Ft -Xnone -D "$WORK/tar"
  measure "pg_basebackup-zstd3" "$PG/pg_basebackup" -d "$conn" -c fast -Ft -Xnone \
    --compress=client-zstd:3 -D "$WORK/tarzst"
  if [ $((rep % 2)) = 1 ]; then walhalla_backup; pgbackrest_backup; else pgbackrest_backup; walhalla_backup; fi
  as_pg mkdir -m 700 "$WORK/untar"
  measure "tar-x" tar -xf "$WORK/tar/base.tar" -C "$WORK/untar"
  rm -rf "$WORK/untar"
  # The WAL both restores replay: a fixed number of transactions, then a switch and a wait until
  # the switched segment is in both archives (the archive_command pushes to both, in order).
  from=$(sql "SELECT pg_current_wal_lsn()")
  as_pg "$PG/pgbench" -h "$WORK" -p "$PORT" -U postgres -n -c 2 -j 2 -t $((LOAD_TX / 2)) postgres >/dev/null
  last=$(sql "SELECT pg_walfile_name(pg_switch_wal())")
  echo "  load: $LOAD_TX transactions, $(sql "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$from') / 1048576)") MiB of WAL, archived through $last"
  for _ in $(seq 6000); do
    [ "$(sql "SELECT coalesce(last_archived_wal, '') >= '$last' FROM pg_stat_archiver")" = t ] && break
    sleep 0.1
  done
  [ "$(sql "SELECT coalesce(last_archived_wal, '') >= '$last' FROM pg_stat_archiver")" = t ] ||
    { echo "$last was not archived in 10 minutes" >&2; exit 1; }
  if [ $((rep % 2)) = 1 ]; then walhalla_open; pgbackrest_open; else pgbackrest_open; walhalla_open; fi
  sleep 1  # backup ids are per second
done
sizes() { du -sb "$@" | awk '{s += $1} END {printf "%.0f", s / 1048576}'; }
declare -A stored=(
  [pg_basebackup-none]=$(sizes "$WORK/tar")
  [pg_basebackup-zstd3]=$(sizes "$WORK/tarzst")
  [walhalla-backup]=$(du -sb "$WORK"/archive/*/backups/* | tail -n 1 | awk '{printf "%.0f", $1 / 1048576}')
  [pgbackrest-backup]=$(sizes "$WORK/pgbr-repo/backup/bench/latest/")
)
echo
echo "stored MiB: pg_basebackup none ${stored[pg_basebackup-none]}, client-zstd:3 ${stored[pg_basebackup-zstd3]}," \
  "walhalla (last backup) ${stored[walhalla-backup]}, pgbackrest (last backup set) ${stored[pgbackrest-backup]}"
echo "medians over $REPS rounds (wall s, CPU s, peak RSS MiB, stored MiB):"
declare -A wall
for name in pg_basebackup-none pg_basebackup-zstd3 walhalla-backup pgbackrest-backup tar-x \
  walhalla-restore pgbackrest-restore walhalla-open pgbackrest-open; do
  line=$(grep "^$name " "$results" | sort -k2 -n | awk -v n="$name" -v s="${stored[$name]:-}" '
    {w[NR]=$2; c[NR]=$3; r[NR]=$4}
    END {m = int((NR + 1) / 2); rss = r[m] == "-" ? "-" : sprintf("%.1f", r[m] / 1024)
         printf "%-22s %7.2f %7.2f %7s %7s\n", n, w[m], c[m], rss, s}')
  echo "  $line"
  wall[$name]=$(echo "$line" | awk '{print $2}')
done
ratio() { awk -v a="${wall[$2]}" -v b="${wall[$3]}" -v t="$1" 'BEGIN {printf "  %-52s %.2f\n", t, a / b}'; }
echo "ratios of median wall times:"
ratio "walhalla backup / pg_basebackup none" walhalla-backup pg_basebackup-none
ratio "walhalla backup / pg_basebackup client-zstd:3" walhalla-backup pg_basebackup-zstd3
ratio "walhalla restore / pgbackrest restore" walhalla-restore pgbackrest-restore
ratio "walhalla time-to-open / pgbackrest time-to-open" walhalla-open pgbackrest-open

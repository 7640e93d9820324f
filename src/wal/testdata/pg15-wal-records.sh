#!/bin/bash
# Made pg15-1MiB-00000001000000000000000{7,8}.zst (zstd -19 of the archived segments 7 and 8)
# for src/wal/records/tests.rs. Run as user postgres with Debian's PostgreSQL 15 installed;
# timestamps and LSNs differ from run to run, so the tests' expectations must be redone.
set -euo pipefail
B=/usr/lib/postgresql/15/bin
D=/tmp/walrec
P="$B/psql -X -At -h $D -p 5641 -U postgres -d postgres -v ON_ERROR_STOP=1"
rm -rf $D/data $D/archive; mkdir -p $D/archive
$B/initdb -D $D/data --wal-segsize=1 -A trust -U postgres >/dev/null
cat >> $D/data/postgresql.conf <<CONF
port = 5641
listen_addresses = ''
unix_socket_directories = '$D'
track_commit_timestamp = on
max_prepared_transactions = 4
archive_mode = on
archive_command = 'cp %p $D/archive/%f'
wal_compression = off
CONF
$B/pg_ctl -D $D/data -l $D/log -w start >/dev/null
$P -c "CHECKPOINT" >/dev/null
$P -c "SELECT pg_switch_wal()" >/dev/null
echo "start_lsn=$($P -c 'SELECT pg_current_wal_lsn()') start_file=$($P -c 'SELECT pg_walfile_name(pg_current_wal_lsn())')"
echo "before=$($P -c "SELECT clock_timestamp()")"
$P -c "CREATE TABLE t(id int, v text)" >/dev/null
$P -c "INSERT INTO t VALUES (1,'a')" >/dev/null
$P -c "INSERT INTO t VALUES (2,'b')" >/dev/null
# FPIs with page-image compression (pglz) after a checkpoint, then without
$P -c "CHECKPOINT" >/dev/null
$P -c "SET wal_compression = pglz; UPDATE t SET v = v || 'x'" >/dev/null
$P -c "BEGIN; INSERT INTO t VALUES (3,'aborted'); ROLLBACK" >/dev/null
$P -c "CREATE TABLE gone(id int); INSERT INTO gone VALUES (1)" >/dev/null
$P -c "BEGIN; SAVEPOINT s; INSERT INTO t VALUES (4,'sub'); RELEASE s; DROP TABLE gone; PREPARE TRANSACTION 'p1'" >/dev/null
$P -c "COMMIT PREPARED 'p1'" >/dev/null
$P -c "BEGIN; INSERT INTO t VALUES (5,'p2'); PREPARE TRANSACTION 'p2'" >/dev/null
$P -c "ROLLBACK PREPARED 'p2'" >/dev/null
echo "restore_point=$($P -c "SELECT pg_create_restore_point('before_b')")"
# one record spanning three pages
$P -c "SELECT pg_logical_emit_message(false, 'walhalla', repeat('x', 20000))" >/dev/null
$P -c "INSERT INTO t VALUES (6, repeat('y', 100))" >/dev/null
# fill the segment with 20 kB records until one crosses into the next segment
first=$($P -c 'SELECT pg_walfile_name(pg_current_wal_lsn())')
while [ "$($P -c 'SELECT pg_walfile_name(pg_current_wal_lsn())')" = "$first" ]; do
  $P -c "SELECT pg_logical_emit_message(false, 'walhalla', repeat('z', 20000))" >/dev/null
done
echo "after_cross_lsn=$($P -c 'SELECT pg_current_wal_lsn()')"
$P -c "INSERT INTO t VALUES (7,'next segment')" >/dev/null
$P -c "BEGIN; DELETE FROM t; ROLLBACK" >/dev/null
echo "restore_point2=$($P -c "SELECT pg_create_restore_point('after_b')")"
$P -c "INSERT INTO t VALUES (8,'last')" >/dev/null
echo "after=$($P -c "SELECT clock_timestamp()")"
echo "switch=$($P -c 'SELECT pg_switch_wal()')"
$P -c "SELECT txid, pg_xact_commit_timestamp(txid::text::xid) FROM generate_series(700, 800) txid WHERE pg_xact_commit_timestamp(txid::text::xid) IS NOT NULL" || true
sleep 2
$B/pg_ctl -D $D/data -w stop >/dev/null
ls -la $D/archive

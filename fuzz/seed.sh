#!/usr/bin/env bash
# seed.sh - writes fuzz/seeds/<target>/ from a throwaway real PostgreSQL 15: WAL segments
# trimmed to a few pages, a history file from a promotion, pg_control, backup_label and
# backup_manifest from pg_basebackup, IDENTIFY_SYSTEM's answer, the backup.json and time
# indexes walhalla itself writes, and replication frames built around the real WAL.
# Needs the binaries tests/prepare.sh installs (WALHALLA_PG=15 tests/prepare.sh), python3,
# zstd, and root (PostgreSQL runs as `postgres`, as the test harness runs it) or the
# postgres user itself. Unix sockets only: nothing listens on TCP.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${WALHALLA_PG_BIN:-/var/cache/walhalla/pg/15/server}
client=${WALHALLA_PG_CLIENT:-/var/cache/walhalla/pg/15/client}
seeds=$PWD/fuzz/seeds
cargo build --quiet --bin walhalla
work=$(mktemp -d /tmp/walhalla-seed.XXXXXX)
chmod 755 "$work"
cp target/debug/walhalla "$work/walhalla"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres: "$work"
cleanup() {
  for d in primary standby; do
    [ -f "$work/$d/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$work/$d" -m immediate stop >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

as_pg "$bin/initdb" -D "$work/primary" -A trust -U postgres --wal-segsize=1 >/dev/null
as_pg mkdir "$work/archive"
cat >>"$work/primary/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$work'
wal_level = replica
archive_mode = on
archive_command = '$work/walhalla push --archive $work/archive %p'
CONF
as_pg "$bin/pg_ctl" -D "$work/primary" -l "$work/primary.log" -w start >/dev/null
psql() { as_pg "$client/psql" -X -q -A -t -h "$work" -U postgres "$@"; }
psql -c "CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 2000) g" \
  -c "SELECT pg_create_restore_point('seed')" -c "SELECT pg_switch_wal()" >/dev/null
identify=$(psql "dbname=replication replication=true host=$work user=postgres" -F $'\t' -c IDENTIFY_SYSTEM)
segsize=$(psql -c "SHOW wal_segment_size")
as_pg "$client/pg_basebackup" -h "$work" -U postgres -D "$work/tar" -Ft -X none -c fast
as_pg "$work/walhalla" backup -d "host=$work user=postgres" --archive "$work/archive" --fast \
  --log-level error >/dev/null
# A standby promoted: timeline 2 and its history file.
as_pg "$client/pg_basebackup" -h "$work" -U postgres -D "$work/standby" -R -X stream -c fast
cat >>"$work/standby/postgresql.conf" <<CONF
port = 5433
archive_mode = off
CONF
as_pg "$bin/pg_ctl" -D "$work/standby" -l "$work/standby.log" -w start >/dev/null
as_pg "$bin/pg_ctl" -D "$work/standby" -w promote >/dev/null
as_pg "$bin/pg_ctl" -D "$work/standby" -w stop >/dev/null
psql -c "SELECT pg_switch_wal()" >/dev/null
sleep 2
as_pg "$bin/pg_ctl" -D "$work/primary" -w stop >/dev/null

rm -rf "$seeds"
python3 - "$work" "$seeds" "$identify" "$segsize" <<'PY'
import glob, hashlib, io, json, os, struct, subprocess, sys, tarfile
work, seeds, identify, segsize = sys.argv[1:]
def put(target, name, data):
    os.makedirs(f"{seeds}/{target}", exist_ok=True)
    with open(f"{seeds}/{target}/{name}", "wb") as f:
        f.write(data)
PAGE = 8192
segments = sorted(p for p in glob.glob(f"{work}/primary/pg_wal/0000000*") if len(os.path.basename(p)) == 24)
first = open(segments[0], "rb").read()
busy = open(segments[1], "rb").read()
for name, seg in [("first", first), ("busy", busy)]:
    put("page_header", name, seg[:PAGE])
    put("wal_records", name, seg[:3 * PAGE])
    put("wal_page_stream", name, b"\x07" + seg[:3 * PAGE])
    put("wal_file_content", name, b"\x00" + seg[:2 * PAGE])
history = open(f"{work}/standby/pg_wal/00000002.history", "rb").read()
put("timeline_history", "promotion", struct.pack("<I", 2) + history)
put("wal_file_content", "history", b"\x03" + history)
control = open(f"{work}/primary/global/pg_control", "rb").read()
put("pg_control", "pg15", control[:512])
# backup_label at the head of base.tar, plain and zstd.
base = open(f"{work}/tar/base.tar", "rb").read()
size = int(base[124:136].rstrip(b"\0 ") or b"0", 8)
head = base[:512 + (size + 511) // 512 * 512]
put("backup_label", "plain", b"\x01" + head)
put("backup_label", "zstd", b"\x01" + subprocess.run(["zstd", "-c", "-q"], input=head, capture_output=True, check=True).stdout)
# The manifest cut to its first files, its checksum recomputed as PostgreSQL computes it.
manifest = json.loads(open(f"{work}/tar/backup_manifest", "rb").read())
lines = ['{ "PostgreSQL-Backup-Manifest-Version": %d,' % manifest["PostgreSQL-Backup-Manifest-Version"]]
if "System-Identifier" in manifest:
    lines[0] = lines[0][:-1] + ', "System-Identifier": %d,' % manifest["System-Identifier"]
lines.append('"Files": [')
files = [json.dumps(f) for f in manifest["Files"][:4]]
lines.append(",\n".join(files))
lines.append('],\n"WAL-Ranges": [\n' + ",\n".join(json.dumps(r) for r in manifest["WAL-Ranges"]) + "\n],")
body = ("\n".join(lines) + "\n").encode()
put("backup_manifest", "pg15", body + b'"Manifest-Checksum": "' + hashlib.sha256(body).hexdigest().encode() + b'"}\n')
# Small tars: real members of base.tar, and names that try to leave the directory.
with tarfile.open(f"{work}/tar/base.tar") as t:
    real = io.BytesIO()
    with tarfile.open(fileobj=real, mode="w", format=tarfile.GNU_FORMAT) as out:
        for m in t.getmembers():
            if m.name in ("backup_label", "PG_VERSION", "global", "pg_wal", "pg_tblspc") or m.name.startswith("base/1/PG_"):
                out.addfile(m, t.extractfile(m) if m.isfile() else None)
    put("tar_extract", "real", real.getvalue())
def crafted(members):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.GNU_FORMAT) as out:
        for name, kind, target, data in members:
            i = tarfile.TarInfo(name); i.type = kind; i.linkname = target; i.size = len(data)
            out.addfile(i, io.BytesIO(data) if data else None)
    return b.getvalue()
put("tar_extract", "escape", crafted([("../outside", tarfile.REGTYPE, "", b"x"), ("/tmp/abs", tarfile.REGTYPE, "", b"x")]))
put("tar_extract", "symlink", crafted([("pg_wal", tarfile.SYMTYPE, "..", b""), ("pg_wal/x", tarfile.REGTYPE, "", b"x"), ("h", tarfile.LNKTYPE, "../x", b"")]))
# Answers, as tab-separated columns.
put("server_answers", "identify_system", identify.encode())
put("server_answers", "segment_size", segsize.encode())
# Replication frames around the real WAL: XLogData, keepalive, an error, CopyBothResponse.
def msg(tag, body): return tag + struct.pack(">i", len(body) + 4) + body
start = struct.unpack("<Q", first[8:16])[0]
xlog = b"w" + struct.pack(">QQq", start, start + 2 * PAGE, 0) + first[:2 * PAGE]
keep = b"k" + struct.pack(">Qqb", start + 2 * PAGE, 0, 1)
error = b"SERROR\0VERROR\0C58P01\0Mrequested WAL segment has already been removed\0\0"
put("replication_messages", "stream", msg(b"W", b"\0\0\0") + msg(b"d", xlog) + msg(b"d", keep) + msg(b"N", error) + msg(b"Z", b"I"))
put("replication_messages", "error", msg(b"E", error) + msg(b"Z", b"I"))
put("replication_messages", "identify", msg(b"T", b"\0\x01systemid\0" + b"\0" * 18) + msg(b"D", b"\0\x01" + struct.pack(">i", len(identify.split("\t")[0])) + identify.split("\t")[0].encode()) + msg(b"C", b"IDENTIFY_SYSTEM\0"))
# What walhalla wrote into its archive: backup.json and time indexes.
# (Archived objects are zstd streams with a CRC-32 frame zstd skips.)
for path in sorted(glob.glob(f"{work}/archive/**/*.json.zst", recursive=True)):
    data = subprocess.run(["zstd", "-d", "-c", "-q", path], capture_output=True, check=True).stdout
    name = os.path.basename(path)[:-len(".zst")]
    if name == "backup.json" or len(data) < 4096:
        put("archive_json", name, data)
PY
# Hand-written inputs where no server produces them.
mkdir -p "$seeds"/{conninfo,http_request,config_file,refusal}
printf 'host=db1 port=5432 user=walhalla password=s3cret sslmode=require' >"$seeds/conninfo/key_value"
printf "host='a b' password = 'it''s' dbname=x" >"$seeds/conninfo/quoted"
printf 'postgresql://w:s3cret@db1:5432,db2/postgres?sslmode=verify-full&password=x' >"$seeds/conninfo/uri"
printf 'db1:5432:replication:walhalla:s3cr\\:et' >"$seeds/conninfo/pgpass"
printf '/wal/000000010000000000000003\nauthorization: TOKEN\nx-walhalla-system-id: 7312029512345678901' >"$seeds/http_request/wal"
printf '/wal/000000010000000000000003?partial=1\nauthorization: TOKEN\naccept-encoding: zstd' >"$seeds/http_request/partial"
printf '/status\nauthorization: Bearer wrong' >"$seeds/http_request/status"
printf '/healthz' >"$seeds/http_request/healthz"
cp deploy/compose/walhalla.toml "$seeds/config_file/compose" 2>/dev/null ||
  printf 'archive = "/var/lib/walhalla/archive"\n[receive]\nslot = "walhalla"\ndbname = "host=db1"\n' >"$seeds/config_file/minimal"
printf 'Error performing list request: Error performing GET http://127.0.0.1:9/b?list-type=2 in 7ms - Server returned non-2xx status code: 404 Not Found: <?xml version="1.0" encoding="utf-8"?>\n<Error><Code>NoSuchBucket</Code><Message>The bucket does not exist.\nRequestId:1</Message></Error>' >"$seeds/refusal/no_such_bucket"
du -sh "$seeds"

#!/usr/bin/env bash
# s3_push.sh SCRATCH - the archive_command side into S3-compatible storage: $BENCH/archive_push.sh
# (a `sh -c` per segment, as the archiver runs it) with moto_server behind $BENCH/latency_proxy.py
# (TLS, as S3 serves) at each RTT in RTTS, pgBackRest's archive-push into the same store beside.
# peers.sh's `s3push` runs it; SCRATCH is a directory of its own (archive_push.sh wipes $WORK).
#
# Env: RTTS          round-trip times in ms (default "0 60")
#      S3_PUSH_EXTRA more variants, "name|setup|archive_command" newline separated; they may name,
#                    unexpanded, $S3_URL_<rtt> (the endpoint at that RTT), $S3_BUCKET and the
#                    exported AWS_* keys, and call s3_empty PREFIX in their setup.
# The store only grows between runs, so each variant's setup empties its prefix first; after the
# last run, the bytes each prefix holds are printed and added to archive_push.sh's saved results
# (its size column measures a local $DEST, which the S3 variants leave empty). pgBackRest runs
# synchronously: its asynchronous push reads pg_wal/archive_status, which the corpus does not
# have. walhalla probes a store for create-only writes once and remembers it in the pushing
# user's cache (~/.cache/walhalla/verified-stores), as every archive_command after the first
# does: only the first run of a variant pays that probe.
set -euo pipefail
scratch=$1
H=${BENCH:?}
# shellcheck disable=SC1091
source "$H/lib.sh"
load_meta
RTTS=${RTTS:-"0 60"}
MOTO=${MOTO:-$(command -v moto_server)}
# free_port and wait_http (URL [curl options]) come from peers.sh.
declare -F free_port wait_http > /dev/null || { echo "s3_push.sh: run it through benches/peers.sh s3push" >&2; exit 2; }
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

S3_PORT=$(free_port)
"$MOTO" -H 127.0.0.1 -p "$S3_PORT" > "$scratch/moto-push.log" 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$S3_PORT/moto-api/"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$scratch/key.pem" -out "$scratch/cert.pem" 2>/dev/null
for rtt in $RTTS; do
  port=$(free_port)
  python3 "$H/latency_proxy.py" --listen "127.0.0.1:$port" --to "127.0.0.1:$S3_PORT" \
    --delay-ms "$(calc "$rtt / 2" 1)" --tls-cert "$scratch/cert.pem" --tls-key "$scratch/key.pem" \
    > /dev/null 2>&1 & pids+=($!)
  export "S3_URL_$rtt=https://127.0.0.1:$port" "S3_PORT_$rtt=$port"
  wait_http "https://127.0.0.1:$port/moto-api/" -k
done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 \
  AWS_DEFAULT_REGION=us-east-1 S3_BUCKET=bench S3_PORT
curl -sf -o /dev/null -X PUT "http://127.0.0.1:$S3_PORT/$S3_BUCKET"

# s3_empty PREFIX: deletes every object under PREFIX (moto, plain HTTP; not timed).
s3_empty() {
  python3 - "$1" <<'PY'
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:" + os.environ["S3_PORT"])
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=os.environ["S3_BUCKET"], Prefix=sys.argv[1]):
    for obj in page.get("Contents", []):
        s3.delete_object(Bucket=os.environ["S3_BUCKET"], Key=obj["Key"])
PY
}
export -f s3_empty

# pgBackRest into the same store at each RTT, zst at its default level (3), path-style, the
# self-signed certificate not verified (as walhalla's AWS_ALLOW_INVALID_CERTIFICATES).
extra=""
for rtt in $RTTS; do
  conf=$scratch/pgbr-rtt$rtt.conf port_var=S3_PORT_$rtt
  mkdir -p "$scratch/pgbr-lock"
  cat > "$conf" <<EOC
[global]
repo1-type=s3
repo1-path=/pgbr-rtt$rtt
repo1-s3-bucket=$S3_BUCKET
repo1-s3-endpoint=127.0.0.1
repo1-storage-port=${!port_var}
repo1-s3-region=us-east-1
repo1-s3-key=$AWS_ACCESS_KEY_ID
repo1-s3-key-secret=$AWS_SECRET_ACCESS_KEY
repo1-s3-uri-style=path
repo1-storage-verify-tls=n
compress-type=zst
lock-path=$scratch/pgbr-lock
log-level-console=warn
log-level-stderr=warn
log-level-file=off
[bench]
pg1-path=$CORPUS/primary
EOC
  chown -R postgres: "$conf" "$scratch/pgbr-lock"
  setup="s3_empty pgbr-rtt$rtt/ && runuser -u postgres -- pgbackrest --config=$conf --stanza=bench --no-online stanza-create > /dev/null"
  extra+="pgbackrest s3 zst rtt$rtt|$setup|pgbackrest --config=$conf --stanza=bench archive-push %p"$'\n'
done
[ -n "${S3_PUSH_EXTRA:-}" ] && extra+="$S3_PUSH_EXTRA"$'\n'
PUSH_EXTRA=${extra%$'\n'} "$H/archive_push.sh"

# The ratio as archive_push.sh reckons it: the segments' full size over the bytes stored.
bytes=$(( $(find "$CORPUS/wal" -type f -name '????????????????????????' | wc -l) * SEG_BYTES ))
saved=$(find "$RESULTS" -name '*-archive_push.txt' -newer "$scratch/cert.pem" | sort | tail -n1)
{
echo "# bytes stored under each S3 prefix after the last run; ratio = $bytes segment bytes / stored:"
python3 - "$bytes" <<'PY'
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:" + os.environ["S3_PORT"])
sizes = {}
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=os.environ["S3_BUCKET"]):
    for obj in page.get("Contents", []):
        top = obj["Key"].split("/")[0]
        sizes[top] = sizes.get(top, 0) + obj["Size"]
for top, size in sorted(sizes.items()):
    print(f"  {top:<28} {size / 1048576:8.1f} MiB  ratio {int(sys.argv[1]) / size:.2f}")
PY
} | tee -a "${saved:-/dev/null}"

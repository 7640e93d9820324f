#!/usr/bin/env bash
# serve_s3.sh WALHALLA URL ENDPOINT PORT TOKEN - (re)starts `walhalla serve` on 127.0.0.1:PORT in
# front of the S3 archive URL at ENDPOINT (one of s3_recovery.sh's $S3_URL_<rtt>), so that the
# restore_commands of a recovery ask it (`fetch --server`) over warm connections instead of
# opening their own to the store. The server of the previous run, if any, is stopped first (by
# the pid this script recorded), so no run starts with another's state. Run as root by the s3
# setup of peers.sh, in s3_recovery.sh's environment; peers.sh stops the last one on exit.
set -euo pipefail
wh=$1 url=$2 endpoint=$3 port=$4 token=$5
pidfile=$(dirname "$wh")/serve-$port.pid
if [ -s "$pidfile" ]; then
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
fi
env AWS_ENDPOINT_URL="$endpoint" AWS_ALLOW_INVALID_CERTIFICATES=true "$wh" --archive "$url" \
  serve --listen "127.0.0.1:$port" --token-file "$token" > "$(dirname "$wh")/serve-$port.log" 2>&1 &
echo $! > "$pidfile"
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && exit 0
  sleep 0.1
done
echo "serve_s3.sh: no answer on 127.0.0.1:$port" >&2
exit 1

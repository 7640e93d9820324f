#!/usr/bin/env bash
# fill_s3.sh WALHALLA URL - push every segment of $CORPUS/wal into URL (s3://BUCKET/PREFIX) at the
# default level, once per S3 server: $BENCH/s3_recovery.sh starts a fresh moto each run, on a new
# port, so the marker names the endpoint's port. Run as root by the s3 setup of peers.sh, in
# s3_recovery.sh's environment (AWS_* exported, AWS_ENDPOINT_URL = the first RTT's endpoint, TLS
# with a self-signed certificate).
set -euo pipefail
wh=$1 url=$2
marker=$(dirname "$wh")/s3-filled-${AWS_ENDPOINT_URL##*:}
[ -f "$marker" ] && exit 0
# runuser keeps the environment, but say the settings explicitly: the push must not depend on it.
s3env="env AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY"
s3env+=" AWS_REGION=$AWS_REGION AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL AWS_ALLOW_INVALID_CERTIFICATES=true"
find "$CORPUS/wal" -type f -name '????????????????????????' | sort |
  xargs -P2 -I{} runuser -u postgres -- sh -c "cd $CORPUS/primary && $s3env $wh --archive $url push {}"
touch "$marker"

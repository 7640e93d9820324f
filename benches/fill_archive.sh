#!/usr/bin/env bash
# fill_archive.sh WALHALLA LEVEL ARCHIVE - push every segment of $CORPUS/wal into ARCHIVE once
# (cached: a second call with the archive complete does nothing). Run as root by peers.sh.
set -euo pipefail
wh=$1 level=$2 archive=$3
[ -f "$archive.done" ] && exit 0
rm -rf "$archive"; mkdir -p "$archive"; chown postgres: "$archive"
find "$CORPUS/wal" -type f -name '????????????????????????' | sort |
  xargs -P2 -I{} runuser -u postgres -- sh -c "cd $CORPUS/primary && $wh --archive $archive --compression-level $level push {}"
touch "$archive.done"

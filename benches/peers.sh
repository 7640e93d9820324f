#!/usr/bin/env bash
# peers.sh - walhalla beside cp and pgBackRest (and pg's own tools) in ONE run of the shared WAL
# benchmark harness, so every figure compares tools measured on the same machine at the same time.
#
#   benches/peers.sh push|get|recovery [more...]
#
# Env: BENCH   the shared harness (default ../shared/bench beside this checkout)
#      CORPUS  corpus built by $BENCH/corpus.sh (default /tmp/walcorpus; LOAD=mixed for a realistic one)
#      LEVELS  zstd levels to run walhalla at (default "1 3"); REPS as in the harness (default 3)
# Needs root (the harness runs PostgreSQL and the commands as user postgres), a built corpus, and
# pgbackrest, hyperfine and GNU time installed (see $BENCH/README.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$root/../shared/bench}
export CORPUS=${CORPUS:-/tmp/walcorpus}
LEVELS=${LEVELS:-"1 3"}

cargo build --release --quiet --manifest-path "$root/Cargo.toml"
# PostgreSQL's user must be able to run the binary: the checkout may be under a root-only dir.
bin_dir=$(mktemp -d /tmp/walhalla-bench-bin.XXXXXX)
trap 'rm -rf "$bin_dir"' EXIT
install -m 755 "$root/target/release/walhalla" "$root/benches/fill_archive.sh" "$bin_dir/"
chmod 755 "$bin_dir"
WH=$bin_dir/walhalla
# Like PostgreSQL, run the hooks in the data directory, where walhalla reads pg_control.
IN_DATA="cd $CORPUS/primary &&"

push_extra="" get_extra="" recovery_extra=""
for level in $LEVELS; do
  archive=$CORPUS/archives/walhalla-zstd$level
  fill="$bin_dir/fill_archive.sh $WH $level $archive"
  push_extra+="walhalla zstd-$level|:|$IN_DATA $WH --archive \$DEST --compression-level $level push %p"$'\n'
  get_extra+="walhalla zstd-$level|$fill|$IN_DATA $WH --archive $archive fetch %f %p"$'\n'
  recovery_extra+="walhalla zstd-$level|$fill|$WH --archive $archive fetch %f \"%p\""$'\n'
done

for what in "$@"; do
  case $what in
    push) PUSH_EXTRA=${push_extra%$'\n'} "$BENCH/archive_push.sh" ;;
    get) GET_EXTRA=${get_extra%$'\n'} "$BENCH/archive_get.sh" ;;
    recovery) RECOVERY_EXTRA=${recovery_extra%$'\n'} "$BENCH/recovery.sh" ;;
    *) echo "usage: $0 push|get|recovery ..." >&2; exit 2 ;;
  esac
done

#!/usr/bin/env bash
# verify.sh - reading a whole WAL archive back: `walhalla verify` beside `pgbackrest verify`, on the
# same corpus, in ONE run.
#
#   sudo benches/verify.sh
#
# Both archives hold every segment of the corpus ($CORPUS/wal, built by $BENCH/corpus.sh), at
# zstd level 3 (walhalla push; pgbackrest archive-push, compress-type=zst), cached under
# $CORPUS/archives like benches/peers.sh's. Then REPS rounds (default 3), interleaved, each with a
# cold start of both tools but a warm page cache:
#   walhalla verify --parallelism N        (every object decoded, CRC-32 and first page checked)
#   pgbackrest verify --process-max=N      (every WAL file's checksum)
# with N = the CPUs, and GNU time's wall, CPU and peak RSS. Prints MB/s of original WAL per wall
# second and per CPU second, and the ratio; the first round (which warms the page cache) is left
# out of the medians.
# Env: BENCH (default ../shared/bench beside this checkout), CORPUS (default /tmp/walcorpus), REPS.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$root/../shared/bench}
export CORPUS=${CORPUS:-/tmp/walcorpus}
REPS=${REPS:-3}
cpus=$(nproc)
# shellcheck source=/dev/null
. "$BENCH/lib.sh"

# In the checkout, so that its .cargo/config.toml applies (cargo reads it from the current directory).
(cd "$root" && cargo build --release --quiet)
bin_dir=$(mktemp -d /tmp/walhalla-bench-bin.XXXXXX)
trap 'rm -rf "$bin_dir"' EXIT
install -m 755 "$root/target/release/walhalla" "$root/benches/fill_archive.sh" "$bin_dir/"
chmod 755 "$bin_dir"
wh=$bin_dir/walhalla
walhalla_archive=$CORPUS/archives/walhalla-zstd3
"$bin_dir/fill_archive.sh" "$wh" 3 "$walhalla_archive"
ensure_archive zst
pgbr=$CORPUS/archives/zst
wal_mb=$(du -smc "$CORPUS"/wal/???????????????????????? | tail -n 1 | cut -f1)
segments=$(find "$CORPUS/wal" -type f -name '????????????????????????' | wc -l)
echo "corpus: $segments segments, $wal_mb MB; verifying with $cpus in parallel"

results=$(mktemp)
measure() { # NAME COMMAND... (as postgres): appends "name wall cpu rss_kib"
  local name=$1 t
  shift
  t=$(mktemp)
  chown postgres: "$t"
  runuser -u postgres -- /usr/bin/time -f "%e %U %S %M" -o "$t" "$@" >/dev/null 2>"$t.err" ||
    { cat "$t.err" >&2; exit 1; }
  read -r wall user sys rss <"$t"
  echo "$name $wall $(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}') $rss" >>"$results"
  rm -f "$t" "$t.err"
}
for round in $(seq 1 "$REPS"); do
  echo "round $round of $REPS"
  measure walhalla-verify "$wh" --archive "$walhalla_archive" verify --parallelism "$cpus"
  measure pgbackrest-verify pgbackrest --config="$pgbr.conf" --stanza=bench verify --process-max="$cpus"
done
echo "rounds (wall s, CPU s, peak RSS KiB):"
cat "$results"
median() { grep "^$1 " "$results" | tail -n +2 | awk -v c="$2" '{print $c}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-20s %8s %8s %10s %10s %12s\n' "medians after round 1" "wall s" "CPU s" "RSS MiB" "MB/s" "MB/CPU-s"
for name in walhalla-verify pgbackrest-verify; do
  wall=$(median "$name" 2) cpu=$(median "$name" 3) rss=$(median "$name" 4)
  printf '%-20s %8s %8s %10.1f %10.0f %12.0f\n' "$name" "$wall" "$cpu" "$(calc "$rss / 1024")" \
    "$(calc "$wal_mb / $wall")" "$(calc "$wal_mb / $cpu")"
done
echo "walhalla verify / pgbackrest verify, wall: $(calc "$(median walhalla-verify 2) / $(median pgbackrest-verify 2)" 2)"
rm -f "$results"

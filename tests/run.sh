#!/usr/bin/env bash
# run.sh - the test suite: prepare the machine, then unit and integration tests against real
# PostgreSQL clusters and a real S3-compatible server on loopback.
#
#   WALHALLA_PG       the PostgreSQL majors to test, comma-separated or "all" (13 to 18);
#                     default all. tests/prepare.sh installs them.
#   WALHALLA_PG_FULL  the majors that run the whole integration suite; default 15 and the newest
#                     of WALHALLA_PG. The others run the core scenarios (tests/core-scenarios).
#   WALHALLA_PG_FAULTS the full major that also runs the fault-injection tests (faults::,
#                     kills::; minutes of pgbench load each); default 15 when it is full, else the
#                     first full one. The other full majors skip them (tests/faults/table.sh runs
#                     them on any one major).
#   WALHALLA_PG_JOBS  how many majors are tested at once; default 2, or 1 when /tmp has less than
#                     6 GB free once the tests are built (two at once take about 3 GB at their
#                     peak: the fault tests keep all the WAL they make).
# Arguments (test name filters, libtest options) select integration tests on every major instead.
# Unit and doc tests run once. Ends with one line per major: its pass and fail counts.
set -euo pipefail
cd "$(dirname "$0")/.."

supported="13 14 15 16 17 18"
majors=${WALHALLA_PG:-all}
[ "$majors" = all ] && majors=${supported// /,}
export WALHALLA_PG=$majors
tests/prepare.sh
majors=${majors//,/ }
newest=$(tr ' ' '\n' <<<"$majors" | sort -n | tail -n 1)
full=" ${WALHALLA_PG_FULL:-15,$newest} "
full=${full//,/ }
faults=${WALHALLA_PG_FAULTS:-}
if [ -z "$faults" ]; then
  if [[ $full == *" 15 "* && " $majors " == *" 15 "* ]]; then faults=15; else
    for major in $majors; do [[ $full == *" $major "* ]] && { faults=$major; break; }; done
  fi
fi
jobs=${WALHALLA_PG_JOBS:-2}

# With the fail points (src/failpoint.rs) the kill tests (tests/it/kills.rs) need, everywhere:
# every test binary in one build, which cargo compiles side by side, and no second build of the
# library for the doc tests.
cargo test --features failpoints --lib --bins --test it --no-run
cargo test --features failpoints --lib --bins
cargo test --features failpoints --doc
it=$(tests/it-executable.sh)
if [ -z "${WALHALLA_PG_JOBS:-}" ] && [ "$jobs" -gt 1 ]; then
  free_mb=$(df -Pm /tmp | awk 'NR == 2 {print $4}')
  if [[ $free_mb =~ ^[0-9]+$ ]] && [ "$free_mb" -lt 6144 ]; then
    echo "only $free_mb MB free in /tmp: one PostgreSQL major at a time" >&2
    jobs=1
  fi
fi
mapfile -t core < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' tests/core-scenarios)

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# Runs the integration tests on one major into $logs/MAJOR.log; $logs/MAJOR.what says which.
run_major() {
  local major=$1 what args
  if [ $# -gt 1 ]; then
    what="selected tests"; args=("${@:2}")
  elif [ "$major" = "$faults" ]; then
    what="whole suite"; args=()
  elif [[ $full == *" $major "* ]]; then
    what="whole suite but the fault injection"; args=(--skip faults:: --skip kills::)
  else
    what="core scenarios"; args=(--exact "${core[@]}")
  fi
  echo "$what" >"$logs/$major.what"
  WALHALLA_PG=$major "$it" "${args[@]}" >"$logs/$major.log" 2>&1
}

# The counts in a libtest log's result line.
count() { grep -a -E '^test result:' "$1" | grep -o -E "[0-9]+ $2" | awk '{s += $1} END {print s + 0}'; }

status=0
report() {
  local major=$1 rc=$2 log=$logs/$1.log
  echo "== integration tests on PostgreSQL $major ($(cat "$logs/$major.what"))"
  cat "$log"
  if [ "$rc" != 0 ]; then status=1; fi
  if [ "$(cat "$logs/$major.what")" = "core scenarios" ] && [ "$rc" = 0 ] &&
    [ "$(count "$log" passed)" != "${#core[@]}" ]; then
    echo "tests/core-scenarios names ${#core[@]} tests but $(count "$log" passed) ran" >&2
    status=1
  fi
}

# Longest first, so that the short runs fill the other slot at the end: the major with the
# fault tests, then the other whole suites, then the core scenarios.
order=
[[ " $majors " == *" $faults "* ]] && order=$faults
for major in $majors; do [[ $full == *" $major "* && $major != "$faults" ]] && order+=" $major"; done
for major in $majors; do [[ $full != *" $major "* ]] && order+=" $major"; done

declare -A pids=()
for major in $order; do
  while [ "${#pids[@]}" -ge "$jobs" ]; do
    wait -n -p done_pid && rc=0 || rc=$?
    for m in "${!pids[@]}"; do
      if [ "${pids[$m]}" = "$done_pid" ]; then report "$m" "$rc"; unset "pids[$m]"; fi
    done
  done
  run_major "$major" "$@" &
  pids[$major]=$!
done
for m in "${!pids[@]}"; do
  wait "${pids[$m]}" && rc=0 || rc=$?
  report "$m" "$rc"
done

summary=
for major in $majors; do
  log=$logs/$major.log
  summary+="${summary:+; }PostgreSQL $major: $(count "$log" passed) passed, $(count "$log" failed) failed"
done
echo "integration tests: $summary"
exit "$status"

#!/usr/bin/env bash
# table.sh - the fault-injection results table (docs/faults.md): runs every fault test on a
# real PostgreSQL under pgbench load, each appending its row (fault, tries, segments compared,
# bytes lost, corrupt objects, recovery time) to a JSON-lines file, then renders the table.
#
#   tests/faults/table.sh                 the fault tests of the default suite (faults::, kills::)
#   tests/faults/table.sh --hundred       also the 100-kill run (#[ignore]d in the default suite)
#   tests/faults/table.sh --from FILE     renders FILE (rows recorded earlier) without running
#   --conditions TEXT                     how the rows were measured, if not by this script alone
#                                         (e.g. "during tests/run.sh, beside the other tests")
#
#   WALHALLA_PG       the PostgreSQL major to run on (default 15)
#   WALHALLA_KILLS, WALHALLA_KILL_SEED    passed to the 100-kill run
# Every row's test fails unless its loss and corruption columns are 0, so a table this script
# wrote holds only zeros there; a failing test ends the script before it writes the table.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=docs/faults.md
rows=
hundred=
conditions="by tests/faults/table.sh alone, one test at a time"
while [ $# -gt 0 ]; do
  case $1 in
    --hundred) hundred=1 ;;
    --from) rows=$2; shift ;;
    --conditions) conditions=$2; shift ;;
    *) echo "table.sh: unknown argument $1 (see the comment at its top)" >&2; exit 2 ;;
  esac
  shift
done

export WALHALLA_PG=${WALHALLA_PG:-15}
if [ -z "$rows" ]; then
  tests/prepare.sh
  rows=$(mktemp)
  trap 'rm -f "$rows"' EXIT
  it=$(tests/it-executable.sh)
  WALHALLA_FAULT_RESULTS=$rows "$it" faults:: kills:: --test-threads=1
  if [ -n "$hundred" ]; then
    WALHALLA_FAULT_RESULTS=$rows "$it" --ignored --exact \
      kills::the_receiver_killed_a_hundred_times_loses_nothing --nocapture
  fi
fi

python3 - "$rows" "$WALHALLA_PG" "$conditions" >"$out" <<'PY'
import json, platform, sys, datetime, os
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
if not rows:
    sys.exit("table.sh: no rows were recorded")
cores = os.cpu_count()
print(f"""# Faults injected, and what they cost

Each row is one fault injected end to end on a real PostgreSQL {sys.argv[2]} under pgbench load,
with `walhalla receive` archiving. After the fault the archive is compared byte for byte with the
primary's own WAL, and a copy recovered from a base backup through `walhalla fetch` alone must hold
the primary's data. The test named in each row fails when its loss or corruption column is not 0.

Regenerate with `tests/faults/table.sh` (add `--hundred` for the 100-kill run). The
misbehaving-walsender tests (`tests/it/misbehaving.rs`) and the fuzz targets (`fuzz/README.md`)
are reported where they live.
""")
print("| fault | test | tries | segments compared | bytes lost | corrupt objects | recovery after the fault |")
print("|---|---|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['fault']} | `{r['test']}` | {r['tries']} | {r['segments']} | {r['bytes_lost']} "
          f"| {r['corrupt_objects']} | {r['recovery_s']:.1f} s |")
print(f"""
Measured {datetime.date.today().isoformat()} on {cores} cores ({platform.machine()}), {sys.argv[3]}; WAL
segments of 1 MiB. Recovery: from the end of the fault until the archive held what the primary had written by
then (the longest over the tries).""")
PY
echo "table.sh: wrote $out ($(( $(grep -c "^| " "$out") - 1 )) rows)"

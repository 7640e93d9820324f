#!/usr/bin/env bash
# fetch_calls.sh LOG COMMAND... - runs a restore_command (COMMAND, whose last two words are %f and
# %p) and appends one line to LOG: start and end (epoch seconds), the file, whether walhalla's
# prefetch cache beside %p held it ("hit" or "miss"), and the exit code. peers.sh's CALLS=1 uses
# it to show which calls of a recovery wait for the store. Costs one bash start per call.
log=$1; shift
file=${*: -2:1} dest=${*: -1}
state=miss; [ -f "$(dirname "$dest")/walhalla-prefetch/$file" ] && state=hit
t0=$EPOCHREALTIME
"$@"; rc=$?
echo "$t0 $EPOCHREALTIME $file $state $rc" >> "$log"
exit $rc

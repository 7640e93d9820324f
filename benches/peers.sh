#!/usr/bin/env bash
# peers.sh - walhalla beside cp and pgBackRest (and pg's own tools) in ONE run of the shared WAL
# benchmark harness, so every figure compares tools measured on the same machine at the same time.
#
#   benches/peers.sh push|get|recovery|stream|s3|s3push [more...]
#
# recovery runs walhalla fetch from a local archive at each readahead depth in PREFETCH, a floor
# (mv of segments already synced on pg_wal's file system), then walhalla from an S3 archive
# (moto_server on loopback) directly and through `walhalla serve` (fetch --server).
# stream runs walhalla receive beside pg_receivewal ($BENCH/stream.sh) at each level in LEVELS, and
# at level 3 with --synchronous. s3 runs walhalla fetch beside pgBackRest in $BENCH/s3_recovery.sh:
# moto behind a TLS latency proxy at each RTT in RTTS (default "0 20 60"), with the default
# readahead and with each --prefetch depth in S3_PREFETCH. s3push runs walhalla push beside
# pgBackRest archive-push into moto behind the same TLS latency proxy (benches/s3_push.sh).
#
# Env: BENCH     the shared harness (default ../shared/bench beside this checkout)
#      CORPUS    corpus built by $BENCH/corpus.sh (default /tmp/walcorpus; LOAD=mixed for a realistic one)
#      LEVELS    zstd levels to run walhalla at in push/get (default "1 3"); recovery uses level 3
#      PREFETCH  recovery: --prefetch depths from the local archive (default "0 4 8 16"; 8 is the default)
#      MOTO      moto_server for the S3 variants (default: from PATH, else /root/.pyenv/shims/moto_server)
#      RTTS      s3: round-trip times in ms (default "0 20 60"); s3push: (default "0 60")
#      S3_PREFETCH s3: --prefetch depths run beside the default at each RTT (default "32"; empty: none)
#      S3_SERVE  s3: 1 also runs each RTT through `walhalla serve` in front of the store
#                (benches/serve_s3.sh), which the restore_commands ask with fetch --server
#      REPS      as in the harness (default 3)
#      BEFORE    another walhalla binary (say, a build of the previous commit): every walhalla
#                variant also runs with it, labelled "before", in the same run
#      CALLS     s3: 1 logs every walhalla fetch (benches/fetch_calls.sh) and, after the run,
#                prints per variant the calls that found their file in the prefetch cache and
#                those that waited for the store, with the time each group took, and each
#                file that missed the cache
# Needs root (the harness runs PostgreSQL and the commands as user postgres), a built corpus, and
# pgbackrest, hyperfine and GNU time installed (see $BENCH/README.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$root/../shared/bench}
export CORPUS=${CORPUS:-/tmp/walcorpus}
LEVELS=${LEVELS:-"1 3"}
PREFETCH=${PREFETCH:-"0 4 8 16"}
MOTO=${MOTO:-$(command -v moto_server || echo /root/.pyenv/shims/moto_server)}

# In the checkout, so that its .cargo/config.toml applies (cargo reads it from the current directory).
(cd "$root" && cargo build --release --quiet)
# PostgreSQL's user must be able to run the binary: the checkout may be under a root-only dir.
bin_dir=$(mktemp -d /tmp/walhalla-bench-bin.XXXXXX)
pids=()  # background servers started here, stopped by pid on exit
# serve_s3.sh records the servers it starts in $bin_dir/serve-PORT.pid.
trap 'for p in "${pids[@]}" $(cat "$bin_dir"/serve-*.pid 2>/dev/null); do kill "$p" 2>/dev/null || true; done
      rm -rf "$bin_dir" /tmp/walbench-floor' EXIT
install -m 755 "$root/target/release/walhalla" "$root/benches/fill_archive.sh" "$root/benches/fill_s3.sh" \
  "$root/benches/fetch_calls.sh" "$root/benches/serve_s3.sh" "$bin_dir/"
# Each variant runs with every binary here: the build, and BEFORE's labelled "before".
tools=("walhalla|$bin_dir/walhalla")
if [ -n "${BEFORE:-}" ]; then
  install -m 755 "$BEFORE" "$bin_dir/walhalla-before"
  tools+=("walhalla before|$bin_dir/walhalla-before")
fi
chmod 755 "$bin_dir"
WH=$bin_dir/walhalla
# Like PostgreSQL, run the hooks in the data directory, where walhalla reads pg_control.
IN_DATA="cd $CORPUS/primary &&"

push_extra="" get_extra="" recovery_extra=""
for tool in "${tools[@]}"; do
  label=${tool%%|*} wh=${tool#*|}
  for level in $LEVELS; do
    archive=$CORPUS/archives/walhalla-zstd$level
    fill="$bin_dir/fill_archive.sh $WH $level $archive"
    push_extra+="$label zstd-$level|:|$IN_DATA $wh --archive \$DEST --compression-level $level push %p"$'\n'
    get_extra+="$label zstd-$level|$fill|$IN_DATA $wh --archive $archive fetch %f %p"$'\n'
  done
done

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 100); do curl -sf -o /dev/null "$@" && return; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
# benches/s3_push.sh, run from here, uses both.
export -f free_port wait_http

# s3_up: moto_server on a free loopback port with bucket walhalla-bench holding the corpus at level 3,
# and `walhalla serve` in front of it; sets S3ENV (the AWS_* settings as an `env` prefix), S3 and SERVER.
s3_up() {
  local port; port=$(free_port)
  "$MOTO" -p "$port" > "$bin_dir/moto.log" 2>&1 & pids+=($!)
  wait_http "http://127.0.0.1:$port/"
  curl -sf -o /dev/null -X PUT "http://127.0.0.1:$port/walhalla-bench"
  S3ENV="env AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x AWS_REGION=us-east-1 AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ALLOW_HTTP=true"
  S3=s3://walhalla-bench/corpus
  find "$CORPUS/wal" -type f -name '????????????????????????' | sort |
    xargs -P2 -I{} runuser -u postgres -- sh -c "cd $CORPUS/primary && $S3ENV $WH --archive $S3 push {}"
  # serve runs as root and fetch as postgres, whose default token files differ: one explicit file.
  TOKEN=$bin_dir/token
  od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$TOKEN"
  chown postgres: "$TOKEN"; chmod 600 "$TOKEN"
  port=$(free_port); SERVER=http://127.0.0.1:$port
  $S3ENV "$WH" --archive $S3 serve --listen "127.0.0.1:$port" --token-file "$TOKEN" > "$bin_dir/serve.log" 2>&1 & pids+=($!)
  wait_http "$SERVER/healthz" -H "Authorization: Bearer $(cat "$TOKEN")"
}

recovery_variants() {
  local archive=$CORPUS/archives/walhalla-zstd3 n
  local fill="$bin_dir/fill_archive.sh $WH 3 $archive" tool
  for tool in "${tools[@]}"; do
    for n in $PREFETCH; do
      recovery_extra+="${tool%%|*} prefetch $n|$fill|${tool#*|} --archive $archive fetch --prefetch $n %f \"%p\""$'\n'
    done
  done
  # The floor no restore_command can beat: each segment already on pg_wal's file system, synced,
  # moved into place (what is left is replay, PostgreSQL's own fsyncs and the process per file).
  local floor=/tmp/walbench-floor
  recovery_extra+="floor: mv of synced files|rm -rf $floor && cp -r $CORPUS/wal $floor && chown -R postgres: $floor && sync|mv $floor/%f \"%p\""$'\n'
  s3_up
  recovery_extra+="walhalla s3|:|$S3ENV $WH --archive $S3 fetch %f \"%p\""$'\n'
  recovery_extra+="walhalla s3 via serve|:|$S3ENV $WH --archive $S3 fetch --server $SERVER --token-file $TOKEN %f \"%p\""$'\n'
}

# stream: the receiver as postgres, its archive in $DEST (which stream.sh measures), its spool
# beside it in a directory of its own, removed after the run.
stream_variants() {
  local receive label level tool
  for tool in "${tools[@]}"; do
    label=${tool%%|*}
    receive="sp=\$(mktemp -d) && ${tool#*|} --archive \$DEST receive -d \"host=\$PGHOST port=\$PGPORT user=postgres\" -S \$SLOT --start-lsn \$START_LSN --endpos \$END_LSN --spool \$sp"
    for level in $LEVELS; do
      stream_extra+="$label zstd-$level|$receive --compression-level $level; rc=\$?; rm -rf \$sp; exit \$rc"$'\n'
    done
    stream_extra+="$label zstd-3 --synchronous|$receive --compression-level 3 --synchronous; rc=\$?; rm -rf \$sp; exit \$rc"$'\n'
  done
}

# s3: the variables stay unexpanded here; recovery.sh runs each restore_command in
# s3_recovery.sh's environment, which has $S3_URL_<rtt>, $S3_BUCKET and the AWS_* keys.
s3_variants() {
  local rtt wh tool depth label port serve token=$bin_dir/serve-token
  local url="s3://\$S3_BUCKET/walhalla"
  # serve runs as root and fetch as postgres, whose default token files differ: one explicit file.
  od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$token"
  chown postgres: "$token"; chmod 600 "$token"
  local fill="$bin_dir/fill_s3.sh $WH $url"
  for tool in "${tools[@]}"; do
    for rtt in ${RTTS:-0 20 60}; do
      wh="env AWS_ENDPOINT_URL=\$S3_URL_$rtt AWS_ALLOW_INVALID_CERTIFICATES=true ${tool#*|} --archive $url"
      s3_extra+="${tool%%|*} s3 rtt$rtt|$fill|$(calls_log "${tool%%|*} s3 rtt$rtt")$wh fetch %f \"%p\""$'\n'
      # The issue's question: does a deeper readahead help, and at which RTT?
      for depth in ${S3_PREFETCH-32}; do
        label="${tool%%|*} s3 rtt$rtt prefetch $depth"
        s3_extra+="$label|$fill|$(calls_log "$label")$wh fetch --prefetch $depth %f \"%p\""$'\n'
      done
      if [ "${S3_SERVE:-0}" = 1 ]; then
        # The restore_commands ask `walhalla serve`, which keeps its connections to the store.
        port=$(free_port) label="${tool%%|*} s3 rtt$rtt via serve"
        serve="$bin_dir/serve_s3.sh ${tool#*|} $url \$S3_URL_$rtt $port $token"
        s3_extra+="$label|$fill && $serve|$(calls_log "$label")${tool#*|} fetch --server http://127.0.0.1:$port --token-file $token %f \"%p\""$'\n'
      fi
    done
  done
}

# s3push: walhalla's push at its default level into the store of benches/s3_push.sh, at each RTT;
# the variables stay unexpanded (s3_push.sh exports them), each variant under a prefix of its own.
s3push_variants() {
  local rtt tool prefix
  for tool in "${tools[@]}"; do
    for rtt in ${RTTS:-0 60}; do
      prefix=$(echo "${tool%%|*}" | tr ' ' '-')-rtt$rtt
      s3push_extra+="${tool%%|*} s3 rtt$rtt|s3_empty $prefix/|$IN_DATA env AWS_ENDPOINT_URL=\$S3_URL_$rtt AWS_ALLOW_INVALID_CERTIFICATES=true ${tool#*|} --archive s3://\$S3_BUCKET/$prefix push %p"$'\n'
    done
  done
}

# With CALLS=1, the prefix that logs each fetch of variant LABEL to a file of its own.
calls_log() {
  [ "${CALLS:-0}" = 1 ] || return 0
  local log; log="$bin_dir/calls-$(echo "$1" | tr ' ' '_').log"
  touch "$log"; chown postgres: "$log"
  echo "$bin_dir/fetch_calls.sh $log "
}

# After a CALLS=1 run: each variant's hits and misses, summed over its rounds.
calls_report() {
  local log
  for log in "$bin_dir"/calls-*.log; do
    [ -s "$log" ] || continue
    awk -v name="$(basename "$log" .log | sed 's/^calls-//; s/_/ /g')" '
      { n[$4]++; t[$4] += $2 - $1
        if ($4 == "miss") { mn[$3]++; mt[$3] += $2 - $1 } }
      END { printf "%-36s", name
            for (k in n) printf "  %s: %d calls, %.0f ms", k, n[k], t[k] * 1000
            print ""
            for (f in mn) printf "    missed %s: %d calls, %.0f ms each\n", f, mn[f], mt[f] * 1000 / mn[f] }' "$log"
  done
}

stream_extra="" s3_extra="" s3push_extra=""
for what in "$@"; do
  case $what in
    push) PUSH_EXTRA=${push_extra%$'\n'} "$BENCH/archive_push.sh" ;;
    get) GET_EXTRA=${get_extra%$'\n'} "$BENCH/archive_get.sh" ;;
    recovery) recovery_variants; RECOVERY_EXTRA=${recovery_extra%$'\n'} "$BENCH/recovery.sh" ;;
    stream) stream_variants; STREAM_EXTRA=${stream_extra%$'\n'} "$BENCH/stream.sh" ;;
    s3) s3_variants; RTTS=${RTTS:-"0 20 60"} S3_RECOVERY_EXTRA=${s3_extra%$'\n'} "$BENCH/s3_recovery.sh"
        if [ "${CALLS:-0}" = 1 ]; then
          calls_report | tee "$BENCH/results/$(date +%Y%m%d-%H%M%S)-s3-calls.txt"
        fi ;;
    s3push) s3push_variants
            BENCH=$BENCH MOTO=$MOTO S3_PUSH_EXTRA=${s3push_extra%$'\n'} "$root/benches/s3_push.sh" "$bin_dir" ;;
    *) echo "usage: $0 push|get|recovery|stream|s3|s3push ..." >&2; exit 2 ;;
  esac
done

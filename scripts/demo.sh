#!/usr/bin/env bash
# demo.sh - the README's first command: `walhalla demo` on a fresh machine. Installs the
# PostgreSQL server binaries when they are missing (as root, from Debian's packages), builds
# walhalla, and runs the demo: a throwaway PostgreSQL streamed by `walhalla receive` into a
# local archive directory, a `walhalla backup`, rows deleted after a restore point and brought
# back by `walhalla restore`; then what it showed and what to run next. Everything is removed
# unless --keep (extra arguments go to `walhalla demo`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PG_BIN:-}" ] && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "demo: PostgreSQL server binaries not found; install them (apt-get install postgresql) or set PG_BIN" >&2
    exit 1
  fi
  echo "== installing PostgreSQL server binaries"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
# In the checkout, so that its .cargo/config.toml applies (cargo reads it from the current directory).
(cd "$root" && cargo build --release --quiet)
exec "$root/target/release/walhalla" demo "$@"

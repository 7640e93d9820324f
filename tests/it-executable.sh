#!/usr/bin/env bash
# it-executable.sh - builds the integration test binary `it` with the `failpoints` feature (the
# kill tests need it) and prints its path:  WALHALLA_PG=15 $(tests/it-executable.sh) FILTER
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --test it --features failpoints --no-run --message-format=json |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "it" and m.get("executable"):
        print(m["executable"])'

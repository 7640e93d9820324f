#!/usr/bin/env bash
# run.sh - the test suite: prepare the machine, then unit and integration tests against real
# PostgreSQL clusters and a real S3-compatible server on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/prepare.sh
cargo test "$@"

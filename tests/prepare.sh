#!/usr/bin/env bash
# prepare.sh - install what the test suite needs and a fresh machine lacks: PostgreSQL server
# binaries (initdb, pg_ctl), the zstd command, and moto_server (a real S3-compatible server).
# Installs only what is missing; needs root for apt-get (Debian) and pip.
set -euo pipefail

apt_updated=
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "prepare.sh: missing $*; install it or run as root" >&2; exit 1
  fi
  [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 && [ -z "${PG_BIN:-}" ]; then
  echo "prepare.sh: installing PostgreSQL server binaries"
  apt_install postgresql
fi
command -v zstd >/dev/null || apt_install zstd
command -v runuser >/dev/null || apt_install util-linux
if ! command -v moto_server >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "prepare.sh: moto_server is missing; install it with: python3 -m pip install 'moto[server]'" >&2; exit 1
  fi
  echo "prepare.sh: installing moto_server"
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  # Debian's own python3 refuses system-wide installs (PEP 668) unless told otherwise.
  python3 -m pip install --quiet 'moto[server]>=5.1' 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages 'moto[server]>=5.1'
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi
command -v moto_server >/dev/null || { echo "prepare.sh: moto_server is not on PATH after installing it" >&2; exit 1; }
python3 -c 'import boto3' || { echo "prepare.sh: python3 cannot import boto3" >&2; exit 1; }

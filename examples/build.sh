#!/usr/bin/env bash
# Builds the example guests and copies them to examples/wasm/ (or to the directory given as the
# first argument):
#   - for wasm32-wasip1, every guest but http-echo, as core modules: <out>/<name>.wasm;
#   - for wasm32-wasip2, the command guests (all but counter) and http-echo, as components:
#     <out>/p2/<name>.wasm.
#
# The output is byte-for-byte reproducible across checkout locations: absolute paths of this
# directory and of the cargo home are remapped, and the release profile strips debug info.
#
# Environment:
#   SPEARLET_EXAMPLES_TARGET_DIR  cargo target directory (default: examples/target)
#   SPEARLET_EXAMPLES_TARGETS     which of the two targets to build, space-separated
#                                 (default: "wasm32-wasip1 wasm32-wasip2")
set -euo pipefail

examples_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
out_dir="${1:-$examples_dir/wasm}"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
target_dir="${SPEARLET_EXAMPLES_TARGET_DIR:-$examples_dir/target}"
read -r -a targets <<< "${SPEARLET_EXAMPLES_TARGETS:-wasm32-wasip1 wasm32-wasip2}"

# Relative paths are relative to the caller's directory, not to examples/.
mkdir -p "$out_dir" "$target_dir"
out_dir="$(cd "$out_dir" && pwd -P)"
target_dir="$(cd "$target_dir" && pwd -P)"

# The guests that are WASI command programs (std only, a `main`); they build for both targets.
commands=(echo fail hello memhog sleep spin ticker wordcount)
# wasm32-wasip1 only: the `counter` reactor (a cdylib with core-module exports).
p1_only=(counter)
# wasm32-wasip2 only: the `wasi:http/proxy` component (a cdylib; the file is named after the lib).
p2_only=(http-echo)

cd "$examples_dir"
# CARGO_ENCODED_RUSTFLAGS would take precedence over RUSTFLAGS below.
unset CARGO_ENCODED_RUSTFLAGS
export RUSTFLAGS="--remap-path-prefix=$examples_dir=/spearlet/examples --remap-path-prefix=$cargo_home=/cargo"
export CARGO_TARGET_DIR="$target_dir"

built=0
for target in "${targets[@]}"; do
    case "$target" in
        wasm32-wasip1) guests=("${p1_only[@]}" "${commands[@]}"); dest="$out_dir" ;;
        wasm32-wasip2) guests=("${commands[@]}" "${p2_only[@]}"); dest="$out_dir/p2" ;;
        *) echo "build.sh: unknown target $target" >&2; exit 2 ;;
    esac
    packages=()
    for guest in "${guests[@]}"; do packages+=(-p "$guest"); done
    cargo build --release --locked --target "$target" "${packages[@]}"
    mkdir -p "$dest"
    for guest in "${guests[@]}"; do
        install -m 644 "$target_dir/$target/release/${guest//-/_}.wasm" "$dest/$guest.wasm"
    done
    built=$((built + ${#guests[@]}))
done
echo "built $built guests (${targets[*]}) into $out_dir" >&2

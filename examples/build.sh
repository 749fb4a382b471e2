#!/usr/bin/env bash
# Builds the example guests for wasm32-wasip1 and copies them to examples/wasm/ (or to the
# directory given as the first argument).
#
# The output is byte-for-byte reproducible across checkout locations: absolute paths of this
# directory and of the cargo home are remapped, and the release profile strips debug info.
#
# Environment:
#   SPEARLET_EXAMPLES_TARGET_DIR  cargo target directory (default: examples/target)
set -euo pipefail

examples_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
out_dir="${1:-$examples_dir/wasm}"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
target_dir="${SPEARLET_EXAMPLES_TARGET_DIR:-$examples_dir/target}"

# Relative paths are relative to the caller's directory, not to examples/.
mkdir -p "$out_dir" "$target_dir"
out_dir="$(cd "$out_dir" && pwd -P)"
target_dir="$(cd "$target_dir" && pwd -P)"

guests=(counter echo fail hello memhog sleep spin ticker wordcount)

cd "$examples_dir"
# CARGO_ENCODED_RUSTFLAGS would take precedence over RUSTFLAGS below.
unset CARGO_ENCODED_RUSTFLAGS
RUSTFLAGS="--remap-path-prefix=$examples_dir=/spearlet/examples --remap-path-prefix=$cargo_home=/cargo" \
CARGO_TARGET_DIR="$target_dir" \
    cargo build --release --locked --target wasm32-wasip1

for guest in "${guests[@]}"; do
    install -m 644 "$target_dir/wasm32-wasip1/release/$guest.wasm" "$out_dir/$guest.wasm"
done
echo "built ${#guests[@]} guests into $out_dir" >&2

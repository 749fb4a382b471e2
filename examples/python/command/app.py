"""A `wasi:cli/command` component in Python (it exports wasi:cli/run), built with componentize-py.

Reads all of stdin and writes `Hello, <stdin, stripped, or "world">! (from Python)` to stdout and a
log line to stderr. Input that is exactly `fail` exits with status 2 instead.

Build (scripts/build-polyglot-components.sh does this; OUTDIR/.wit/wasi-0.2.4 is the wit/ directory
of the crates.io package `wasi` 0.14.2+wasi-0.2.4, which the script fetches with cargo):

    componentize-py -d OUTDIR/.wit/wasi-0.2.4 -w wasi:cli/command@0.2.4 \
        componentize -p examples/python/command app -o python-command.wasm
"""

import sys

from wit_world import exports


class Run(exports.Run):
    def run(self) -> None:
        data = sys.stdin.buffer.read()
        if data == b"fail":
            print("python-command: asked to fail, exiting with status 2", file=sys.stderr)
            sys.exit(2)
        name = data.decode("utf-8", errors="replace").strip() or "world"
        print(f"python-command: read {len(data)} bytes from stdin", file=sys.stderr)
        sys.stdout.write(f"Hello, {name}! (from Python)\n")
        sys.stdout.flush()

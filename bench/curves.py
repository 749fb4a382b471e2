#!/usr/bin/env python3
"""How the cost of a warm sync `echo` call grows with work, each point against the bare tonic
echo baseline measured in the same run (`spearlet bench --baseline`).

Three series: calls in flight (1, 16, 64, 256; 64-byte payloads), payload size (64 B, 64 KiB,
1 MiB; 16 in flight) and registered tasks (1, 100, 10,000; 64 in flight; the extra tasks are
registered over HTTP on the same uploaded module, so they cost registry entries, not compiles).

Writes bench/results/curves.csv and, when matplotlib is importable, docs/curves.png.

Usage (after `cargo build --release -p spearlet`):
    python3 bench/curves.py [--seconds 3]
    # for the plot: python3 -m venv /tmp/plot && /tmp/plot/bin/pip install matplotlib
    #               /tmp/plot/bin/python bench/curves.py
"""

import argparse
import csv
import json
import os
import pathlib
import subprocess
import tempfile
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
BINARY = ROOT / "target" / "release" / "spearlet"


def start_node(data_dir):
    node = subprocess.Popen(
        [BINARY, "serve", "--data-dir", data_dir, "--grpc-addr", "127.0.0.1:0",
         "--http-addr", "127.0.0.1:0", "--log-level", "warn", "--no-examples"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    grpc = node.stdout.readline().strip().rsplit("grpc://", 1)[1]
    http = node.stdout.readline().split("http://", 1)[1].split()[0]
    return node, grpc, http


def http_post(http, path, body, content_type="application/json"):
    request = urllib.request.Request(f"http://{http}{path}", data=body, method="POST",
                                     headers={"Content-Type": content_type})
    with urllib.request.urlopen(request) as answer:
        return json.loads(answer.read())


def register(http, location, name):
    http_post(http, "/v1/tasks", json.dumps({
        "task_name": name,
        "artifact_spec": {"artifact_type": "wasm", "location": location},
    }).encode())


def bench(grpc, seconds, concurrency, payload_bytes):
    output = subprocess.run(
        [BINARY, "--json", "bench", "--addr", f"http://{grpc}", "--task", "echo",
         "--baseline", "--duration", str(seconds), "--warmup", "1",
         "--concurrency", str(concurrency), "--payload-bytes", str(payload_bytes)],
        check=True, capture_output=True, text=True).stdout
    return json.loads(output)


def row(series, x, report):
    node, baseline = report["spearlet"], report["baseline"]
    return {
        "series": series, "x": x,
        "spearlet_rps": round(node["throughput_per_second"]),
        "spearlet_p50_ms": node["latency_ms"]["p50"],
        "spearlet_p99_ms": node["latency_ms"]["p99"],
        "baseline_rps": round(baseline["throughput_per_second"]),
        "baseline_p50_ms": baseline["latency_ms"]["p50"],
        "baseline_p99_ms": baseline["latency_ms"]["p99"],
        "throughput_ratio": round(report["ratios"]["throughput"], 3),
    }


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not importable; skipped the plot")
        return
    series = [("in_flight", "calls in flight (64 B)"), ("payload_bytes", "payload bytes (16 in flight)"),
              ("tasks", "registered tasks (64 in flight)")]
    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    for column, (name, label) in enumerate(series):
        points = [r for r in rows if r["series"] == name]
        xs = [r["x"] for r in points]
        top, bottom = axes[0][column], axes[1][column]
        top.plot(xs, [r["spearlet_rps"] for r in points], "o-", label="spearlet")
        top.plot(xs, [r["baseline_rps"] for r in points], "s--", label="bare tonic echo")
        bottom.plot(xs, [r["spearlet_p99_ms"] for r in points], "o-", label="spearlet")
        bottom.plot(xs, [r["baseline_p99_ms"] for r in points], "s--", label="bare tonic echo")
        for axis in (top, bottom):
            axis.set_xscale("log")
            axis.set_xlabel(label)
            axis.grid(True, alpha=0.3)
        top.set_ylabel("calls/s")
        bottom.set_ylabel("p99 latency (ms)")
        bottom.set_yscale("log")
        top.legend(fontsize=8)
    figure.suptitle("warm sync echo over gRPC vs a bare tonic echo, same run (2 cores, shared with the client)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    print(f"wrote {path}")


def main():
    arguments = argparse.ArgumentParser()
    arguments.add_argument("--seconds", type=int, default=3)
    seconds = arguments.parse_args().seconds
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        node, grpc, http = start_node(data_dir)
        try:
            module = (ROOT / "examples" / "wasm" / "echo.wasm").read_bytes()
            location = http_post(http, "/v1/artifacts", module, "application/wasm")["location"]
            register(http, location, "echo")
            fillers = 0
            for tasks in (1, 100, 10_000):
                while fillers < tasks - 1:
                    register(http, location, f"filler-{fillers:05}")
                    fillers += 1
                rows.append(row("tasks", tasks, bench(grpc, seconds, 64, 64)))
                print(rows[-1], flush=True)
            for in_flight in (1, 16, 64, 256):
                rows.append(row("in_flight", in_flight, bench(grpc, seconds, in_flight, 64)))
                print(rows[-1], flush=True)
            for payload in (64, 64 * 1024, 1024 * 1024):
                rows.append(row("payload_bytes", payload, bench(grpc, seconds, 16, payload)))
                print(rows[-1], flush=True)
        finally:
            node.terminate()
            node.wait()
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    with open(results / "curves.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {results / 'curves.csv'}")
    plot(rows, ROOT / "docs" / "curves.png")


if __name__ == "__main__":
    os.chdir(ROOT)
    main()

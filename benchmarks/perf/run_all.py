"""Run every performance benchmark of the harness and write the figures to one JSON file.

    python benchmarks/perf/run_all.py [--out benchmarks/perf/results.json]

Each benchmark measures its ratios side by side in one run (these machines are
noisy); the README's performance table quotes these figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = ["small_vla_latency.py", "divergence_speed.py", "harness_throughput.py", "demos_throughput.py", "pretrain_throughput.py",
              "adapt_throughput.py", "openvla_divergence.py"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join("runs", "perf.json"))
    ap.add_argument("--only", nargs="*", help="run only these scripts")
    args = ap.parse_args(argv)
    results = {}
    for name in args.only or BENCHMARKS:
        if not os.path.exists(os.path.join(HERE, name)):
            continue
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            path = f.name
        print(f"== {name}", flush=True)
        proc = subprocess.run([sys.executable, os.path.join(HERE, name), "--json", path])
        if proc.returncode == 0 and os.path.getsize(path):
            with open(path) as f:
                results[name[:-3]] = json.load(f)
        else:
            results[name[:-3]] = {"error": f"exit code {proc.returncode}"}
        os.remove(path)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run every performance benchmark of the harness and write the figures to one JSON file.

    python benchmarks/perf/run_all.py [--out benchmarks/perf/results.json]
    python benchmarks/perf/run_all.py --device cuda --out runs/perf-gpu.json   # the GPU figures

With ``--device cuda`` only the benchmarks that train or run a model on the GPU
are run (pretraining and SFT samples/s, teacher-forced divergences), each with
``--device cuda``; their simulator rollouts, if any, stay on CPU processes.

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

from vla_forget.jsonio import write_json

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = ["small_vla_latency.py", "divergence_speed.py", "harness_throughput.py", "demos_throughput.py", "pretrain_throughput.py",
              "adapt_throughput.py", "openvla_divergence.py", "kl_states.py", "lowpoly_throughput.py",
              "step_breakdown.py"]
#: the benchmarks that take --device, and the extra arguments of their GPU run
GPU_BENCHMARKS = {"divergence_speed.py": ["--states", "2048", "--batch", "256"],
                  "pretrain_throughput.py": ["--threads", "1", "--steps", "60", "--batch-size", "64",
                                             "--cameras", "front", "front+wrist"],
                  "adapt_throughput.py": ["--skip-rollouts", "--threads", "1"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join("runs", "perf.json"))
    ap.add_argument("--only", nargs="*", help="run only these scripts")
    ap.add_argument("--device", default="cpu", help="cpu (every benchmark) or cuda (the GPU-capable ones, on the GPU)")
    args = ap.parse_args(argv)
    results = {}
    gpu = args.device != "cpu"
    for name in args.only or (list(GPU_BENCHMARKS) if gpu else BENCHMARKS):
        if not os.path.exists(os.path.join(HERE, name)):
            continue
        if gpu and name not in GPU_BENCHMARKS:
            print(f"{name} has no GPU mode; skipped", flush=True)
            continue
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            path = f.name
        print(f"== {name}", flush=True)
        extra = GPU_BENCHMARKS.get(name, []) + ["--device", args.device] if gpu else []
        proc = subprocess.run([sys.executable, os.path.join(HERE, name), "--json", path, *extra])
        if proc.returncode == 0 and os.path.getsize(path):
            with open(path) as f:
                results[name[:-3]] = json.load(f)
        else:
            results[name[:-3]] = {"error": f"exit code {proc.returncode}"}
        os.remove(path)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, results, indent=2)
    print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

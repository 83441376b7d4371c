"""The Ray executor against the local process pool on one machine, side by side in one run.

The same bench (the small VLA base and the scripted expert on two tabletop-v2 tasks, no videos, no divergences)
with ``--executor local`` and with ``--executor ray`` on a one-machine Ray cluster started here, with the same
number of workers, alternated; episodes per second of each (wall time of the whole bench call, from the first
job to the last episode written, the cluster already up). Target: Ray within 10 % of the local pool.

    python benchmarks/perf/ray_executor.py [--reps 2] [--episodes 10] [--workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from vla_forget.jsonio import write_json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--episodes", type=int, default=10, help="per task and policy")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import ray

    from vla_forget.bench import BenchConfig, run_bench

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             configure_logging=False)
    walls: dict = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        battery = os.path.join(tmp, "two-v2.yaml")
        with open(battery, "w") as f:
            f.write(f"id: two\nversion: 2\nepisodes: {args.episodes}\nseed_start: 100000\n"
                    "tasks: [PushCube-v2, PickCube-v2]\n")
        for rep in range(args.reps):
            for executor in ("ray", "local"):
                cfg = BenchConfig(policies=["expert-v2", "small-vla-base-v6"], base="small-vla-base-v6",
                                  out=os.path.join(tmp, f"{executor}-{rep}"), battery=battery, target="none",
                                  workers=args.workers, videos_per_task=0, kl_states_per_task=0, progress=False,
                                  executor=executor)
                t0 = time.perf_counter()
                run_bench(cfg, log=lambda *_: None)
                walls[executor].append(round(time.perf_counter() - t0, 1))
                print(executor, rep, walls[executor][-1], "s", flush=True)
    ray.shutdown()
    n = 2 * 2 * args.episodes
    out = {"episodes": n, "workers": args.workers, "wall_s": walls,
           "episodes_per_s": {k: round(n / min(v), 3) for k, v in walls.items()},
           "ray_over_local": round(min(walls["local"]) / min(walls["ray"]), 3)}
    print(out)
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

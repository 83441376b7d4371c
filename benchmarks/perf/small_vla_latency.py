"""Latency of the small VLA on one CPU thread: the cost the bench pays at every env step.

Measures the median wall time of ``sample_tokens`` (encode once + 7 cached decoding
steps) for a batch of 8 and of 1 observations, and of one teacher-forced
``action_logits`` pass, at 128x128 images; prints a table, optionally writes JSON.
"cpu ms" is the thread's CPU time (less sensitive than wall time to other processes).

    python benchmarks/perf/small_vla_latency.py
    python benchmarks/perf/small_vla_latency.py --json runs/perf/small_vla_latency.json --repeats 100
    python benchmarks/perf/small_vla_latency.py --cameras front front+wrist   # both models, side by side

``front+wrist`` is the two-camera model (``wrist_camera=True``) on front and wrist
views side by side (``[B, S, 2S, 3]``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from vla_forget.jsonio import write_json
from vla_forget.policies.base import Observation
from vla_forget.policies.small_vla import SmallVLA

TARGET_SAMPLE_B8_MS = 20.0


def synthetic_obs(batch: int, image_size: int, state_dim: int, seed: int = 0, width: int = 0) -> Observation:
    g = torch.Generator().manual_seed(seed)
    return Observation(
        image=torch.randint(0, 256, (batch, image_size, width or image_size, 3), dtype=torch.uint8, generator=g),
        state=torch.randn(batch, state_dim, generator=g),
        instruction=["put the red cube on the blue target"] * batch,
    )


def time_ms(fn, repeats: int, warmup: int = 5) -> dict:
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.thread_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.thread_time() - c0) * 1e3)
    wall.sort()
    return {
        "median_ms": statistics.median(wall),
        "p10_ms": wall[len(wall) // 10],
        "p90_ms": wall[(9 * len(wall)) // 10],
        "cpu_median_ms": statistics.median(cpu),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=50, help="timed calls per measurement")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--cameras", nargs="+", default=["front"], choices=["front", "front+wrist"],
                    help="models to time, in turn within one run (default: front)")
    ap.add_argument("--json", metavar="PATH", help="also write the results here")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    rows = []
    sizes = {}
    for cams in args.cameras:
        wrist = cams == "front+wrist"
        policy = SmallVLA.random_init(seed=0, wrist_camera=wrist)
        cfg = policy.config
        sizes[cams] = policy.num_parameters()
        width = 2 * args.image_size if wrist else args.image_size
        label = "" if len(args.cameras) == 1 else f"[{cams}] "
        with torch.no_grad():
            for batch in (8, 1):
                obs = synthetic_obs(batch, args.image_size, cfg.state_dim, width=width)
                r = time_ms(lambda: policy.sample_tokens(obs, generator=gen), args.repeats)
                rows.append({"measure": f"{label}sample_tokens B={batch}", "cameras": cams, "batch": batch, **r})
            obs = synthetic_obs(8, args.image_size, cfg.state_dim, width=width)
            tokens, _ = policy.sample_tokens(obs, generator=gen)
            r = time_ms(lambda: policy.action_logits(obs, tokens), args.repeats)
            rows.append({"measure": f"{label}action_logits B=8 (teacher-forced)", "cameras": cams, "batch": 8, **r})

    n_params = sizes[args.cameras[0]]
    print(", ".join(f"SmallVLA [{c}] {n / 1e6:.2f} M parameters" for c, n in sizes.items())
          + f"; 1 thread, {args.image_size} px images, torch {torch.__version__}")
    print(f"{'measure':<52}{'median ms':>11}{'p10':>9}{'p90':>9}{'cpu ms':>9}")
    for row in rows:
        print(f"{row['measure']:<52}{row['median_ms']:>11.2f}{row['p10_ms']:>9.2f}{row['p90_ms']:>9.2f}{row['cpu_median_ms']:>9.2f}")
    try:
        load = os.getloadavg()[0]
        print(f"1-min load average {load:.2f} on {os.cpu_count()} cores (a loaded machine inflates the wall times)")
    except OSError:
        load = None
    ok = rows[0]["median_ms"] <= TARGET_SAMPLE_B8_MS
    print(f"target: sample_tokens B=8 <= {TARGET_SAMPLE_B8_MS:.0f} ms ({args.cameras[0]}): {'met' if ok else 'NOT met'}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        write_json(
            args.json,
            {
                "benchmark": "small_vla_latency",
                "parameters": n_params,
                "threads": 1,
                "image_size": args.image_size,
                "torch": torch.__version__,
                "machine": platform.machine(),
                "processor": platform.processor(),
                "cpu_count": os.cpu_count(),
                "load_average_1min": load,
                "target_sample_b8_ms": TARGET_SAMPLE_B8_MS,
                "target_met": ok,
                "parameters_per_model": sizes,
                "results": rows,
            },
            indent=2,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

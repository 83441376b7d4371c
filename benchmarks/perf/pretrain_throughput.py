"""Pretraining samples per second: `vla-forget pretrain`'s step with 1 and 2 torch threads, or on a GPU.

A synthetic RLDS dataset at the demonstrations' size (128 x 128 images, 25-D
states; no simulator) is written once; then, per thread count, the real
training loop (:func:`vla_forget.pretrain.pretrain`: sampling, image shifts,
teacher-forced forward, backward, AdamW) runs ``--steps`` steps of the default
small VLA and the figure is the mean of metrics.jsonl's ``samples_per_s`` after
the first log interval (warm-up excluded). The sampler alone (data and
tokenisation, no model) is timed too. ``--cameras front front+wrist`` runs both
the front-only model and the two-camera one (images 128 x 256, front and wrist
side by side; the wrist view has its own 64 px conv net) side by side.

    python benchmarks/perf/pretrain_throughput.py [--steps 30] [--batch-size 32] [--threads 1 2]
        [--cameras front front+wrist] [--device cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from vla_forget.jsonio import write_json


def _episodes(n: int, T: int, size: int, state_dim: int, width: int = 0):
    rng = np.random.default_rng(0)
    for i in range(n):
        yield dict(image=rng.integers(0, 256, (T, size, width or size, 3), dtype=np.uint8),
                   state=rng.normal(size=(T, state_dim)).astype(np.float32),
                   action=rng.uniform(-1, 1, (T, 7)).astype(np.float32), instruction=f"task {i % 3}", seed=i,
                   task="Synthetic-v1", source="synthetic")


def measure(data: str, steps: int, batch_size: int, threads: int, device: str = "cpu") -> dict:
    from vla_forget.pretrain import METRICS, PretrainConfig, pretrain

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "run")
        log_every = max(1, steps // 6)
        cfg = PretrainConfig(data=[data], out=out, steps=steps, batch_size=batch_size, threads=threads, val_steps=0, device=device,
                             eval_every=10**9, save_every=10**9, log_every=log_every, progress=False)
        t0 = time.perf_counter()
        pretrain(cfg)
        wall = time.perf_counter() - t0
        with open(os.path.join(out, METRICS)) as f:
            rates = [r["samples_per_s"] for r in map(json.loads, f) if "samples_per_s" in r]
    steady = rates[1:] or rates
    return {"device": device, "threads": threads, "batch_size": batch_size, "steps": steps,
            "samples_per_s": round(float(np.mean(steady)), 2), "steps_per_s": round(float(np.mean(steady)) / batch_size, 3),
            "wall_s_with_setup": round(wall, 1)}


def sampler_rate(data: str, batch_size: int, n: int = 20) -> float:
    from vla_forget.datasets import open_dataset
    from vla_forget.pretrain import SplitSampler, shift_images

    ds = open_dataset(data)
    rng = np.random.default_rng(0)
    s = SplitSampler([ds], [1.0], [np.arange(ds.num_episodes)], ds.tokenizer, rng)
    s.sample(batch_size)
    t0 = time.perf_counter()
    for _ in range(n):
        b = s.sample(batch_size)
        shift_images(b["image"], 4, rng)
    return round(n * batch_size / (time.perf_counter() - t0), 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--cameras", nargs="+", default=["front"], choices=["front", "front+wrist"],
                    help="camera set-ups to measure side by side (default: front)")
    ap.add_argument("--device", default="cpu", help="training device: cpu or cuda (the sampler always runs on the CPU)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        from vla_forget.datasets import write_dataset

        size = args.image_size
        import torch

        torch.set_num_threads(1)
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            ap.error("--device cuda: CUDA is not available on this machine")
        result = {"runs": [], "sampler_samples_per_s": {}, "image_size": size, "torch": torch.__version__,
                  "cpus": os.cpu_count(), "device": args.device,
                  "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
        for cams in args.cameras:
            width = 2 * size if cams == "front+wrist" else size
            data = os.path.join(d, cams.replace("+", "_"))
            write_dataset(data, _episodes(12, 40, size, 16, width), name="synthetic", image_shape=(size, width, 3),
                          state_dim=16)
            result["sampler_samples_per_s"][cams] = sampler_rate(data, args.batch_size)
            result["runs"] += [dict(measure(data, args.steps, args.batch_size, t, args.device), cameras=cams) for t in args.threads]
    for r in result["runs"]:
        print(f"{r['cameras']}, {r['device']}, threads {r['threads']}: {r['samples_per_s']} samples/s "
              f"({r['steps_per_s']} steps/s at batch {r['batch_size']})")
    for cams, rate in result["sampler_samples_per_s"].items():
        print(f"sampler alone ({cams}): {rate} samples/s")
    if args.json:
        write_json(args.json, result, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Teacher-forced divergence against a 7-step autoregressive loop.

The divergence needs, for each sampled prefix, the policy's 7 conditional
distributions. The harness gets them in ONE teacher-forced forward pass
(``action_logits``); the naive way is an autoregressive loop that calls the
model once per token (7 passes), as sampling does. Both give identical
logits; this measures states per second of each, side by side.

    python benchmarks/perf/divergence_speed.py [--states 256] [--threads 1] [--device cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from vla_forget.jsonio import write_json


def synthetic_obs(n: int, image_size: int, state_dim: int = 16, seed: int = 0):
    from vla_forget.policies.base import Observation

    g = torch.Generator().manual_seed(seed)
    colours = ["red", "green", "blue"]
    return Observation(
        image=torch.randint(0, 256, (n, image_size, image_size, 3), dtype=torch.uint8, generator=g),
        state=torch.randn(n, state_dim, generator=g),
        instruction=[f"put the {colours[i % 3]} cube on the {colours[(i + 1) % 3]} target" for i in range(n)],
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--states", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available on this machine")
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    from vla_forget.divergences import token_divergences
    from vla_forget.policies.small_vla import SmallVLA

    torch.set_num_threads(args.threads)
    base, pol = SmallVLA.random_init(seed=0).eval().to(dev), SmallVLA.random_init(seed=1).eval().to(dev)
    obs = synthetic_obs(args.states, args.image_size).to(dev)
    with torch.no_grad():
        tokens, base_logits = base.sample_tokens(obs, generator=torch.Generator(device=dev).manual_seed(0))

    def teacher_forced():
        out = []
        for i in range(0, args.states, args.batch):
            out.append(pol.action_logits(obs.index(slice(i, i + args.batch)), tokens[i:i + args.batch]))
        return torch.cat(out)

    def autoregressive():
        out = []
        for i in range(0, args.states, args.batch):
            sub, tok = obs.index(slice(i, i + args.batch)), tokens[i:i + args.batch]
            rows = [pol.action_logits(sub, tok)[:, j] for j in range(7)]  # one call per token, as a loop would
            out.append(torch.stack(rows, 1))
        return torch.cat(out)

    with torch.no_grad():
        teacher_forced(), autoregressive()  # warm up
        times = {"teacher_forced": [], "autoregressive": []}
        for _ in range(3):
            for name, fn in (("teacher_forced", teacher_forced), ("autoregressive", autoregressive)):
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)
        a, b = teacher_forced(), autoregressive()
    assert torch.allclose(a, b, atol=1e-4 if dev.type == "cpu" else 1e-3), "teacher-forced and autoregressive logits differ"
    kl = token_divergences(base_logits, a, tokens)["forward"].mean().item()
    res = {name: args.states / min(t) for name, t in times.items()}
    res.update(speedup=res["teacher_forced"] / res["autoregressive"], states=args.states, threads=args.threads,
               device=args.device, batch=args.batch,
               forward_kl=kl)
    print(f"teacher-forced (1 pass)   {res['teacher_forced']:8.1f} states/s")
    print(f"autoregressive (7 passes) {res['autoregressive']:8.1f} states/s   speed-up {res['speedup']:.2f}x "
          f"({args.threads} thread(s), {args.states} states, forward KL {kl:.3f})")
    if args.json:
        write_json(args.json, res, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The states of the divergences: the old rule against the new, and the states/samples trade-off.

Measured in one run (these machines are noisy):

1. *rules side by side*: the same bench (base, policy, battery, target, seeds)
   under the old state rule at its defaults (``stride-v0``: every 5th step from
   step 0 until each episode's quota, i.e. the first steps only; 32 states per
   task, 4 samples per state) and the new one at its defaults (``spread-v1``:
   spread over the whole episode; 128 states, 1 sample), each from an empty
   cache: wall time, the divergence step's time, the forward KL on the
   target's states, its standard error and the steps the states came from.
   Target: the new rule at no more than 1.2x the old rule's wall time.
2. *trade-off*: the standard error of the forward KL on the target's states
   against the cost of the divergence step, for several states per task and
   samples per state. The base's target episodes record ``--max-states``
   states once (spread-v1); a setting with n states takes every
   (max/n)-th of them, which are the states spread-v1 would record for n up to
   a shift of half a slice. The divergence time is that of one base and one
   policy on the bench's target and battery states (7 tasks), from an empty
   cache; a bench adds it per policy to the rollouts' time.

    python benchmarks/perf/kl_states.py [--policy runs/adapt/ppo/checkpoints/update-000004] [--json out.json]

Defaults: base small-vla-base-v6 against small-vla-base-v5 (two shipped bases),
tabletop-v1 at 4 episodes per task, 20 target episodes, 2 workers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from vla_forget.jsonio import write_json


def bench_once(rule: str, states: int, samples: int, args, root: str) -> dict:
    from vla_forget.bench import BenchConfig, run_bench
    from vla_forget.states import load_states

    out = os.path.join(root, f"bench-{rule}")
    os.environ["VLA_FORGET_CACHE"] = os.path.join(root, f"cache-{rule}")
    cfg = BenchConfig(policies=[args.policy], base=args.base, out=out, battery=args.battery, episodes=args.episodes,
                      target_episodes=args.target_episodes, workers=args.workers, videos_per_task=0,
                      kl_states_per_task=states, kl_samples_per_state=samples, kl_state_rule=rule,
                      progress=False)
    import vla_forget.bench as bench_mod

    timing = {}
    real = bench_mod.compute_divergences

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            timing["divergences_s"] = time.perf_counter() - t

    bench_mod.compute_divergences = timed
    t0 = time.perf_counter()
    try:
        res = run_bench(cfg, log=lambda *_: None)
    finally:
        bench_mod.compute_divergences = real
    wall = time.perf_counter() - t0
    k = res["kl_to_base"][args.policy.rstrip("/")]
    target = res["target"]["task"]
    _, meta = load_states(os.path.join(out, "states"), target, res["seeds"][target])
    return {"rule": rule, "states_per_task": states, "samples_per_state": samples, "wall_s": round(wall, 1), "divergences_s": round(timing["divergences_s"], 1),
            "forward_kl": k["forward"], "forward_se": k["forward_se"], "n_states": k["n_states"],
            "state_steps": sorted(int(s) for s in meta["step"]), "episode_length": int(meta["length"].max()),
            "forward_by_phase": [r["forward"] for r in k["forward_by_phase"]]}


def trade_off(args, root: str) -> list:
    """The forward KL's standard error against the divergence step's cost, per (states per task, samples)."""
    import numpy as np
    import torch

    from vla_forget import rollout
    from vla_forget.bench_divergences import sample, teacher_forced
    from vla_forget.divergences import reverse_on_policy_samples, summarize, token_divergences
    from vla_forget.policies import load_policy
    from vla_forget.spec import load_battery
    from vla_forget.states import SPREAD, load_states, phase_of

    torch.set_num_threads(1)
    battery = load_battery(args.battery)
    from vla_forget.spec import load_target

    target = load_target(battery.target)
    seeds = target.task.seeds[: args.target_episodes]
    sdir = os.path.join(root, "tradeoff-states")
    base_ref, pol = load_policy(args.base), load_policy(args.policy)
    jobs = [rollout.EpisodeJob(policy_key=args.base, policy_spec=args.base, policy_hash=base_ref.checkpoint_hash(),
                               task=target.task.task, seeds=[s], states_dir=sdir, state_rule=SPREAD,
                               state_n=args.max_states, state_episodes=len(seeds), state_index={s: i},
                               wrist_camera=bool(base_ref.wrist_camera or pol.wrist_camera))
            for i, s in enumerate(seeds)]
    rollout.run_parallel(rollout.run_job, jobs, args.workers, lambda _: None)
    obs_all, meta = load_states(sdir, target.task.task, seeds)
    # state k of the full set, in k order: episode k mod E at its (k div E)-th recorded step
    order = np.lexsort((np.arange(len(meta["seed"])), meta["step"]))
    rows = []
    base, pol = base_ref.eval(), pol.eval()
    for n in args.grid_states:
        m = args.max_states // n
        pick = order[m // 2::m][:n]
        obs = obs_all.index(torch.as_tensor(pick))
        phases = phase_of(meta["step"][pick], meta["length"][pick]).tolist()
        for S in args.grid_samples:
            t = time.perf_counter()
            b = sample(base, obs, S, 0, 64, "cpu")
            lg = teacher_forced(pol, obs, b["tokens"], S, 64, "cpu")
            own = sample(pol, obs, S, 0, 64, "cpu")
            rev = reverse_on_policy_samples(own["logits"], teacher_forced(base, obs, own["tokens"], S, 64, "cpu"))
            per_set = time.perf_counter() - t
            s = summarize(token_divergences(b["logits"], lg, b["tokens"]), S, reverse=rev, phases=phases)
            n_tasks = len(battery.tasks) + 1
            rows.append({"states_per_task": n, "samples_per_state": S, "forward_kl": round(s["forward"], 4),
                         "forward_se": round(s["forward_se"], 4), "reverse_kl": round(s["reverse"], 4),
                         "reverse_se": round(s["reverse_se"], 4),
                         "divergence_s_per_policy": round(per_set * n_tasks, 1)})
            print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="small-vla-base-v6")
    ap.add_argument("--policy", default="small-vla-base-v5")
    ap.add_argument("--battery", default="tabletop-v1")
    ap.add_argument("--episodes", type=int, default=4, help="episodes per battery task")
    ap.add_argument("--target-episodes", type=int, default=20)
    ap.add_argument("--states", type=int, default=128, help="states per task of the new rule's bench (default: the default)")
    ap.add_argument("--samples", type=int, default=1, help="samples per state of the new rule's bench")
    ap.add_argument("--old-states", type=int, default=32, help="states per task of the old rule's bench (its default)")
    ap.add_argument("--old-samples", type=int, default=4, help="samples per state of the old rule's bench")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-states", type=int, default=128, help="states recorded for the trade-off")
    ap.add_argument("--grid-states", type=int, nargs="*", default=[16, 32, 64, 128])
    ap.add_argument("--grid-samples", type=int, nargs="*", default=[1, 4, 8])
    ap.add_argument("--skip-rules", action="store_true", help="only the trade-off")
    ap.add_argument("--skip-trade-off", action="store_true", help="only the rules side by side")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    out = {"base": args.base, "policy": args.policy, "battery": args.battery, "episodes": args.episodes,
           "target_episodes": args.target_episodes}
    with tempfile.TemporaryDirectory(prefix="kl-states-") as root:
        if not args.skip_rules:
            runs = [bench_once("stride-v0", args.old_states, args.old_samples, args, root),
                    bench_once("spread-v1", args.states, args.samples, args, root)]
            out["rules"] = runs
            out["wall_ratio_new_over_old"] = round(runs[1]["wall_s"] / runs[0]["wall_s"], 3)
            for r in runs:
                print(f"{r['rule']}: {r['wall_s']} s (divergences {r['divergences_s']} s), forward KL "
                      f"{r['forward_kl']:.3f} ± {r['forward_se']:.3f} over {r['n_states']} states at steps "
                      f"{r['state_steps'][0]}..{r['state_steps'][-1]} of {r['episode_length']}", flush=True)
            print(f"wall time, new rule / old rule: {out['wall_ratio_new_over_old']} (target <= 1.2)", flush=True)
        if not args.skip_trade_off:
            out["trade_off"] = trade_off(args, root)
    if args.json:
        write_json(args.json, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

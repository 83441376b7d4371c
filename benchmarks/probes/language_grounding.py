"""Does a policy read a word of its instruction? Swap the word and compare the action distributions.

For demonstration steps of a dataset (a window of each episode: the approach
phase, where the named cube decides where to go, or the carry phase, where the
named target does), the policy's teacher-forced logits on the expert's action
tokens are computed twice: with the episode's own instruction and with one
word swapped for another of its group (``red`` -> ``green``). Reported, over
the x and y tokens (the directions that a wrong object would change):

* the cross-entropy of the expert's tokens with the true and with the swapped
  instruction: a policy that grounds the word predicts the expert much better
  with the true one;
* the mean absolute change of the expected x and y action (normalised units,
  -1..1) between the two: how far the swap moves the arm.

    python benchmarks/probes/language_grounding.py --policy small-vla-base-v5 \\
        --data data/v5/PlaceCubeOnTarget --words red green blue --pattern "the {} cube" --phase first
    python benchmarks/probes/language_grounding.py --policy small-vla-base-v5 \\
        --data data/v5/PlaceCubeOnTarget --words yellow purple white --pattern "the {} target" --phase second

``--phase first`` reads the first ``--steps`` steps of each episode; ``second``
reads the second half; ``carry`` reads the steps that carry the held object
sideways (gripper closed, the x or y action beyond 0.3): the steps where only
the destination's name says which way to go. The episodes are the dataset's last ``--episodes``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from vla_forget.jsonio import write_json


def probe(policy, ds, words, pattern: str, phase: str, steps: int, episodes: int) -> dict:
    from vla_forget.adapt.sft import transport_steps
    from vla_forget.policies.base import Observation

    centres = torch.linspace(-1 + 1 / 256, 1 - 1 / 256, 256)
    ce = {"true": [], "swapped": []}
    shift = []
    used = 0
    for e in range(max(0, ds.num_episodes - episodes), ds.num_episodes):
        ep = ds.episode(e)
        found = [w for w in words if pattern.format(w) in ep.instruction]
        if not found:
            continue
        word = found[0]
        other = [w for w in words if w != word][e % (len(words) - 1)]
        swapped = ep.instruction.replace(pattern.format(word), pattern.format(other))
        T = len(ep.action)
        action = np.asarray(ep.action)
        if phase == "carry":  # the steps that carry the held object sideways: SFT's transport steps
            sel = transport_steps(action)
            if not len(sel):
                continue
        else:
            lo, hi = (0, min(steps, T)) if phase == "first" else (T // 2, T)
            sel = np.arange(lo, hi)
        img = torch.from_numpy(np.asarray(ep.image)[sel])
        state = torch.from_numpy(np.asarray(ep.state)[sel]).float()
        labels = torch.from_numpy(policy.tokenizer.encode(action[sel])).long()
        expected = {}
        for key, text in (("true", ep.instruction), ("swapped", swapped)):
            obs = Observation(image=img, state=state, instruction=[text] * len(sel))
            with torch.no_grad():
                logp = torch.log_softmax(policy.action_logits(obs, labels).float(), -1)[:, :2]
            ce[key].append(-logp.gather(-1, labels[:, :2, None]).mean().item())
            expected[key] = (logp.exp() * centres).sum(-1)
        shift.append((expected["true"] - expected["swapped"]).abs().mean().item())
        used += 1
    if not used:
        raise SystemExit(f"no episode's instruction contains {pattern!r} with one of {words}")
    return {"episodes": used, "phase": phase, "pattern": pattern, "words": list(words),
            "xy_cross_entropy_true": round(float(np.mean(ce["true"])), 3),
            "xy_cross_entropy_swapped": round(float(np.mean(ce["swapped"])), 3),
            "xy_expected_action_shift": round(float(np.mean(shift)), 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True, help="policy id or checkpoint folder")
    ap.add_argument("--data", required=True, help="a dataset from `vla-forget demos`")
    ap.add_argument("--words", nargs="+", required=True, help="the interchangeable words (at least two)")
    ap.add_argument("--pattern", default="the {} cube", help="the phrase holding the word, {} for the word")
    ap.add_argument("--phase", choices=["first", "second", "carry"], default="first",
                    help="first --steps steps, the second half, or the carry steps (gripper closed, x or y beyond 0.3)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    if len(args.words) < 2:
        ap.error("--words needs at least two words")
    from vla_forget.datasets import open_dataset
    from vla_forget.policies import load_policy

    torch.set_num_threads(1)
    res = probe(load_policy(args.policy).eval(), open_dataset(args.data), args.words, args.pattern, args.phase,
                args.steps, args.episodes)
    res["policy"] = args.policy
    print(f"{args.policy}: '{args.pattern}' ({args.phase} phase, {res['episodes']} episodes): x/y cross-entropy "
          f"{res['xy_cross_entropy_true']} with the true word, {res['xy_cross_entropy_swapped']} swapped; "
          f"expected x/y action moves {res['xy_expected_action_shift']}")
    if args.json:
        write_json(args.json, res, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

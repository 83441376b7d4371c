"""Divergence throughput of the OpenVLA adapter: batched teacher forcing against OpenVLA's own decoding path.

The chain-rule divergence needs, for every sampled 7-token prefix, the policy's
7 conditional distributions. The adapter gets them for a whole batch of states
in ONE forward pass (prompt + 6 tokens, right-padded, the LM head on the 7 read
positions only).

The baseline is what OpenVLA's own code does: ``predict_action`` calls
``generate``, which runs at batch size 1 only (``prepare_inputs_for_generation``
refuses more) and uses the key/value cache: one pass over the prefix (``<s>``,
the 256 projected patches, the prompt), the full-vocabulary LM head on every
prefix position (as ``LlamaForCausalLM`` under transformers 4.40), then 6
one-token steps on the cache. Here it is the same loop through the stand-in's
Llama, with the sampled tokens fed in (generate's own bookkeeping, logits
processors and stopping checks are left out, so the baseline is, if anything,
flattered). For reference, the per-state loop of 7 full forwards on the growing
sequence (no cache) is timed too. All three give the same logits (checked).

It measures states per second of each on the tiny OpenVLA-format stand-in
(built offline, CPU), and prints the ceilings estimated for OpenVLA-7B on a
GPU: teacher forcing from its FLOPs per state and the GPU's peak; generate at
batch 1 from the prefix pass's FLOPs plus 6 one-token steps that each read the
LLM's 13.5 GB of bfloat16 weights from memory.

    python benchmarks/perf/openvla_divergence.py [--states 64] [--batch 32] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import time

import torch

from vla_forget.jsonio import write_json

# --- OpenVLA-7B, for the ceiling estimate -------------------------------------------------------------
#: Llama-2-7B (the LLM), DINOv2 ViT-L/14 and SigLIP So400m/14 at 224 px (the fused vision backbone)
LLM_PARAMS = 6.74e9
LLM_LAYERS, LLM_WIDTH, VOCAB = 32, 4096, 32064
VISION_PARAMS = {"dinov2_vit_l14": 0.304e9, "siglip_so400m14": 0.400e9}
PATCHES = 256  # (224 / 14) ** 2 per backbone, fused channel-wise into 256 tokens
PROJECTOR_PARAMS = 2176 * 8704 + 8704 * 4096 + 4096 * 4096  # fused-gelu MLP: 1024 + 1152 -> 4 x -> 4096 -> 4096
PROMPT_TOKENS = 24  # <s> + "In: What action should the robot take to pick coke can?\nOut:" + "▁" (Llama tokens)
#: dense bfloat16 peak of one GPU (NVIDIA datasheets, without sparsity)
PEAK_BF16 = {"H100 SXM": 989e12, "H200": 989e12, "A100": 312e12}
#: memory bandwidth of one GPU (NVIDIA datasheets: H100 SXM 3.35 TB/s, H200 4.8 TB/s, A100 80 GB SXM 2.04 TB/s)
BANDWIDTH = {"H100 SXM": 3.35e12, "H200": 4.8e12, "A100": 2.04e12}


def openvla7b_flops_per_state() -> dict:
    """Forward FLOPs of one teacher-forced state (2 x parameters x tokens, plus attention and the 7-row head)."""
    T = 1 + PATCHES + (PROMPT_TOKENS - 1) + 6  # <s>, patches, the rest of the prompt, 6 teacher-forced tokens
    llm = 2 * LLM_PARAMS * T
    attention = LLM_LAYERS * 4 * T * T * LLM_WIDTH  # QK^T and AV, causal upper bound
    vision = sum(2 * p * (PATCHES + 1) for p in VISION_PARAMS.values())
    projector = 2 * PROJECTOR_PARAMS * PATCHES
    head = 2 * LLM_WIDTH * VOCAB * 7
    total = llm + attention + vision + projector + head
    return {"sequence_tokens": T, "llm": llm, "attention": attention, "vision": vision, "projector": projector,
            "lm_head_7_rows": head, "total": total}


def openvla7b_generate_per_state() -> dict:
    """OpenVLA's generate at batch 1: the prefix pass (the LM head on every prefix position) in FLOPs, and the
    6 one-token steps, each bound by reading the LLM's bfloat16 weights (and the small cache) from memory."""
    T0 = 1 + PATCHES + (PROMPT_TOKENS - 1)
    prefix = (2 * LLM_PARAMS * T0 + LLM_LAYERS * 4 * T0 * T0 * LLM_WIDTH
              + sum(2 * p * (PATCHES + 1) for p in VISION_PARAMS.values()) + 2 * PROJECTOR_PARAMS * PATCHES
              + 2 * LLM_WIDTH * VOCAB * T0)
    step_bytes = 2 * LLM_PARAMS + 2 * LLM_LAYERS * 2 * (T0 + 6) * LLM_WIDTH  # weights + the keys/values read
    return {"prefix_tokens": T0, "prefix_flops": prefix, "steps": 6, "bytes_per_step": step_bytes}


def synthetic_obs(n: int, image_size: int, seed: int = 0):
    from vla_forget.policies.base import Observation

    g = torch.Generator().manual_seed(seed)
    colours = ["red", "green", "blue"]
    return Observation(
        image=torch.randint(0, 256, (n, image_size, image_size, 3), dtype=torch.uint8, generator=g),
        state=torch.zeros(n, 16),
        instruction=[f"put the {colours[i % 3]} cube on the {colours[(i + 1) % 3]} target" for i in range(n)],
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--states", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from vla_forget.divergences import token_divergences
    from vla_forget.policies import load_policy
    from vla_forget.policies.openvla_tiny import build_tiny_openvla

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        base = load_policy(f"openvla:{build_tiny_openvla(d + '/base', seed=0)}").eval()
        pol = load_policy(f"openvla:{build_tiny_openvla(d + '/policy', seed=1)}").eval()
        obs = synthetic_obs(args.states, args.image_size)
        with torch.no_grad():
            tokens, base_logits = base.sample_tokens(obs, generator=torch.Generator().manual_seed(0))
        model = pol._core()

        def batched_teacher_forced():
            out = []
            for i in range(0, args.states, args.batch):
                out.append(pol.action_logits(obs.index(slice(i, i + args.batch)), tokens[i:i + args.batch]))
            return torch.cat(out)

        lm = model.language_model  # the Llama causal LM: full-vocabulary head, as generate calls it
        cache_arg = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"

        def generate_kv_cache_batch1():
            rows = []
            for i in range(args.states):  # batch 1: OpenVLA's generate takes one state at a time
                sub = obs.index([i])
                ids = torch.tensor([pol.prompt_ids(sub.instruction[0])])
                embeds, _ = pol._embed(ids, pol.pixel_values(sub))  # <s>, patches, the rest of the prompt
                out = lm(inputs_embeds=embeds, use_cache=True, return_dict=True)  # prefix: head on every position
                steps = [pol._action_slice(out.logits[:, -1])]
                for j in range(6):  # one-token steps on the key/value cache, the sampled token fed in
                    past = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
                    out = lm(input_ids=pol._token_ids(tokens[i:i + 1, j:j + 1]), use_cache=True, return_dict=True,
                             **{cache_arg: past})
                    steps.append(pol._action_slice(out.logits[:, -1]))
                rows.append(torch.cat(steps).unsqueeze(0))
            return torch.cat(rows)

        def per_state_full_forwards():
            rows = []
            for i in range(args.states):
                sub = obs.index([i])
                ids = torch.tensor([pol.prompt_ids(sub.instruction[0])])
                pv = pol.pixel_values(sub)
                steps = []
                for j in range(7):  # 7 full forwards on the growing sequence, full-vocabulary logits, last row
                    logits = model(input_ids=ids, pixel_values=pv).logits[:, -1]
                    steps.append(pol._action_slice(logits))
                    ids = torch.cat([ids, pol._token_ids(tokens[i:i + 1, j:j + 1])], dim=1)
                rows.append(torch.cat(steps).unsqueeze(0))
            return torch.cat(rows)

        runs = {"batched_teacher_forced": batched_teacher_forced, "generate_kv_cache_batch1": generate_kv_cache_batch1,
                "per_state_full_forwards": per_state_full_forwards}
        with torch.no_grad():
            for fn in runs.values():  # warm up
                fn()
            times = {name: [] for name in runs}
            for _ in range(args.repeats):  # interleaved, so that a change in the machine's load hits all three
                for name, fn in runs.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
            a = batched_teacher_forced()
            diffs = {name: (fn() - a).abs().max().item() for name, fn in runs.items() if name != "batched_teacher_forced"}
        for name, d in diffs.items():
            assert d < 1e-4, f"teacher-forced logits and {name} differ by {d}"
        kl = token_divergences(base_logits, a, tokens)["forward"].mean().item()
        n_params = sum(p.numel() for p in model.parameters())

    res = {name: args.states / min(t) for name, t in times.items()}
    res.update(speedup=res["batched_teacher_forced"] / res["generate_kv_cache_batch1"],
               speedup_vs_full_forwards=res["batched_teacher_forced"] / res["per_state_full_forwards"],
               baseline="generate_kv_cache_batch1", states=args.states, batch=args.batch, threads=args.threads,
               forward_kl=kl, stand_in_parameters=n_params, max_logit_difference=diffs)
    print(f"tiny OpenVLA-format stand-in ({n_params / 1e3:.0f} k parameters), CPU, {args.threads} thread(s), "
          f"{args.states} states, forward KL {kl:.3f}, best of {args.repeats}")
    print(f"  {f'batched teacher-forced (1 pass per batch of {args.batch})':<58} "
          f"{res['batched_teacher_forced']:8.1f} states/s")
    print(f"  OpenVLA's generate path: batch 1, prefix + 6 cached steps  {res['generate_kv_cache_batch1']:8.1f} states/s"
          f"   speed-up {res['speedup']:.1f}x  <- the baseline")
    print(f"  per state, 7 full forwards without a cache                 {res['per_state_full_forwards']:8.1f} states/s"
          f"   speed-up {res['speedup_vs_full_forwards']:.1f}x")
    print(f"  => one teacher-forced pass per batch is {res['speedup']:.1f}x faster than OpenVLA's own decoding path "
          f"(generate with the key/value cache, batch 1) on this CPU")

    flops = openvla7b_flops_per_state()
    res["openvla7b_flops_per_state"] = flops
    res["openvla7b_ceiling_states_per_s"] = {}
    print(f"OpenVLA-7B, estimated: {flops['total'] / 1e12:.2f} TFLOPs per teacher-forced state "
          f"({flops['sequence_tokens']} positions: LLM {flops['llm'] / 1e12:.2f}, attention {flops['attention'] / 1e12:.2f}, "
          f"vision {flops['vision'] / 1e12:.2f}, projector {flops['projector'] / 1e12:.3f}, 7-row LM head "
          f"{flops['lm_head_7_rows'] / 1e12:.4f})")
    gen = openvla7b_generate_per_state()
    res["openvla7b_generate_per_state"] = gen
    for gpu, peak in PEAK_BF16.items():
        ceiling = peak / flops["total"]
        gen_s = gen["prefix_flops"] / peak + gen["steps"] * gen["bytes_per_step"] / BANDWIDTH[gpu]
        res["openvla7b_ceiling_states_per_s"][gpu] = {"peak_bf16_flops": peak, "bandwidth_bytes_per_s": BANDWIDTH[gpu],
                                                      "teacher_forced": ceiling, "generate_kv_cache_batch1": 1 / gen_s,
                                                      "per_state_full_forwards": ceiling / 7}
        print(f"  {gpu:<9} bf16 peak {peak / 1e12:5.0f} TFLOP/s, {BANDWIDTH[gpu] / 1e12:.2f} TB/s: ceiling "
              f"{ceiling:6.0f} states/s teacher-forced (40-60% of peak is typical: {0.4 * ceiling:.0f}-"
              f"{0.6 * ceiling:.0f}), {1 / gen_s:5.0f} with generate at batch 1 ({1e3 * gen_s:.1f} ms: prefix "
              f"{1e3 * gen['prefix_flops'] / peak:.1f} ms at peak + 6 weight reads {1e3 * 6 * gen['bytes_per_step'] / BANDWIDTH[gpu]:.1f} ms), "
              f"{ceiling / 7:5.0f} with 7 full passes")
    if args.json:
        write_json(args.json, res, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

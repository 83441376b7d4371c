"""The `vla-forget` command line: thin subcommands over the library."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from vla_forget.policies import SCRIPTED_EXPERTS

EPILOG_BENCH = """\
examples:
  vla-forget bench --preset smoke --out runs/smoke
  vla-forget bench --preset default --out runs/default --resume
  vla-forget bench --policy expert-v1 --policy runs/adapt/ppo/checkpoints/update-000010 \\
      --base small-vla-random-v1 --battery tabletop-v2 --episodes 50 --out runs/mine
  vla-forget bench --policy ckpt/ --base base/ --battery my_battery.yaml --target none --out runs/x
  vla-forget bench --policy runs/ppo/checkpoints/update-000100 \\
      --base "openvla:openvla/openvla-7b#unnorm_key=fractal20220817_data" --trust-remote-code \\
      --battery simpler-google-v2 --device cuda --out runs/openvla    # 224 px, greedy: the battery's protocol
  vla-forget bench --policy runs/ppo/checkpoints/update-000100 --base openvla:DIR#unnorm_key=fractal20220817_data \\
      --trust-remote-code --battery simpler-google-v2 --prompt bare --temperature 0.6 --out runs/openvla-t06
  vla-forget bench --checkpoints runs/sweeps/forgetting --episodes 20 --out runs/bench-forgetting
  vla-forget bench --checkpoints runs/adapt/ppo --checkpoint-stride 2 --out runs/bench-ppo --resume
  vla-forget bench --out runs/bench-ppo --resume --checkpoints runs/adapt/ppo-seed1
  vla-forget bench --out runs/bench-ppo --resume --kl-states both   # add on-policy KL, no new rollouts

Results land in OUT/results.json (machine-readable), OUT/report.md (tables),
OUT/episodes.jsonl (one line per episode) and OUT/videos/. Ctrl-C keeps every
finished episode; rerun with --resume to continue: the options not given come
from OUT/config.json, so `vla-forget bench --out OUT --resume` continues a run
with its own settings (--workers is per machine: give it again if not the
default).

--checkpoints takes an adaptation run folder (vla-forget adapt) or a sweep
folder (vla-forget sweep) and evaluates every finished checkpoint in it as the
policy RUN@update-NNNNNN; --base and --target default to the runs' own. Results
gain a checkpoints table, the forgetting-law fit and OUT/pareto.png,
OUT/forgetting_vs_kl.png (with the plots extra). To add runs (another seed)
to a finished bench, run `vla-forget bench --out OUT --resume --checkpoints
NEW_RUN`: the folder joins the saved ones and only its checkpoints (and any
new checkpoint of the others) are rolled out. `--resume --policy P` adds a
policy the same way: only its episodes are rolled out.

Protocol: the cameras render at the base policy's own input size (OpenVLA:
its processor's 224 px; the small VLA: 128) unless --image-size says
otherwise, with a warning for any policy trained at another size. Policies act
as the battery and the target say (`decoding:` in their specs; SimplerEnv's:
greedy; tabletop: sampling at temperature 1); --greedy or --temperature T
override both. --prompt openvla|bare chooses OpenVLA's prompt (its training
template, the default, or the bare instruction as SimplerEnv's published
OpenVLA evaluation); results.json's "protocol" records all three.

Divergences (docs/metrics.md): forward KL, reverse KL and TV to the base in
nats, on --kl-states-per-task states spread over the whole of each target (and
battery) episode, with the forward KL by quarter of the episode in report.md.
A resume may change the divergence settings (--kl-states-per-task,
--kl-samples-per-state, --kl-states) or meet a bench recorded under the older
state rule (first steps only): it says so, re-runs the finished episodes that
recorded states for their states only, and recomputes every divergence; no
episode record changes.
"""


def _bench_parser(sub) -> None:
    from vla_forget.config import KL_STATE_SETS, PROMPT_STYLES, BenchConfig, add_config_arguments

    p = sub.add_parser("bench", help="roll out policies on a battery and measure success, forgetting and divergence",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_BENCH)
    p.add_argument("--preset", help="a named preset filling the options not given (see `vla-forget ls presets`): smoke, default; "
                                    "without one, episode counts come from the battery and target specs")
    # an option not given parses to None: resolve_config fills it from a resumed run, a preset or the runs
    add_config_arguments(p, BenchConfig, required=("out",), skip=BenchConfig.INTERNAL, unset_is_none=True,
                         flags={"policies": "--policy"}, choices={"kl_states": KL_STATE_SETS, "prompt": PROMPT_STYLES},
                         metavars={"policies": "P", "checkpoints": "DIR", "checkpoint_stride": "K", "temperature": "T"},
                         shown_defaults={"workers": "CPU cores, at most 8; 0 with --num-envs > 1", "greedy": ""})
    p.add_argument("--resume", action="store_true", help="continue the run in OUT, redoing nothing that finished")
    _trust_remote_code_arg(p)


def _trust_remote_code_arg(p) -> None:
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow checkpoints that run code shipped with them (OpenVLA-7B's modeling_prismatic.py); read it first")


def apply_trust_remote_code(args) -> None:
    """--trust-remote-code: every load_policy in this process and its workers may run checkpoint code."""
    if getattr(args, "trust_remote_code", False):
        os.environ["VLA_FORGET_TRUST_REMOTE_CODE"] = "1"


def cmd_bench(args) -> int:
    from vla_forget.bench import BENCH_OPTIONS, BenchError, resolve_config, run_bench

    apply_trust_remote_code(args)
    options = {name: getattr(args, name, None) for name in BENCH_OPTIONS}
    try:
        cfg = resolve_config(args.out, resume=args.resume, preset=args.preset, progress=args.progress is not False,
                             **options)
    except BenchError as e:
        print(f"vla-forget bench: {e}", file=sys.stderr)
        return 2
    results = run_bench(cfg, resume=args.resume, analyze_only=getattr(args, "analyze_only", False))
    from vla_forget.report import summary_lines

    if results and results.get("policies"):
        print("\n".join(summary_lines(results, args.out)))
    return 0


EPILOG_ANALYZE = """\
examples:
  vla-forget analyze runs/default
  vla-forget analyze runs/bench-forgetting --kl-samples-per-state 4

Rebuilds results.json, report.md and the plots of a finished bench from its
episodes.jsonl and recorded states, with the settings in its config.json:
nothing is rolled out. Divergences come from the cache where they were
computed before. --kl-samples-per-state and --seed change the divergences
alone; --kl-states-per-task and --kl-states need states the bench may not
have recorded. A bench that still has episodes to run, or states to record,
is refused with the command that continues it.
"""


def _analyze_parser(sub) -> None:
    p = sub.add_parser("analyze", help="rebuild a finished bench's results, report and plots without rolling out",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_ANALYZE)
    p.add_argument("out", metavar="OUT", help="the bench's run folder")
    p.add_argument("--kl-states-per-task", type=int, help="as in bench (default: the run's)")
    p.add_argument("--kl-samples-per-state", type=int, help="as in bench (default: the run's)")
    p.add_argument("--kl-states", choices=["base", "policy", "both"], help="as in bench (default: the run's)")
    p.add_argument("--seed", type=int, help="seed of the divergence prefix sampling (default: the run's)")
    p.add_argument("--device", help="policy device for the divergences (default: the run's)")
    p.add_argument("--trust-remote-code", action="store_true", help="as in bench")


def cmd_analyze(args) -> int:
    if not os.path.isfile(os.path.join(args.out, "config.json")):
        print(f"vla-forget analyze: {args.out} holds no bench (no config.json); run `vla-forget bench --out "
              f"{args.out}` first", file=sys.stderr)
        return 2
    bench_args = build_parser().parse_args(["bench", "--out", args.out, "--resume", "--no-progress", "--workers", "0"])
    for name in ("kl_states_per_task", "kl_samples_per_state", "kl_states", "seed", "device"):
        if getattr(args, name) is not None:
            setattr(bench_args, name, getattr(args, name))
    bench_args.trust_remote_code = args.trust_remote_code
    bench_args.analyze_only = True
    return cmd_bench(bench_args)


EPILOG_CHECK = """\
examples:
  vla-forget check runs/bench-ppo                                  # every policy against the bench's base
  vla-forget check runs/bench-ppo --max-forgetting 5 --max-task-drop 10 --junit reports/vla-forget.xml
  vla-forget check runs/bench-new --baseline releases/v3/results.json --baseline-policy my-vla-v3 --min-gain 0

Exit status: 0 when no policy has a violation, 1 when one has, 2 on bad input.
A violation is a difference significant at the report's 95 % level and beyond
its threshold (points): forgetting or a battery task's drop whose whole
interval lies above --max-forgetting / --max-task-drop (default 0: any
significant loss), a target gain whose whole interval lies below --min-gain.
One line per policy and per violation; the findings go to OUT/check.json and,
with --junit, to a JUnit XML file. Against a --baseline from another bench,
the battery (id, version, content), target task, decoding and image size must
match. See docs/ci.md for a CI recipe.
"""


def _check_parser(sub) -> None:
    from vla_forget.config import CheckConfig, add_config_arguments

    p = sub.add_parser("check", help="gate a bench's results for CI: exit 1 when a policy forgets or loses significantly",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_CHECK)
    p.add_argument("results", metavar="OUT", help="the bench to check: its folder or its results.json")
    add_config_arguments(p, CheckConfig, skip=("results",), flags={"policies": "--policy"},
                         metavars={"policies": "P", "max_forgetting": "PP", "max_task_drop": "PP", "min_gain": "PP",
                                   "junit": "FILE", "summary": "FILE"})


def cmd_check(args) -> int:
    from vla_forget.check import CheckError, junit_xml, run_check
    from vla_forget.config import CheckConfig, config_from_args
    from vla_forget.jsonio import write_json

    cfg = config_from_args(CheckConfig, args)
    try:
        report = run_check(cfg.results, baseline=cfg.baseline, baseline_policy=cfg.baseline_policy,
                           policies=cfg.policies, max_forgetting=cfg.max_forgetting, max_task_drop=cfg.max_task_drop,
                           min_gain=cfg.min_gain)
    except CheckError as e:
        print(f"vla-forget check: {e}", file=sys.stderr)
        return 2
    for policy in dict.fromkeys(f.policy for f in report.findings):
        mine = [f for f in report.findings if f.policy == policy]
        bad = [f for f in mine if f.violation]
        head = next(f for f in mine if f.check == "forgetting")
        print(f"{'FAIL' if bad else 'ok  '} {policy}: {head.message}")
        for f in bad:
            if f is not head:
                print(f"FAIL {policy}: {f.message}")
    n_bad = len({f.policy for f in report.violations})
    n = len({f.policy for f in report.findings})
    print(f"vla-forget check: {len(report.violations)} violation(s) in {n_bad} of {n} policies against "
          f"{report.reference} (thresholds: forgetting {cfg.max_forgetting:g} pp, task drop {cfg.max_task_drop:g} pp"
          f"{'' if cfg.min_gain is None else f', gain {cfg.min_gain:g} pp'})")
    summary = cfg.summary or (os.path.join(cfg.results, "check.json") if os.path.isdir(cfg.results) else None)
    if summary:
        write_json(summary, report.to_dict())
        print(f"summary: {summary}")
    if cfg.junit:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.junit)), exist_ok=True)
        with open(cfg.junit, "w") as f:
            f.write(junit_xml(report))
        print(f"junit: {cfg.junit}")
    return 0 if report.passed else 1


EPILOG_DEMOS = """\
examples:
  vla-forget demos --task PickCube-v2 --episodes 200 --out data/pick_cube --workers 2
  vla-forget demos --task PullCube-v2 --episodes 2 --out data/pull_small --image-size 64
  vla-forget demos --task PickCube-v2 --episodes 200 --out data/pick_cube --resume
  vla-forget demos --task PickCube-v2 --episodes 150 --out data/pick_cube_wrist --wrist-camera --workers 2
  vla-forget demos --task PlaceCubeOnTarget-v2 --episodes 540 --all-instructions --out data/target_pairs --wrist-camera --workers 2

Seeds SEED_START, SEED_START+1, ... are tried until EPISODES of them succeed;
failed episodes are dropped and the kept fraction is reported. Training seeds
stay below 100000 (evaluation seeds start there). The dataset is RLDS (Open
X-Embodiment step layout) in array_record files that tensorflow-datasets reads
without TensorFlow, with OpenVLA's dataset_statistics.json; open it with
vla_forget.datasets.open_dataset(OUT). Ctrl-C keeps every finished episode;
rerun with --resume to continue.
"""


def _demos_parser(sub) -> None:
    from vla_forget.config import DemoConfig, add_config_arguments

    p = sub.add_parser("demos", help="collect expert demonstrations on a task as an RLDS dataset",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_DEMOS)
    add_config_arguments(p, DemoConfig, required=("task", "episodes", "out"), choices={"expert": SCRIPTED_EXPERTS})
    p.add_argument("--resume", action="store_true", help="continue the collection in OUT, redoing no finished episode")


def cmd_demos(args) -> int:
    from vla_forget.config import DemoConfig, config_from_args
    from vla_forget.demos import collect_demos

    cfg = config_from_args(DemoConfig, args)
    s = collect_demos(cfg, resume=args.resume)
    rate = f", {s['demos_per_min']} demos/min" if s["demos_per_min"] else ""
    print(f"{s['task']}: {s['episodes']} demonstrations by {s['source']}, kept {s['episodes']}/{s['attempts']} "
          f"attempts ({100 * s['kept_fraction']:.0f}%), mean {s['mean_steps']} steps{rate}")
    if s["mean_steps"] and s["mean_steps"] > s["horizon"]:
        print(f"note: the demonstrations ({s['mean_steps']} steps on average) are longer than the task's "
              f"evaluation length ({s['horizon']} steps)", file=sys.stderr)
    print(f"dataset: {args.out} (unnorm_key {s['dataset']})")
    return 0 if s["episodes"] == s["wanted"] else 1


EPILOG_PRETRAIN = """\
examples:
  vla-forget pretrain --data data/pick_cube --data data/push_cube:0.5 --out runs/pretrain --steps 2000
  vla-forget pretrain --data data/pick_cube --out runs/pretrain --steps 4000 --resume
  vla-forget pretrain --data data/pick_cube --data data/stack_cube --out runs/dagger \\
      --steps 2000 --dagger-rounds 2 --dagger-steps 1000 --dagger-episodes 10
  vla-forget pretrain --data data/pick_cube --out runs/gpu --device cuda --batch-size 256 --threads 8
  vla-forget pretrain --init small-vla-base-v5 --keep-statistics --data data/stack_color_cube \
      --data data/place_cube --out runs/carry --steps 4000 --transport-fraction 0.3

Behaviour cloning of the small VLA: cross-entropy on the 7 action tokens
(teacher-forced), actions tokenised with statistics pooled over all --data.
OUT/metrics.jsonl logs training and validation (held-out episodes) loss and
token accuracy, OUT/events.jsonl the start, DAgger rounds and the end; OUT/checkpoints/update-NNNNNN/ are policy folders for `vla-forget
bench --policy` (`bench --checkpoints OUT --base ID` benches them all). Ctrl-C keeps every checkpoint; rerun with --resume to continue
exactly. A NaN loss stops the run and keeps the last good checkpoint.
"""


def _pretrain_parser(sub) -> None:
    from vla_forget.bc import TRANSPORT_RULES
    from vla_forget.config import add_config_arguments
    from vla_forget.config import PretrainConfig

    p = sub.add_parser("pretrain", help="behaviour-clone the small VLA on demonstration datasets (multi-task)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_PRETRAIN)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT")
    add_config_arguments(p, PretrainConfig, required=("data", "out"),
                         choices={"dagger_expert": SCRIPTED_EXPERTS, "transport_rule": TRANSPORT_RULES},
                         flags={"dagger_tasks": "--dagger-task"},
                         metavars={"data": "PATH[:WEIGHT]", "dagger_tasks": "TASK[:N]", "transport_fraction": "F"})


def cmd_pretrain(args) -> int:
    from vla_forget.config import config_from_args
    from vla_forget.pretrain import Diverged, PretrainConfig, pretrain

    cfg = config_from_args(PretrainConfig, args)
    try:
        s = pretrain(cfg, resume=args.resume)
    except Diverged as e:
        print(f"vla-forget pretrain: diverged: {e}; last good checkpoint: {e.last_checkpoint}", file=sys.stderr)
        return 1
    val = f", validation loss {s['val_loss']}, token accuracy {s['val_token_acc']}" if "val_loss" in s else ""
    print(f"pretrained {s['steps']} steps in {s['wall_s']} s{val}")
    print(f"checkpoint: {s['checkpoint']}")
    return 0


EPILOG_SWEEP = """\
examples:
  vla-forget sweep forgetting-v2 --out runs/sweeps/forgetting --dry-run
  vla-forget sweep forgetting-v2 --out runs/sweeps/forgetting --parallel 2
  vla-forget sweep forgetting-v2 --out runs/sweeps/forgetting --resume
  vla-forget bench --checkpoints runs/sweeps/forgetting --out runs/bench-forgetting

Runs the grid method x lr x batch size x seed of a sweep spec (benchmarks/sweeps/,
`vla-forget ls sweeps`), each as a `vla-forget adapt ... --out OUT/runs/NAME`
subprocess logging to OUT/logs/NAME.log. OUT/sweep.json lists the runs, their
commands and status. --resume skips finished runs and continues the others
(adapt --resume). Every checkpoint is kept for `vla-forget bench --checkpoints OUT`.
"""


def _sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of adaptation runs (method x lr x batch x seed) from a sweep spec",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_SWEEP)
    p.add_argument("spec", metavar="SPEC", help="sweep id (`vla-forget ls sweeps`) or YAML path")
    p.add_argument("--out", required=True, help="sweep folder")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time, each its own process (default 1)")
    p.add_argument("--resume", action="store_true", help="skip finished runs, continue the others")
    p.add_argument("--dry-run", action="store_true", help="print the commands and run nothing")


def cmd_sweep(args) -> int:
    from vla_forget.sweep import load_sweep, run_sweep

    spec = load_sweep(args.spec)
    state = run_sweep(spec, args.out, parallel=args.parallel, resume=args.resume, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    failed = [e["name"] for e in state["runs"] if e["status"] != "done"]
    print(f"sweep {spec.full_id}: {', '.join(f'{n} {s}' for s, n in state['summary'].items())} -> {os.path.join(args.out, 'sweep.json')}")
    if failed:
        print(f"not done: {', '.join(failed)} (logs in {os.path.join(args.out, 'logs')}; rerun with --resume)", file=sys.stderr)
        return 1
    print(f"next: vla-forget bench --checkpoints {args.out} --out OUT")
    return 0


EPILOG_ADAPT = """\
examples:
  vla-forget adapt --method ppo --base small-vla-base-v5 --task place-cube-on-target-v2 --out runs/adapt/ppo
  vla-forget adapt --method ppo --base small-vla-base-v5 --out runs/adapt/ppo --resume
  vla-forget adapt --method grpo --base small-vla-base-v5 --group-size 4 --episodes-per-update 16 --out runs/adapt/grpo
  vla-forget adapt --method rloo --base small-vla-base-v6 --group-size 8 --episodes-per-update 32 --out runs/adapt/rloo
  vla-forget adapt --method reinforce --base small-vla-base-v5 --kl-coef 0.1 --out runs/adapt/reinforce-kl
  vla-forget adapt --method sft --base small-vla-base-v5 --data data/place-cube-on-target-v2 --out runs/adapt/sft
  vla-forget adapt --method sft --base small-vla-base-v5 --data data/pairs --transport-fraction 0.4 --lr 3e-4 --out runs/adapt/sft-tr
  vla-forget adapt --method sft --base small-vla-base-v6 --data data/pairs --lr-schedule cosine --min-lr-ratio 0.1 --out runs/adapt/sft-cos
  vla-forget adapt --method iterative-sft --base small-vla-base-v5 --out runs/adapt/iterative-sft
  vla-forget adapt --method rl-trace-sft --base small-vla-base-v5 --traces runs/adapt/ppo --out runs/adapt/trace-sft
  vla-forget adapt --method ppo --base ckpt/ --num-envs 64 --device cuda --episodes-per-update 64 --out runs/gpu

Methods: ppo, reinforce, grpo, rloo (on-policy RL in the simulator), sft (demonstrations
from `vla-forget demos`), iterative-sft (SFT on the policy's own successes, re-rolled
every round), rl-trace-sft (SFT on the successful rollouts an RL run kept).
The target (default: the battery's, place-cube-on-target-v2) must not be a battery
task. OUT/checkpoints/update-NNNNNN/ are policy folders (update-000000 is the base)
for `vla-forget bench --policy` or `bench --checkpoints OUT`; OUT/log.jsonl has one
line per update. Ctrl-C keeps every checkpoint; --resume continues exactly. A NaN
loss stops the run and keeps the last good checkpoint. See docs/adaptation.md.
"""


def _adapt_parser(sub) -> None:
    from vla_forget.adapt.common import add_config_arguments

    p = sub.add_parser("adapt", help="adapt a base policy to a target task by RL (ppo, reinforce, grpo, rloo) or SFT",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_ADAPT)
    add_config_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from its newest checkpoint")
    _trust_remote_code_arg(p)


def cmd_adapt(args) -> int:
    from vla_forget.adapt import load_method
    from vla_forget.adapt.common import AdaptError, Diverged, config_from_args, saved_run_config

    apply_trust_remote_code(args)
    try:
        cfg = config_from_args(args, saved_run_config(args.out) if args.resume else None)
        s = load_method(cfg.method)(cfg, resume=args.resume)
    except Diverged as e:
        print(f"vla-forget adapt: {e}", file=sys.stderr)
        return 1
    except AdaptError as e:
        print(f"vla-forget adapt: error: {e}", file=sys.stderr)
        return 2
    last = s.get("last") or {}
    rate = f", rollout success {last['success_rate']:.2f}" if "success_rate" in last else ""
    loss = f", loss {last['loss']:.4f}" if "loss" in last else ""
    print(f"{s['method']} on {s['task']}: {s['updates']} updates, {s['env_steps']} env steps, {s['samples_seen']} "
          f"samples in {s['wall_s']} s{rate}{loss}")
    print(f"checkpoints: {s['checkpoints']} in {os.path.join(args.out, 'checkpoints')} (last {s['checkpoint']})")
    return 0


def cmd_ls(args) -> int:
    from vla_forget.envs import TASKS
    from vla_forget.policies import POLICIES
    from vla_forget.spec import available, load_battery, load_target

    what = args.what
    if what in (None, "tasks"):
        print("tasks:")
        for e in TASKS.entries():
            m = e.metadata
            tag = " [pick-and-place]" if m.get("pick_and_place") else ""
            print(f"  {e.id:<24} {m.get('instruction', '')!r}{tag}")
    if what in (None, "batteries"):
        print("batteries:")
        for b in available("batteries"):
            bat = load_battery(b)
            print(f"  {b:<24} {len(bat.tasks)} tasks, {sum(t.episodes for t in bat.tasks)} episodes, target {bat.target}")
        print("targets:")
        for t in available("targets"):
            tg = load_target(t)
            print(f"  {t:<24} task {tg.task.task}, {tg.task.episodes} episodes")
    if what in (None, "policies"):
        print("policies:")
        for e in POLICIES.entries():
            print(f"  {e.id:<24} {e.description}")
    if what in (None, "sweeps"):
        from vla_forget.sweep import expand, load_sweep

        print("sweeps:")
        for sw in available("sweeps"):
            spec = load_sweep(sw)
            print(f"  {sw:<24} {len(expand(spec))} runs ({', '.join(spec.methods)}) on {spec.task} from {spec.base}")
    if what in (None, "presets"):
        from vla_forget.spec import load_preset

        print("presets:")
        for p in available("presets"):
            print(f"  {p:<24} {load_preset(p).get('description', '')}")
    return 0


def cmd_validate(args) -> int:
    from vla_forget.spec import validate

    status = 0
    for ref in args.specs:
        try:
            print(validate(ref))
        except (ValueError, KeyError) as e:
            print(f"INVALID {e}", file=sys.stderr)
            status = 1
    return status


def cmd_doctor(args) -> int:
    from vla_forget.envs.vulkan import VulkanUnavailableError, check_vulkan
    from vla_forget.versions import software_versions

    for k, v in software_versions().items():
        print(f"{k:>20}: {v}")
    from vla_forget.preflight import doctor_report

    simpler_lines, simpler_ok = doctor_report()  # SimplerEnv's interpreter: Vulkan extensions, rt drawers, numpy
    try:
        info = check_vulkan()
        print(f"{'vulkan':>20}: ok {info if isinstance(info, str) else ''}")
    except VulkanUnavailableError as e:
        print(f"{'vulkan':>20}: FAILED\n{e}", file=sys.stderr)
        print("\n".join(simpler_lines))
        return 1
    import torch

    if torch.cuda.is_available():  # GPU physics (--num-envs N --device cuda) loads SAPIEN's PhysX GPU library
        from vla_forget.envs.vulkan import physx_gpu_library

        path, url = physx_gpu_library()
        state = "ok" if os.path.exists(path) else f"missing: fetched on first use from {url} (offline: unzip it into {os.path.dirname(path)})"
        print(f"{'physx gpu':>20}: {state}")
    print("\n".join(simpler_lines))
    return 0 if simpler_ok else 1


EPILOG_ASSETS = """\
examples:
  vla-forget assets                                   # what is there, what is missing, how to get it
  vla-forget assets --download bridge --download widowx
  vla-forget assets --from ~/Downloads/bridge_v2_real2sim_dataset.zip
  vla-forget assets --from SimplerEnv/ManiSkill2_real2sim/data --link

Groups: bridge and widowx (ManiSkill3's Bridge digital twins, the WidowX tasks;
into $MS_ASSET_DIR/data, where ManiSkill3 reads them) and simpler (SimplerEnv's data for the Google-robot tasks;
into $VLA_FORGET_SIMPLER_DATA). The Google-robot tasks also need SimplerEnv
itself in its own interpreter: set VLA_FORGET_SIMPLER_PYTHON. Exit status 0
when every group asked for (all, if none) is complete.
"""


def _assets_parser(sub) -> None:
    p = sub.add_parser("assets", help="stage and check the SimplerEnv / Bridge assets (downloads or a local folder)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_ASSETS)
    p.add_argument("--download", action="append", choices=["bridge", "widowx", "simpler"], metavar="GROUP",
                   help="fetch a group from the internet: bridge, widowx, simpler (repeatable)")
    p.add_argument("--from", dest="source", metavar="PATH",
                   help="stage every group found in a local folder or downloaded .zip")
    p.add_argument("--link", action="store_true", help="with --from: symlink the folder instead of copying it")


def cmd_assets(args) -> int:
    from vla_forget.sim_assets import download, move_old_layout, report, stage_from, status

    for line in move_old_layout():
        print(line)
    wanted = set(args.download or [])
    if args.source:
        staged = stage_from(args.source, link=args.link)
        print(f"staged from {args.source}: {', '.join(staged)}")
        wanted |= set(staged)
    if args.download:
        download(tuple(args.download))
    rows = status()
    print(report(rows))
    incomplete = [r["group"] for r in rows if r["missing"] and (not wanted or r["group"] in wanted)]
    return 1 if incomplete else 0


def build_parser() -> argparse.ArgumentParser:
    from vla_forget import __version__

    parser = argparse.ArgumentParser(
        prog="vla-forget",
        description="Measure what a vision-language-action policy gains and forgets when it is adapted.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  vla-forget ls\n  vla-forget validate benchmarks/batteries/tabletop-v2.yaml\n"
               "  vla-forget bench --preset smoke --out runs/smoke\n\n`vla-forget COMMAND --help` shows each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"vla-forget {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _bench_parser(sub)
    p = sub.add_parser("ls", help="list tasks, batteries, targets, policies and presets")
    p.add_argument("what", nargs="?", choices=["tasks", "batteries", "policies", "presets", "sweeps"])
    p = sub.add_parser("validate", help="check battery or target specs and say exactly what is wrong",
                       epilog="example: vla-forget validate tabletop-v2 my_battery.yaml")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec id or YAML path")
    _demos_parser(sub)
    _pretrain_parser(sub)
    _sweep_parser(sub)
    _adapt_parser(sub)
    _analyze_parser(sub)
    _check_parser(sub)
    sub.add_parser("doctor", help="print versions and check that a Vulkan device works for the simulator "
                   "(and SimplerEnv's interpreter, where it is installed)")
    _assets_parser(sub)
    return parser


COMMANDS = {"bench": cmd_bench, "ls": cmd_ls, "validate": cmd_validate, "doctor": cmd_doctor}
COMMANDS["demos"] = cmd_demos
COMMANDS["pretrain"] = cmd_pretrain
COMMANDS["assets"] = cmd_assets
COMMANDS["sweep"] = cmd_sweep
COMMANDS["adapt"] = cmd_adapt
COMMANDS["analyze"] = cmd_analyze
COMMANDS["check"] = cmd_check


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    from vla_forget.errors import VlaForgetError

    try:
        return COMMANDS[args.command](args)
    except (VlaForgetError, FileNotFoundError) as e:  # bad input or environment: said in one line
        print(f"vla-forget {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

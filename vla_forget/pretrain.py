"""`vla-forget pretrain`: multi-task behaviour cloning of the small VLA on demonstrations.

The loss is OpenVLA's: cross-entropy on the 7 action tokens, teacher-forced
(:meth:`~vla_forget.policies.base.TokenPolicy.action_logits`), with the actions
tokenised by one set of BOUNDS_Q99 statistics pooled over the whole mixture
(:func:`vla_forget.datasets.mix_datasets`). The checkpoint carries those
statistics (its ``unnorm_key`` is the mixture's name) next to every dataset's
own entry, and the proprio mean and std of the training states.

The loop, checkpoints, resume, save cadence, log, progress bar and NaN guard are the one
:class:`~vla_forget.trainer.Trainer` that every adaptation method also drives.

Run folder (``--out DIR``)::

    DIR/config.json              the resolved PretrainConfig (a resumed run must match it)
    DIR/metrics.jsonl            one line per log interval, keyed by "step": train loss/accuracy, lr,
                                 samples/s; validation loss/accuracy (step 0: before training)
    DIR/events.jsonl             start (the split, the datasets, the validation at step 0), resume,
                                 dagger rounds, diverged, done
    DIR/checkpoints/update-000500/
                                 the layout of every trained run (adaptation's too, so
                                 `bench --checkpoints DIR` evaluates them; see vla_forget.trainer):
                                 a policy folder, meta.json (method "pretrain", step, samples seen,
                                 wall time, hyper-parameters), train_state.pt (optimizer, torch RNG)
                                 and train_state.json (step, sampler RNG, DAgger datasets). Runs
                                 written before this layout (DIR/ckpt-000500/) still resume.
    DIR/dagger/round-1/          the relabelled rollouts of DAgger round 1 (an RLDS dataset)

Validation: a fraction of each dataset's episodes (chosen by a seeded shuffle)
never enters training; a fixed, seeded sample of their steps gives the
validation loss and token accuracy.

``--resume`` continues from the newest complete checkpoint exactly: the same
weights after N steps as an uninterrupted run (sampling, augmentation and
dropout all draw from generators saved in the checkpoint). A finished run
continues with more DAgger rounds when resumed with a larger ``--dagger-rounds``
(and, for the new rounds, another ``--dagger-episodes``); like a larger
``--steps``, that stretches the cosine decay over the new total.

A non-finite loss or gradient stops the run before the optimiser step; the
checkpoints written so far (the last good one included) are kept, and the run
ends with :class:`Diverged`. A resumed run's metrics.jsonl is cut back to its
checkpoint, so it reads as an uninterrupted run's.

DAgger (``--dagger-rounds R``): after the first ``steps`` steps, each round
rolls out the current checkpoint in the simulator on the demonstrated tasks
that the scripted expert solves, labels every visited state with the expert
(``--dagger-expert``, default ``expert-v2``; it reads the privileged simulator state), writes those steps as a dataset,
adds it to the mixture, and trains ``dagger_steps`` more steps. Labels are
tokenised with the statistics of the original mixture (they do not change).
A rollout runs the task's full episode length, as bench does
(``--dagger-success-hold 0``, the default): demonstrations end a few steps after
success, so only DAgger shows the learner what to do once the task is solved
(hold still at the goal, stay clear of a released object); success is judged at the end.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from vla_forget import bc, rollout
from vla_forget.adapt import checkpoint_update
from vla_forget.bc import (  # noqa: F401
    TRANSPORT_MIN_XY,
    TRANSPORT_RULES,
    NoTransportSteps,
    SplitSampler,
    TransportSampler,
    gather,
    observation,
    parse_data_spec,
    shift_images,
    split_episodes,
    steps_of,
    token_loss,
    transport_steps,
)
from vla_forget.datasets import mix_datasets, open_dataset, write_dataset
from vla_forget.envs import TASKS, task_info
from vla_forget.episodes import Recorder, run_episode
from vla_forget.errors import VlaForgetError
from vla_forget.policies import SCRIPTED_EXPERTS, load_policy
from vla_forget.policies.base import side_by_side
from vla_forget.policies.small_vla import SmallVLA
from vla_forget.rollout import episode_generator_seed, get_env, get_policy
from vla_forget.config import PretrainConfig
from vla_forget.runfolder import RunFolder, RunKind
from safetensors.torch import load_file
from vla_forget.trainer import (Trainer, adamw, checkpoint_dirs,  # noqa: F401 (checkpoint_dirs: the run's checkpoints)
                                decay_factor)
from vla_forget.training import Diverged  # noqa: F401 (raised by the trainer)

METRICS = "metrics.jsonl"
RUN_CONFIG = "config.json"
#: DAgger rollouts use training seeds from here (below the evaluation seeds, which start at 100000)
DAGGER_SEED_START = 50_000
#: fields that a resumed run may change
VOLATILE = ("steps", "out", "progress", "device", "threads", "save_every", "eval_every", "log_every",
            "dagger_workers", "keep_checkpoints", "dagger_rounds", "dagger_episodes", "dagger_tasks")


class PretrainError(VlaForgetError, RuntimeError):
    """A pretraining run that cannot start or continue; the message says what to do."""


MAX_DAGGER_EPISODES = 100


def _unlabellable(task: str) -> Optional[str]:
    """Why the scripted experts cannot label DAgger rollouts of ``task``, or None when they can."""

    if task not in set(TASKS.ids()):
        return f"unknown task {task!r} (`vla-forget ls tasks`)"
    if task_info(task).extra.get("expert", "none") == "none":
        return f"no scripted expert can label {task}"
    return None


def parse_dagger_task(spec: str, default: int) -> Tuple[str, int]:
    """``TASK[:N]`` -> (task id, rollouts per round); raises :class:`PretrainError` for a bad count or unknown task."""
    task, sep, n = spec.rpartition(":")
    if not sep:
        task, n = spec, str(default)
    if not n.isdigit() or not 1 <= int(n) <= MAX_DAGGER_EPISODES:
        raise PretrainError(f"--dagger-task {spec!r}: rollouts per round must be 1..{MAX_DAGGER_EPISODES} (TASK or TASK:N)")
    why = _unlabellable(task)
    if why:
        raise PretrainError(f"--dagger-task {spec!r}: {why}")
    return task, int(n)


# --------------------------------------------------------------------------
# the model and the optimiser

def _load_model(cfg: PretrainConfig, image_shape: Sequence[int], log=None):
    """The initial model for data of ``image_shape``; with data from two cameras (``[H, 2H, 3]`` images) and a
    front-only ``--init``, a wrist-view conv net is added (seeded random init; every other weight is ``--init``'s)."""

    model = _load_init(cfg)
    wide = side_by_side(image_shape)
    if model.config.wrist_camera and not wide:
        raise PretrainError(f"--init {cfg.init} reads the front and wrist cameras (images [H, 2H, 3]) but the data's images "
                            f"are {list(image_shape)}: collect the demonstrations with --wrist-camera")
    if wide and not model.config.wrist_camera:
        grown = SmallVLA.random_init(cfg.seed, **{**model.config.to_dict(), "wrist_camera": True})
        missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
        if unexpected or any(not k.startswith("wrist.") for k in missing):
            raise PretrainError(f"cannot add a wrist camera to --init {cfg.init}: unexpected {unexpected}, missing {missing}")
        if log is not None:
            log({"event": "wrist_camera_added", "init": cfg.init, "new_parameters": int(sum(p.numel() for p in grown.wrist.parameters()))})
        model = grown
    return model


def _load_init(cfg: PretrainConfig):
    overrides = {} if cfg.dropout is None else {"dropout": float(cfg.dropout)}
    model = load_policy(cfg.init, **overrides) if overrides and os.path.isdir(cfg.init) else load_policy(cfg.init)
    if not isinstance(model, SmallVLA):
        raise PretrainError(f"--init {cfg.init} is a {type(model).__name__}; pretraining trains the small VLA (SmallVLA)")
    if overrides and not os.path.isdir(cfg.init):  # a registered id: rebuild with the new dropout, same weights
        fresh = SmallVLA(type(model.config)(**{**model.config.to_dict(), **overrides}))
        fresh.load_state_dict(model.state_dict())
        model = fresh
    return model


def _optimizer(model, cfg: PretrainConfig):
    """AdamW, weight decay on the matrices only, betas (0.9, 0.95)."""
    return adamw(model.named_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95),
                 matrices_only=True)


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at the last step."""
    total = max(1, cfg.total_steps())
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * decay_factor("cosine", (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps),
                                 cfg.min_lr_ratio)


def validate(model, val: Optional[Dict[str, Any]], device: str, batch_size: int = 128) -> Dict[str, Any]:
    """Validation loss, token accuracy (overall and per dimension) on the fixed held-out steps."""

    if val is None:
        return {}
    was_training = model.training
    model.eval()
    n = len(val["instruction"])
    tot_loss, tot_acc = 0.0, np.zeros(7)
    with torch.no_grad():
        for i in range(0, n, batch_size):
            part = {k: v[i:i + batch_size] for k, v in val.items()}
            loss, acc = token_loss(model, part, device)
            m = len(part["instruction"])
            tot_loss += float(loss) * m
            tot_acc += acc.cpu().numpy() * m
    model.train(was_training)
    acc = tot_acc / n
    return {"val_loss": round(tot_loss / n, 5), "val_token_acc": round(float(acc.mean()), 5),
            "val_token_acc_per_dim": [round(float(a), 4) for a in acc]}


# --------------------------------------------------------------------------
# DAgger

@dataclass
class DaggerJob:
    """One policy rollout labelled by the expert (picklable: sent to worker processes)."""

    policy: str
    task: str
    seed: int
    image_size: int
    success_hold: int = 0
    """stop after this many consecutive successful steps (0: run the task's full episode length)"""
    expert: str = SCRIPTED_EXPERTS[0]


def dagger_episode(job: DaggerJob) -> Dict[str, Any]:
    """Roll out the policy (sampling, as bench does) and record the expert's action at every visited state."""

    policy = get_policy(job.policy, "cpu")
    expert = _get_policy_uncached_expert(job.expert)
    env = get_env(job.task, image_size=job.image_size, render=True, num_envs=1, max_steps=None, sim_backend="cpu",
                   device="cpu", wrist_camera=policy.wrist_camera)
    gen = torch.Generator().manual_seed(episode_generator_seed(policy.checkpoint_hash(), job.task, job.seed))
    policy.reset(1)
    rec: Dict[str, List[Any]] = {"image": [], "state": [], "action": [], "reward": []}

    class Labels(Recorder):  # each visited state with the expert's action there, and the step's success as reward
        def before(self, t, obs):
            label = expert.act(obs, greedy=True)
            rec["image"].append(obs.image[0].cpu().numpy().astype(np.uint8))
            rec["state"].append(obs.state[0].cpu().numpy().astype(np.float32))
            rec["action"].append(label[0].clamp(-1, 1).cpu().numpy().astype(np.float32))

        def after(self, t, obs, action, next_obs, reward, success, info):
            rec["reward"].append(float(success[0]))

    out = run_episode(env, lambda obs: policy.act(obs, generator=gen), [job.seed], success_hold=job.success_hold,
                      recorders=[Labels()])
    obs, success = out.obs, bool(out.success[0])
    return {"task": job.task, "seed": job.seed, "instruction": obs.instruction[0], "success": success,
            "image": np.stack(rec["image"]), "state": np.stack(rec["state"]), "action": np.stack(rec["action"]),
            "reward": np.asarray(rec["reward"], np.float32), "is_terminal": success, "source": f"dagger-{job.expert}"}


_EXPERTS: Dict[str, Any] = {}


def _get_policy_uncached_expert(name: str):
    """The scripted expert ``name`` (kept apart from rollout's one-policy cache, which holds the learner)."""
    if name not in _EXPERTS:
        from vla_forget.policies import load_policy

        _EXPERTS[name] = load_policy(name)
    return _EXPERTS[name]


def dagger_round(cfg: PretrainConfig, checkpoint: str, round_idx: int, tasks: Sequence[str], image_shape, state_dim: int,
                 log) -> Tuple[str, Dict[str, float]]:
    """Roll out ``checkpoint`` on ``tasks``, label with the expert, write a dataset; returns (path, success per task)."""

    out = os.path.join(cfg.out, "dagger", f"round-{round_idx}")
    seed0 = DAGGER_SEED_START + 1000 * (round_idx - 1)
    plan = [parse_dagger_task(t, cfg.dagger_episodes) for t in tasks]
    tasks = [t for t, _ in plan]
    jobs = [DaggerJob(policy=os.path.abspath(checkpoint), task=t, seed=seed0 + 100 * k + i, image_size=cfg.image_size,
                      success_hold=cfg.dagger_success_hold, expert=cfg.dagger_expert)
            for k, (t, n) in enumerate(plan) for i in range(n)]
    episodes: List[Dict[str, Any]] = []
    t0 = time.perf_counter()
    rollout.run_parallel(dagger_episode, jobs, cfg.dagger_workers, episodes.append)
    episodes.sort(key=lambda e: (e["task"], e["seed"]))
    success = {t: float(np.mean([e["success"] for e in episodes if e["task"] == t])) for t in tasks}
    write_dataset(out, iter(episodes), name=f"dagger_round_{round_idx}", image_shape=tuple(image_shape),
                  state_dim=state_dim, description=f"DAgger round {round_idx}: rollouts of {checkpoint} labelled by {cfg.dagger_expert}")
    log({"event": "dagger", "round": round_idx, "episodes": len(episodes),
         "steps_added": int(sum(len(e["action"]) for e in episodes)), "rollout_success": success,
         "wall_s": round(time.perf_counter() - t0, 1)})
    return out, success


# --------------------------------------------------------------------------
# the run

#: pretraining run folders: what a resume may change, and what runs from before a field had in effect
RUN_KIND = RunKind(
    "pretrain", "a pretraining run", RUN_CONFIG, changeable=VOLATILE, error=PretrainError,
    added={"dagger_expert": "expert-v1",  # runs from before expert-v2 relabelled with expert-v1
           "dagger_success_hold": 5,  # and ended their rollouts 5 steps after success
           "transport_fraction": 0.0,  # runs from before the option drew batches uniformly
           "keep_statistics": False,  # and pooled new statistics
           "transport_rule": "dataset-weight"},  # and drew the transport share by the datasets' weights
)


def _check_config(cfg: PretrainConfig, resume: bool) -> PretrainConfig:
    """Check the run folder (see RunFolder.start) and return the config to train with: a resumed run keeps the
    transport rule it was started with."""
    folder = RunFolder(cfg.out, RUN_KIND)
    saved = folder.read_config() if resume else None
    if saved is not None and "transport_rule" not in saved and cfg.transport_rule == PretrainConfig.transport_rule:
        from dataclasses import replace

        cfg = replace(cfg, transport_rule=RUN_KIND.added["transport_rule"])
    folder.start(asdict(cfg), resume=resume, saved=saved)
    return cfg


def make_sampler(datasets: Sequence[Any], weights: Sequence[float], train_episodes: Sequence[np.ndarray], tokenizer: Any,
                 rng: np.random.Generator, transport_fraction: float = 0.0, transport_rule: str = "conditional"):
    """:func:`vla_forget.bc.make_sampler`, with data that has no transport step a :class:`PretrainError`."""

    try:
        return bc.make_sampler(datasets, weights, train_episodes, tokenizer, rng, transport_fraction, transport_rule)
    except NoTransportSteps as e:
        raise PretrainError(str(e)) from None


def _sampler(datasets, weights, train_eps, tokenizer, rng, cfg: PretrainConfig):
    return make_sampler(datasets, weights, train_eps, tokenizer, rng, cfg.transport_fraction, cfg.transport_rule)


def _state_statistics(datasets: Sequence[Any], train_episodes: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    states = np.concatenate([ds.episode(int(i)).state for ds, eps in zip(datasets, train_episodes) for i in eps])
    return states.mean(0), states.std(0)


def pretrain(cfg: PretrainConfig, *, resume: bool = False, stop_at: Optional[int] = None) -> Dict[str, Any]:
    """Train, validate and checkpoint as ``cfg`` says; returns a summary (raises :class:`Diverged`).

    ``stop_at`` ends this call after that step with a checkpoint, as an
    interruption would (the schedule stays that of ``cfg``); ``resume`` continues.
    """

    if cfg.steps < 0 or cfg.batch_size < 1:
        raise PretrainError(f"--steps must be >= 0 and --batch-size >= 1 (got {cfg.steps}, {cfg.batch_size})")
    if not cfg.data:
        raise PretrainError("give at least one --data PATH[:WEIGHT]")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise PretrainError("--device cuda: CUDA is not available on this machine (use --device cpu)")
    torch.set_num_threads(max(1, int(cfg.threads)))
    if cfg.dagger_rounds and cfg.dagger_expert not in SCRIPTED_EXPERTS:  # before the run folder records it
        raise PretrainError(f"--dagger-expert {cfg.dagger_expert!r}: choose one of {', '.join(SCRIPTED_EXPERTS)}")
    if not 0.0 <= cfg.transport_fraction < 1.0:
        raise PretrainError(f"--transport-fraction must be in [0, 1), got {cfg.transport_fraction}")
    if cfg.transport_rule not in TRANSPORT_RULES:
        raise PretrainError(f"transport_rule {cfg.transport_rule!r}: choose one of {', '.join(TRANSPORT_RULES)}")
    if cfg.dagger_success_hold < 0:
        raise PretrainError(f"--dagger-success-hold must be >= 0 (0 = full episodes), got {cfg.dagger_success_hold}")
    if cfg.dagger_rounds:
        if not 1 <= cfg.dagger_episodes <= MAX_DAGGER_EPISODES:
            raise PretrainError(f"--dagger-episodes must be 1..{MAX_DAGGER_EPISODES}, got {cfg.dagger_episodes}")
        for t in cfg.dagger_tasks:  # before the run folder records them
            parse_dagger_task(t, cfg.dagger_episodes)
    cfg = _check_config(cfg, resume)
    total = cfg.total_steps()
    trainer = Trainer(cfg.out, RUN_KIND, log_name=METRICS, counter="step", total=total, save_every=cfg.save_every,
                      method="pretrain", grad_clip=cfg.grad_clip, progress=cfg.progress, desc="pretrain",
                      keep_checkpoints=cfg.keep_checkpoints, resume=resume, device=cfg.device)

    def log(rec: Dict[str, Any]) -> None:
        """A record of numbers goes to metrics.jsonl; one with an "event" (start, dagger, ...) to events.jsonl."""
        if "event" in rec:
            trainer.event(rec["event"], **{k: v for k, v in rec.items() if k != "event"})
        else:
            trainer.log(rec)

    # --- data: the mixture, its pooled statistics, an episode split ---------
    specs = [parse_data_spec(s) for s in cfg.data]
    mix = mix_datasets(specs, statistics="pooled", name=cfg.name)
    split_rng = np.random.default_rng([cfg.seed, 1])
    train_eps, val_eps = zip(*[split_episodes(ds.num_episodes, cfg.val_fraction, split_rng) for ds in mix.datasets])
    weights = [w for _, w in specs]
    datasets = list(mix.datasets)

    # --- model, optimiser, state ---------------------------------------------
    torch.manual_seed(cfg.seed)
    resuming = trainer.resume_from is not None
    model = _load_model(cfg, datasets[0].image_shape, None if resuming else log)
    if cfg.keep_statistics:
        if getattr(model, "tokenizer", None) is None or getattr(model, "unnorm_key", None) in (None, "identity"):
            raise PretrainError(f"--keep-statistics: the initial policy {cfg.init!r} has no action statistics to keep "
                                "(an untrained model's are a placeholder); drop the option to pool them over --data")
        tokenizer = model.tokenizer
    else:
        model.set_statistics(mix.all_statistics, cfg.name)
        if hasattr(model, "set_state_statistics"):
            model.set_state_statistics(*_state_statistics(datasets, train_eps))
        tokenizer = mix.tokenizer
    val = None  # held-out steps, tokenised as training tokenises
    if sum(len(v) for v in val_eps) and cfg.val_steps > 0:
        vsteps = [steps_of(ds, v) for ds, v in zip(datasets, val_eps)]
        flat = [(k, e, s) for k, (es, ss) in enumerate(vsteps) for e, s in zip(es, ss)]
        pick = np.random.default_rng([cfg.seed, 2]).permutation(len(flat))[: cfg.val_steps]
        rows = np.asarray([flat[i] for i in sorted(pick)], np.int64)
        val = gather(datasets, rows[:, 0], rows[:, 1], rows[:, 2], tokenizer)
    model.to(cfg.device).train()
    opt = _optimizer(model, cfg)
    rng = np.random.default_rng([cfg.seed, 3])
    dagger_sets: List[str] = []
    if resuming:
        model.load_state_dict(load_file(os.path.join(trainer.resume_from, "model.safetensors")))
        model.to(cfg.device).train()
        state, _ = trainer.restore(opt)
        rng.bit_generator.state = state["numpy_rng"]
        dagger_sets = list(state.get("dagger", []))
    for rel in dagger_sets:  # stored relative to the run folder
        datasets.append(open_dataset(os.path.join(cfg.out, rel)))
        train_eps = tuple(train_eps) + (np.arange(datasets[-1].num_episodes),)
        weights.append(cfg.dagger_weight)
    sampler = _sampler(datasets, weights, train_eps, tokenizer, rng, cfg)

    dagger_tasks = list(cfg.dagger_tasks)
    if cfg.dagger_rounds and not dagger_tasks:
        dagger_tasks = [t for ds in mix.datasets for t in ds.manifest.get("tasks", []) if not _unlabellable(t)]
        if not dagger_tasks:
            raise PretrainError("--dagger-rounds: no task in the data has a scripted expert; name tasks with --dagger-task")
    boundaries = [cfg.steps + r * cfg.dagger_steps for r in range(cfg.dagger_rounds)]

    def checkpoint() -> str:
        return trainer.save(model, opt, state={"numpy_rng": rng.bit_generator.state, "dagger": dagger_sets},
                            meta={"samples_seen": trainer.step * cfg.batch_size,
                                  "hparams": {"lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed},
                                  "run": os.path.basename(os.path.abspath(cfg.out))})

    if not resuming:
        v0 = validate(model, val, cfg.device)
        log({"event": "start", "datasets": [f"{d.name}:{w:g}" for d, w in zip(mix.datasets, weights)],
             "train_episodes": [int(len(e)) for e in train_eps], "val_episodes": [int(len(v)) for v in val_eps],
             "val_steps": 0 if val is None else len(val["instruction"]), "parameters": model.num_parameters(),
             "unnorm_key": model.unnorm_key if cfg.keep_statistics else cfg.name, **v0,
             **({"transport_steps": list(sampler.counts), "transport_fraction": cfg.transport_fraction}
                if isinstance(sampler, TransportSampler) else {})})
        if v0:
            log({"step": 0, **v0})

    t_log, n_log, loss_sum, acc_sum = time.perf_counter(), 0, 0.0, 0.0
    t_start = time.perf_counter()
    summary: Dict[str, Any] = {}
    for n in trainer.loop(stop_at):
        step = n - 1  # the steps done before this one
        # DAgger: at a round boundary, roll out the newest checkpoint and grow the mixture
        if step in boundaries and len(dagger_sets) <= boundaries.index(step):
            r = boundaries.index(step) + 1
            last = trainer.last_checkpoint
            ckpt = last if last and checkpoint_update(last) == step else checkpoint()
            path, _ = dagger_round(cfg, ckpt, r, dagger_tasks, datasets[0].image_shape, datasets[0].state_dim, log)
            torch.set_num_threads(max(1, int(cfg.threads)))  # the rollout runner sets one thread
            dagger_sets.append(os.path.relpath(path, cfg.out))
            datasets.append(open_dataset(path))
            train_eps = tuple(train_eps) + (np.arange(datasets[-1].num_episodes),)
            weights.append(cfg.dagger_weight)
            sampler = _sampler(datasets, weights, train_eps, tokenizer, rng, cfg)
            checkpoint()  # records the new dataset, so a resume continues with it
        batch = sampler.sample(cfg.batch_size)
        batch["image"] = shift_images(batch["image"], cfg.augment_shift, rng)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss, acc = token_loss(model, batch, cfg.device)
        gnorm = trainer.optimizer_step(opt, loss)
        loss_sum += loss.item()
        acc_sum += float(acc.mean())
        n_log += 1
        records = []
        if n % cfg.log_every == 0 or n == total:
            dt = time.perf_counter() - t_log
            records.append({"step": n, "loss": round(loss_sum / n_log, 5), "token_acc": round(acc_sum / n_log, 5),
                            "lr": lr_at(step, cfg), "grad_norm": round(float(gnorm), 4),
                            "samples_per_s": round(n_log * cfg.batch_size / max(dt, 1e-9), 2)})
            trainer.show(loss=records[-1]["loss"], acc=records[-1]["token_acc"])
            t_log, n_log, loss_sum, acc_sum = time.perf_counter(), 0, 0.0, 0.0
        if n % cfg.eval_every == 0 or n == total:
            v = validate(model, val, cfg.device)
            if v:
                records.append({"step": n, **v})
                summary.update(v)
            t_log = time.perf_counter()
        due = trainer.done(n)
        for rec in records:
            trainer.log(rec)
        if due:
            checkpoint()
    summary.update({"steps": trainer.step, "checkpoint": trainer.last_checkpoint,
                    "wall_s": round(time.perf_counter() - t_start, 1),
                    "dagger_datasets": [os.path.join(cfg.out, p) for p in dagger_sets]})
    trainer.event("done", **summary)
    return summary

"""Policy registry and loading.

``load_policy(spec)`` accepts a registered policy id (``vla-forget ls``), a
path to a checkpoint folder saved by a policy's ``save`` (its ``config.json``
names the policy class), an OpenVLA-format Hugging Face checkpoint folder (its
``config.json`` is a transformers config), or ``openvla:FOLDER_OR_HUB_ID[#options]``
(see :mod:`vla_forget.policies.openvla`). Heavy modules are imported only when a
policy is made. Checkpoints that run code shipped with them (OpenVLA-7B's
``modeling_prismatic.py``) load only with ``trust_remote_code=True`` (or the
environment variable ``VLA_FORGET_TRUST_REMOTE_CODE=1``, which
``--trust-remote-code`` sets so that worker processes inherit the choice).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from vla_forget.registry import Registry, UnknownIdError
from vla_forget.errors import VlaForgetError

POLICIES = Registry("policy")
#: the scripted experts registered below (vla_forget.policies.expert): the default demonstrator and DAgger labeller first
SCRIPTED_EXPERTS = ("expert-v2", "expert-v1")

POLICIES.register(
    "expert-v1",
    "vla_forget.policies.expert:ScriptedExpert",
    description="scripted pick/push/pull expert that reads privileged simulator state (no action distribution)",
)
POLICIES.register(
    "expert-v2",
    "vla_forget.policies.expert:ScriptedExpert",
    description="expert-v1 that grasps cubes at their yaw, without turning to their faces first "
    "(labels a camera policy can follow); the default demonstrator",
    align_yaw=False,
)
POLICIES.register(
    "small-vla-random-v1",
    "vla_forget.policies.small_vla:SmallVLA.random_init",
    description="the small VLA (< 10 M parameters) at its seeded random initialisation",
    seed=0,
)
POLICIES.register(
    "zero-v1",
    "vla_forget.policies.simple:ZeroPolicy",
    description="outputs the zero action with the gripper open (zero-cost baseline for harness benchmarks)",
)
POLICIES.register(
    "zero-image-v1",
    "vla_forget.policies.simple:ZeroPolicy",
    description="zero-v1 that asks for camera images, so the env renders as for a VLA (harness benchmarks)",
    needs_image=True,
)
POLICIES.register(
    "openvla-tiny-v1",
    "vla_forget.policies.openvla_tiny:load_tiny",
    description="a tiny OpenVLA-format checkpoint (random weights), built offline into the cache on first use: "
                "the OpenVLA adapter's real code path on any CPU",
    seed=0,
)
POLICIES.register(
    "small-vla-base-v5",
    "vla_forget.policies:load_asset",
    description="the small VLA trained by behaviour cloning and DAgger on expert-v2 demonstrations of every battery task and the target, "
    "with eight full-length DAgger rounds, front and wrist cameras (assets/small-vla-base-v5; see its MODEL_CARD.md); "
    "the default base",
    name="small-vla-base-v5",
)
POLICIES.register(
    "small-vla-base-v6",
    "vla_forget.policies:load_asset",
    description="small-vla-base-v5 trained further with a share of every batch from the carry steps (pretrain "
    "--transport-fraction), the target weighted up: it reads the target's destination some of the time "
    "(assets/small-vla-base-v6; see its MODEL_CARD.md); the base of the forgetting experiment's PPO-vs-SFT comparison",
    name="small-vla-base-v6",
)
POLICIES.register(
    "small-vla-v6-sft-v1",
    "vla_forget.policies:load_asset",
    description="small-vla-base-v6 adapted to place-cube-on-target-v1 by SFT on expert demonstrations (4500 steps): "
    "+30 points on the target, most of the battery forgotten (assets/small-vla-v6-sft-v1; see its MODEL_CARD.md)",
    name="small-vla-v6-sft-v1",
)
POLICIES.register(
    "small-vla-v6-ppo-v1",
    "vla_forget.policies:load_asset",
    description="small-vla-base-v6 adapted to place-cube-on-target-v1 by PPO (16 updates of 32 rollouts): close to "
    "the base, no measurable forgetting, no significant gain on fresh seeds (assets/small-vla-v6-ppo-v1; see its "
    "MODEL_CARD.md)",
    name="small-vla-v6-ppo-v1",
)

# Checkpoint folders name their class in config.json under this key.
CLASS_KEY = "policy_class"
CHECKPOINT_CLASSES = {
    "SmallVLA": "vla_forget.policies.small_vla:SmallVLA.load",
    "OpenVLA": "vla_forget.policies.openvla:load",
}
#: classes whose loader takes ``trust_remote_code``
REMOTE_CODE_CLASSES = ("OpenVLA",)
OPENVLA_PREFIX = "openvla:"


class CheckpointError(VlaForgetError, ValueError):
    """A checkpoint folder that cannot be loaded (missing files, wrong format or shape)."""


def is_checkpoint_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json"))


def is_hf_model_config(cfg: Any) -> bool:
    """A transformers model config (``model_type``/``architectures``), not one of this project's policy configs."""
    return isinstance(cfg, dict) and CLASS_KEY not in cfg and ("model_type" in cfg or "architectures" in cfg)


def load_policy(spec: str, *, device: Optional[str] = None, trust_remote_code: Optional[bool] = None, **overrides: Any):
    """Make a policy from a registered id, a checkpoint folder or an ``openvla:`` spec.

    ``trust_remote_code``: allow checkpoints that run their own code (None: the
    ``VLA_FORGET_TRUST_REMOTE_CODE`` environment variable decides).
    """
    from vla_forget.registry import Entry

    source, sep, opts = spec.partition("#")
    if sep and not spec.startswith(OPENVLA_PREFIX):
        # options after '#' on an id or a folder: prompt=STYLE for any policy; the OpenVLA options for its folders
        options = parse_spec_options(opts, spec)
        prompt = options.pop("prompt", None)
        policy = load_policy(source, device=device, trust_remote_code=trust_remote_code, **options, **overrides)
        if prompt is not None:
            policy.set_prompt_style(prompt)
        return policy
    if spec.startswith(OPENVLA_PREFIX):
        policy = Entry("OpenVLA", CHECKPOINT_CLASSES["OpenVLA"]).load()(spec, trust_remote_code=trust_remote_code, **overrides)
    elif spec in POLICIES:
        entry = POLICIES.get(spec)
        factory = entry.load()
        kwargs = {**entry.kwargs, **overrides}
        policy = factory(**kwargs)
    elif os.path.exists(spec):
        if not is_checkpoint_dir(spec):
            raise CheckpointError(
                f"{spec} is not a policy checkpoint: expected a folder with config.json, model.safetensors and dataset_statistics.json"
            )
        try:
            with open(os.path.join(spec, "config.json")) as f:
                cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{spec}/config.json is not valid JSON: {e}") from None
        cls_name = cfg.get(CLASS_KEY)
        if cls_name is None and is_hf_model_config(cfg):
            cls_name = "OpenVLA"  # a Hugging Face model folder: OpenVLA's format
        if cls_name in REMOTE_CODE_CLASSES:
            overrides["trust_remote_code"] = trust_remote_code
        if cls_name not in CHECKPOINT_CLASSES:
            raise CheckpointError(
                f"{spec}/config.json names policy_class={cls_name!r}; known classes: {', '.join(sorted(CHECKPOINT_CLASSES))}"
            )
        policy = Entry(cls_name, CHECKPOINT_CLASSES[cls_name]).load()(spec, **overrides)
    else:
        raise UnknownIdError(
            f"{POLICIES.unknown_message(spec)}; or give the path of a checkpoint folder (no such path: {spec}), "
            f"or an OpenVLA checkpoint as {OPENVLA_PREFIX}FOLDER_OR_HUB_ID"
        )
    if device is not None and hasattr(policy, "to"):
        policy = policy.to(device)
    return policy


def parse_spec_options(opts: str, spec: str, *, allowed=None, error=None,
                       hint: str = "options are key=value after '#' (e.g. FOLDER#prompt=bare)") -> dict:
    """The ``k=v,k=v`` options after ``#`` in a policy spec; ``error`` (default :class:`CheckpointError`) for an
    item that is not ``key=value`` or whose key is not in ``allowed`` (None: any key)."""
    out = {}
    for item in filter(None, (o.strip() for o in opts.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key or (allowed is not None and key not in allowed):
            raise (error or CheckpointError)(f"bad option {item!r} in policy spec {spec!r}: {hint}")
        out[key] = value
    return out


def load_asset(name: str, **overrides: Any):
    """Load a checkpoint folder shipped in the package (``vla_forget.assets/NAME``) by its policy class."""
    import pathlib
    import tempfile
    from importlib.resources import files

    ref = files("vla_forget.assets").joinpath(name)
    if isinstance(ref, pathlib.Path):
        if not ref.is_dir():
            raise CheckpointError(f"the packaged checkpoint {name} is missing ({ref}); reinstall vla-forget")
        return load_policy(str(ref), **overrides)
    with tempfile.TemporaryDirectory() as d:  # a zipped install: copy the folder's files out, then load
        for item in ref.iterdir():
            pathlib.Path(d, item.name).write_bytes(item.read_bytes())
        return load_policy(d, **overrides)

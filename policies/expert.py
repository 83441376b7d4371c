"""A scripted state-feedback expert for the ManiSkill tasks (reads privileged state).

It is a controller, not a planner: every call maps the *current* simulator
state to an action, with no stored plan and no hidden phase, so it can label
any state a learner visits (DAgger-style data collection). The decision per env
is a chain of tests on ``Observation.privileged`` (see
:mod:`vla_forget.envs.maniskill` for the keys) and the finger positions in
``Observation.state[:, 7:9]``:

pick and place (``task_kind == "pick_place"``)
    1. holding the object and it sits at the goal: open the gripper if the task
       wants it released, else hold still;
    2. holding it elsewhere: lift it to a carrying height, move above the goal,
       lower it onto the goal;
    3. not holding it, and it already rests at the goal (after release): move
       up with the gripper open;
    4. gripper closed on nothing: open it and rise;
    5. otherwise: move above the object, turn the gripper to the object's yaw
       (modulo 90 degrees for cubes; ``expert-v2`` keeps its yaw instead),
       descend with the gripper open, close.
push / pull (``task_kind == "push"``)
    get behind the object (the side away from the goal) at its height, passing
    above it, then move it along the line to the goal with the gripper closed.
anything else (``task_kind == "none"``, e.g. LiftPegUpright)
    a safe action: no motion, gripper open.

Position errors are turned into actions by a proportional law (1 = 0.1 m); the
orientation is kept pointing down, with the yaw error as an axis-angle delta.

Two versions are registered. ``expert-v1`` turns the gripper to a cube's faces
before it descends. ``expert-v2`` (``align_yaw=False``) does not: the 4 cm
cube's 5.7 cm diagonal fits the 8 cm opening, and the closing fingers square
the cube up. Turning is slow (about 0.04 rad per step at full command, up to
0.79 rad to turn) and its label flips sign where the cube's yaw error crosses
45 degrees, which a camera cannot resolve; a learner then hovers and turns back
and forth above the cube. ``expert-v2`` labels every cube grasp "keep the yaw".

Measured success of ``expert-v1`` (CPU sim, seeds 0-29, full episodes, success at the end)::

    PickCube-v1 30/30   StackCube-v1 30/30   StackColorCube-v1 30/30
    PlaceCubeOnTarget-v1 30/30   PushCube-v1 30/30   PullCube-v1 30/30
    PlaceSphere-v1 30/30         LiftPegUpright-v1: not attempted (safe action)

First success after 8-13 steps (push/pull), 19-38 (PickCube, StackCube,
PlaceSphere) and 21-42 (the colour-cube tasks).

``expert-v2``, same seeds, cube tasks (``tests/test_expert.py`` checks a sample)::

    PickCube-v1 30/30   StackCube-v1 29/30   StackColorCube-v1 30/30
    PlaceCubeOnTarget-v1 30/30

First success after 9-26 steps (PickCube) and 19-28 (the other three).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from vla_forget.policies.base import Observation, Policy

POS_SCALE = 0.1  # metres per unit action
ROT_SCALE = 0.1  # radians per unit action
HOVER = 0.08  # height of the approach point above the object's centre (m)


# --- quaternion helpers (w, x, y, z) ----------------------------------------
def _qmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        -1,
    )


def _qconj(q: torch.Tensor) -> torch.Tensor:
    return q * torch.tensor([1.0, -1.0, -1.0, -1.0], device=q.device, dtype=q.dtype)


def _yaw_of_x_axis(q: torch.Tensor) -> torch.Tensor:
    """Angle of the body x-axis projected on the world xy plane."""
    w, x, y, z = q.unbind(-1)
    r00 = 1 - 2 * (y * y + z * z)
    r10 = 2 * (x * y + w * z)
    return torch.atan2(r10, r00)


def _wrap(a: torch.Tensor, period: float) -> torch.Tensor:
    """Wrap angles to [-period/2, period/2)."""
    return torch.remainder(a + period / 2, period) - period / 2


def _rotation_action(q: torch.Tensor, yaw_target: torch.Tensor) -> torch.Tensor:
    """Axis-angle (world frame) from the current TCP orientation to 'pointing down at yaw_target', in action units."""
    half = yaw_target / 2
    zeros = torch.zeros_like(half)
    q_yaw = torch.stack([torch.cos(half), zeros, zeros, torch.sin(half)], -1)
    q_down = torch.tensor([0.0, 1.0, 0.0, 0.0], device=q.device, dtype=q.dtype).expand_as(q)
    q_err = _qmul(_qmul(q_yaw, q_down), _qconj(q))
    q_err = torch.where(q_err[:, :1] < 0, -q_err, q_err)
    v = q_err[:, 1:]
    s = v.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    angle = 2 * torch.atan2(s, q_err[:, :1])
    # ManiSkill's pd_ee_delta_pose turns the TCP by *minus* the commanded
    # angles about the world axes (measured: +droll rotates about -x), hence the sign.
    return -(v / s * angle) / ROT_SCALE


def _position_action(delta: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    a = delta * (gain / POS_SCALE)
    m = a.abs().amax(-1, keepdim=True).clamp_min(1.0)
    return a / m  # keeps the direction when clipping


class ScriptedExpert(Policy):
    """State-feedback expert for pick-and-place and push/pull tasks (see the module docstring)."""

    needs_image = False
    needs_privileged = True

    def __init__(self, gain: float = 1.0, align_yaw: bool = True):
        self.gain = float(gain)
        self.align_yaw = bool(align_yaw)

    def reset(self, batch_size: int) -> None:
        """Nothing to reset: the expert keeps no per-episode state."""

    def checkpoint_hash(self) -> str:
        return "expert-v1" if self.align_yaw else "expert-v2"

    @torch.no_grad()
    def act(self, obs: Observation, *, greedy: bool = False, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        from vla_forget.envs import EXPERT_KINDS

        p = obs.privileged
        if "task_kind" not in p:
            raise ValueError("ScriptedExpert needs privileged observations (make the task env with privileged=True)")
        kind = p["task_kind"]
        action = torch.zeros(obs.batch_size, 7, device=obs.state.device)
        action[:, 6] = 1.0  # the safe default: stay, gripper open
        for name, fn in (("pick_place", self._pick_place), ("push", self._push)):
            mask = kind == EXPERT_KINDS.index(name)
            if mask.any():
                idx = mask.nonzero().squeeze(-1)
                action[idx] = fn(obs.index(idx)).to(action.dtype)
        return action

    # --- pick and place -------------------------------------------------------
    def _pick_place(self, obs: Observation) -> torch.Tensor:
        p = obs.privileged
        tcp, tcp_q = p["tcp_pose"][:, :3], p["tcp_pose"][:, 3:]
        obj, obj_q = p["obj_pose"][:, :3], p["obj_pose"][:, 3:]
        hs, goal = p["obj_half_size"], p["goal_pos"]
        release, grasped = p["release"].bool(), p["is_grasped"].bool()
        width = obs.state[:, 7:9].sum(-1)
        n = tcp.shape[0]
        up = torch.tensor([0.0, 0.0, 1.0], device=tcp.device)

        tcp_yaw = _yaw_of_x_axis(tcp_q)
        align = p["align_yaw"].bool() & self.align_yaw
        yaw_err = torch.where(align, _wrap(_yaw_of_x_axis(obj_q) - tcp_yaw, math.pi / 2), torch.zeros_like(tcp_yaw))
        d_xy = (tcp[:, :2] - obj[:, :2]).norm(dim=-1)
        g_xy = (obj[:, :2] - goal[:, :2]).norm(dim=-1)
        obj_at_goal = (g_xy < 0.01) & ((obj[:, 2] - goal[:, 2]) < 0.01)

        target = tcp.clone()
        gripper = torch.ones(n, device=tcp.device)
        yaw_target = tcp_yaw.clone()

        # 5. approach, align, descend, close (the default branch; later rules override it)
        hover = obj + HOVER * up
        low = tcp[:, 2] < obj[:, 2] + 0.04
        aligned = (d_xy < 0.01) & (yaw_err.abs() < 0.08)
        descending = aligned | (low & (d_xy < 0.02) & (yaw_err.abs() < 0.15))
        open_enough = width > 2 * hs + 0.02
        at_grasp = (d_xy < 0.015) & ((tcp[:, 2] - obj[:, 2]).abs() < 0.01)
        approach = torch.where((low & (d_xy >= 0.02)).unsqueeze(-1), torch.cat([tcp[:, :2], hover[:, 2:]], -1), hover)
        target = torch.where((descending & open_enough).unsqueeze(-1), obj, approach)
        target = torch.where((descending & ~open_enough & ~at_grasp).unsqueeze(-1), tcp, target)
        yaw_target = tcp_yaw + yaw_err
        closing = at_grasp & (descending | ~open_enough)
        gripper = torch.where(closing, -torch.ones_like(gripper), gripper)
        target = torch.where(closing.unsqueeze(-1), obj, target)

        # 4. closed on nothing: open and rise
        empty = (width < 2 * hs - 0.01) & ~grasped
        target = torch.where(empty.unsqueeze(-1), tcp + 0.05 * up, target)
        gripper = torch.where(empty, torch.ones_like(gripper), gripper)

        # 3. released at the goal: move up, gripper open
        done = ~grasped & release & obj_at_goal
        target = torch.where(done.unsqueeze(-1), torch.cat([obj[:, :2], goal[:, 2:] + 0.1], -1), target)
        gripper = torch.where(done, torch.ones_like(gripper), gripper)
        yaw_target = torch.where(done | empty, tcp_yaw, yaw_target)

        # 2. carrying: lift, move above the goal, lower; the target is for the object, shifted to the TCP
        carry_z = torch.maximum(goal[:, 2] + 0.04, hs + 0.08)
        lifted = obj[:, 2] > carry_z - 0.03
        obj_target = torch.where(
            (g_xy < 0.01).unsqueeze(-1),
            goal,
            torch.where(lifted.unsqueeze(-1), torch.cat([goal[:, :2], carry_z[:, None]], -1), torch.cat([obj[:, :2], carry_z[:, None]], -1)),
        )
        carry_target = tcp + (obj_target - obj)
        target = torch.where(grasped.unsqueeze(-1), carry_target, target)
        gripper = torch.where(grasped, -torch.ones_like(gripper), gripper)
        yaw_target = torch.where(grasped, tcp_yaw, yaw_target)

        # 1. at the goal while holding: let go (or hold still)
        let_go = grasped & obj_at_goal & release
        target = torch.where(let_go.unsqueeze(-1), tcp, target)
        gripper = torch.where(let_go, torch.ones_like(gripper), gripper)

        a = torch.zeros(n, 7, device=tcp.device)
        a[:, :3] = _position_action(target - tcp, self.gain)
        a[:, 3:6] = _rotation_action(tcp_q, yaw_target).clamp(-1, 1)
        a[:, 6] = gripper
        return a

    # --- push / pull ----------------------------------------------------------
    def _push(self, obs: Observation) -> torch.Tensor:
        p = obs.privileged
        tcp, tcp_q = p["tcp_pose"][:, :3], p["tcp_pose"][:, 3:]
        obj, hs, goal = p["obj_pose"][:, :3], p["obj_half_size"], p["goal_pos"]
        n = tcp.shape[0]
        to_goal = goal[:, :2] - obj[:, :2]
        dist = to_goal.norm(dim=-1, keepdim=True)
        u = to_goal / dist.clamp_min(1e-6)
        rel = tcp[:, :2] - obj[:, :2]
        along = (rel * u).sum(-1)  # negative behind the object
        lateral = (rel - along[:, None] * u).norm(dim=-1)
        standoff = hs + 0.02
        behind_xy = obj[:, :2] - standoff[:, None] * u
        push_z = hs.clone()
        safe_z = obj[:, 2] + hs + 0.05

        in_line = (lateral < 0.01) & (along < -(hs + 0.005))
        low = tcp[:, 2] < push_z + 0.01
        # default: go above the point behind the object (rising first if low and not in line)
        target = torch.cat([behind_xy, safe_z[:, None]], -1)
        target = torch.where((~in_line & (tcp[:, 2] < safe_z - 0.02) & ((tcp[:, :2] - behind_xy).norm(dim=-1) > 0.01)).unsqueeze(-1),
                             torch.cat([tcp[:, :2], safe_z[:, None]], -1), target)
        # above the behind point: descend
        above = (tcp[:, :2] - behind_xy).norm(dim=-1) < 0.01
        target = torch.where((above & ~low).unsqueeze(-1), torch.cat([behind_xy, push_z[:, None]], -1), target)
        # in line and low: push towards the goal (stay on the line through object and goal)
        push_xy = goal[:, :2] - standoff[:, None] * u
        pushing = in_line & low
        target = torch.where(pushing.unsqueeze(-1), torch.cat([push_xy, push_z[:, None]], -1), target)
        arrived = dist.squeeze(-1) < 0.01
        target = torch.where((arrived & low).unsqueeze(-1), tcp, target)

        a = torch.zeros(n, 7, device=tcp.device)
        a[:, :3] = _position_action(target - tcp, self.gain)
        a[:, 3:6] = _rotation_action(tcp_q, _yaw_of_x_axis(tcp_q)).clamp(-1, 1)
        a[:, 6] = -1.0
        return a

"""SimplerEnv (Google robot) in its own interpreter: a small request/response loop over stdin/stdout.

Run by :class:`vla_forget.envs.simpler.SimplerGoogleTaskEnv` as
``PYTHON simpler_worker.py`` where PYTHON is SimplerEnv's interpreter
(``simpler_env`` + ``mani_skill2_real2sim`` on SAPIEN 2.2.2, which cannot share
a Python environment with ManiSkill3's SAPIEN 3). This file imports nothing
from vla_forget: it needs only the standard library, numpy, gymnasium and
SimplerEnv, so the other interpreter needs no copy of this project.

Protocol: each message is a 4-byte big-endian length and a pickle (protocol 4)
of a dict. Requests ``{"cmd": ...}``:

* ``check`` -> ``{"ok": True, "versions": {...}, "asset_dir": ...}``
* ``reset`` with ``env``, ``build`` (gym.make kwargs), ``reset`` (options),
  ``overlay`` (path relative to the asset folder or None), ``camera``, ``seed``
  -> an observation; the env is (re)built only when env/build/overlay change.
  After each reset the files the env loads (scene ``.glb``, object models,
  overlay image, URDFs and the meshes they name) must exist: SAPIEN 2 only
  logs a missing mesh and runs on without it, so a missing file is an error
  naming it (``missing_files``)
* ``step`` with ``action`` (7 floats: world vector, axis-angle, gripper)
  -> an observation plus ``reward``, ``success``, ``terminated``,
  ``episode_stats`` (SimplerEnv's ``info["episode_stats"]``: its per-episode
  stats, e.g. ``grasped``, ``consec_grasp``, ``n_lift_significant``, or the
  drawer's ``qpos``) and ``step_stats`` (the step's other scalar ``info``
  entries, e.g. ``is_grasped``, ``lifted_object``, ``moved_correct_obj``)
* ``close`` -> the worker exits

An observation: ``image`` uint8 [H, W, 3] from the task's camera,
``instruction``, ``tcp_pose`` (7: position, quaternion wxyz), ``qpos``,
``finger_qpos`` (the gripper's finger joints, found by name; None when the
env does not say). Errors come back as ``{"error": "Type: message", "traceback": ...}``.

SimplerEnv's asset folder is ``mani_skill2_real2sim.ASSET_DIR``: the
``MS2_REAL2SIM_ASSET_DIR`` variable, which the parent sets to the staged folder.
"""

import os
import pickle
import struct
import sys
import traceback


def _read(stream):
    head = stream.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    return pickle.loads(stream.read(n))


def _write(stream, obj):
    data = pickle.dumps(obj, protocol=4)
    stream.write(struct.pack(">I", len(data)) + data)
    stream.flush()


class Worker:
    def __init__(self):
        self.env = None
        self.key = None
        self.camera = None
        self.env_id = None
        self.fingers = None  # indices of the finger joints in qpos
        self.checked = set()  # files already found

    def check(self, _req):
        import importlib.metadata as md

        import mani_skill2_real2sim
        import simpler_env  # noqa: F401

        versions = {}
        for name in ("sapien", "mani_skill2_real2sim", "simpler_env", "numpy"):
            try:
                versions[name] = md.version(name)
            except md.PackageNotFoundError:
                versions[name] = None
        return {"ok": True, "versions": versions, "asset_dir": str(mani_skill2_real2sim.ASSET_DIR)}

    def _finger_indices(self):
        try:
            names = [j.get_name() for j in self.env.unwrapped.agent.robot.get_active_joints()]
        except Exception:  # an env without a SAPIEN robot
            return None
        idx = [i for i, n in enumerate(names) if "finger" in n]
        return idx or None

    def _referenced_files(self):
        """The asset files the env loads, from its own attributes (ManiSkill2_real2sim's CustomSceneEnv)."""
        import re
        from pathlib import Path

        import mani_skill2_real2sim

        u = self.env.unwrapped
        files = []
        scene_root, scene = getattr(u, "scene_root", None), getattr(u, "scene_name", None)
        if scene_root is not None:
            if scene is None:  # SimplerEnv's default scenes
                robot = str(getattr(u, "robot_uid", ""))
                scene = "google_pick_coke_can_1_v4" if "google_robot" in robot else "bridge_table_1_v1"
            if "dummy" not in scene:
                files.append(Path(scene_root) / "stages" / f"{scene}.glb")
        overlay = getattr(u, "rgb_overlay_path", None)
        if isinstance(overlay, (str, Path)):
            files.append(Path(overlay))
        asset_root = getattr(u, "asset_root", None)
        if asset_root is not None:
            for model_id in self._episode_models(u):
                d = Path(asset_root) / "models" / model_id
                files.append(d / "collision.obj")
                visuals = [d / f"textured.{ext}" for ext in ("obj", "dae", "glb")]
                files.append(next((v for v in visuals if v.exists()), d / "textured.{obj,dae,glb}"))
            if getattr(u, "station_name", None):
                files.append(Path(asset_root) / f"{u.station_name}.urdf")
        cfg = getattr(u, "_agent_cfg", None)
        if getattr(cfg, "urdf_path", None):
            files.append(Path(mani_skill2_real2sim.format_path(cfg.urdf_path)))
        for urdf in [f for f in files if f.suffix == ".urdf" and f.exists()]:
            text = urdf.read_text(errors="replace")
            for name in sorted(set(re.findall(r'filename\s*=\s*"([^"]+)"', text))):
                if "://" not in name:
                    files.append(urdf.parent / name)
        return files

    @staticmethod
    def _episode_models(u):
        """The object models this episode loads: move-near's ``episode_model_ids`` (its triplet), a single-object
        task's ``model_id``; else every model the env may load (``model_ids``). Not the env's whole catalogue:
        move-near's lists models that no triplet uses, and SimplerEnv runs without their files."""
        for name in ("episode_model_ids", "model_id"):
            ids = getattr(u, name, None)
            ids = [ids] if isinstance(ids, str) else [i for i in (ids or []) if i]
            if ids:
                return ids
        ids = getattr(u, "model_ids", None) or []
        return [ids] if isinstance(ids, str) else list(ids)

    def _check_files(self):
        import mani_skill2_real2sim

        missing = []
        for f in self._referenced_files():
            key = str(f)
            if key in self.checked:
                continue
            if os.path.exists(key):
                self.checked.add(key)
            else:
                missing.append(key)
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise FileNotFoundError(
                f"SimplerEnv's {self.env_id} loads files that are not there (SAPIEN 2 would only log "
                f"this and run without them): {', '.join(missing[:5])}{more}. SimplerEnv's asset folder is "
                f"{mani_skill2_real2sim.ASSET_DIR} (MS2_REAL2SIM_ASSET_DIR): stage a complete copy of SimplerEnv's "
                "ManiSkill2_real2sim/data with `vla-forget assets --from SimplerEnv/ManiSkill2_real2sim/data` "
                "(a clone with git clone --recurse-submodules holds every file)")

    def _observation(self, obs):
        import numpy as np

        u = self.env.unwrapped
        image = obs["image"][self.camera]["rgb"]
        tcp = obs.get("extra", {}).get("tcp_pose")
        qpos = obs.get("agent", {}).get("qpos")
        qpos = None if qpos is None else np.asarray(qpos, dtype=np.float32)
        fingers = None if qpos is None or self.fingers is None else qpos[self.fingers]
        return {"image": np.ascontiguousarray(image, dtype=np.uint8), "instruction": u.get_language_instruction(),
                "tcp_pose": None if tcp is None else np.asarray(tcp, dtype=np.float32), "qpos": qpos,
                "finger_qpos": fingers}

    def reset(self, req):
        import gymnasium as gym
        import mani_skill2_real2sim
        import mani_skill2_real2sim.envs  # noqa: F401  (registers SimplerEnv's envs)

        build = dict(req["build"])
        if req.get("overlay"):
            build["rgb_overlay_path"] = str(mani_skill2_real2sim.ASSET_DIR / req["overlay"])
            build["rgb_overlay_cameras"] = [req["camera"]]
        key = repr((req["env"], sorted(build.items(), key=lambda kv: kv[0])))
        if key != self.key:
            if self.env is not None:
                self.env.close()
            self.env = gym.make(req["env"], obs_mode="rgbd", **build)
            self.key = key
        self.camera, self.env_id = req["camera"], req["env"]
        obs, _ = self.env.reset(seed=req.get("seed"), options=req["reset"])
        self._check_files()
        self.fingers = self._finger_indices()
        return self._observation(obs)

    def step(self, req):
        import numpy as np

        obs, reward, terminated, truncated, info = self.env.step(np.asarray(req["action"], dtype=np.float64))
        out = self._observation(obs)
        success = bool(info.get("success", terminated))
        out.update(reward=float(reward), success=success, terminated=bool(terminated), truncated=bool(truncated),
                   episode_stats={str(k): _plain(v) for k, v in dict(info.get("episode_stats") or {}).items()},
                   step_stats={str(k): _plain(v) for k, v in info.items()
                               if k not in ("episode_stats", "success", "elapsed_steps") and _is_scalar(v)})
        return out


def _is_scalar(v):
    import numpy as np

    return isinstance(v, (bool, int, float, np.bool_, np.integer, np.floating)) or (
        isinstance(v, np.ndarray) and v.size == 1 and v.dtype.kind in "biuf")


def _plain(v):
    """A JSON-friendly value: numpy scalars as Python's, numbers written as text (the drawer's qpos) as floats."""
    import numpy as np

    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.reshape(()).item()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    if isinstance(v, (bool, int, float)) or v is None:
        return v
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def main():
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything SimplerEnv prints must not corrupt the channel
    worker = Worker()
    while True:
        req = _read(stdin)
        if req is None or req.get("cmd") == "close":
            break
        try:
            handler = getattr(worker, req["cmd"])
            _write(stdout, handler(req))
        except Exception as e:  # reported to the parent, which raises it with the message
            _write(stdout, {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
    if worker.env is not None:
        worker.env.close()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
